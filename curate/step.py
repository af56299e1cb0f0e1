"""The operator protocol: a step sees a polars batch and returns (kept, rejected-with-reason).

A step is a dataclass whose fields are its parameters (the same names in Python and YAML),
checked against their type hints when the step is built. It declares the columns it reads and
the typed columns it writes (``writes``); the runner checks the chain before any work starts.
Row-local steps stream; a step with ``needs_global_pass`` first runs its ``plan`` over the whole
stage (signatures, an index, a cut: its own units of work over the parts, run by whichever engine
runs the pipeline; ``curate.globalpass``), then ``apply`` per batch.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import polars as pl
import pyarrow as pa

from curate.errors import RecipeError

if TYPE_CHECKING:
    from curate.card.section import CardContext, CardSection, VariantNote, VariantStep
    from curate.globalpass import PassContext, PlannedApply

REJECT_REASON = "reject_reason"


class StepResult(NamedTuple):
    kept: pl.DataFrame
    rejected: pl.DataFrame | None = None  # input columns + `reject_reason` (+ declared detail columns)
    # counts to report in the funnel (e.g. {"by_source": {"aime": {"correct": 3}}}): nested dicts of
    # numbers, summed over batches by the runner into the step's funnel entry under "stats"
    stats: dict[str, Any] | None = None


class Step:
    """Base class of every operator. Subclasses are dataclasses and set ``name``."""

    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    # the typed columns the step adds or overwrites, read on the instance (``step.writes``): a dict
    # on the class, or a ``@property`` returning one where the columns depend on the parameters
    writes: ClassVar[dict[str, pa.DataType]] = {}
    reject_columns: ClassVar[dict[str, pa.DataType]] = {}  # detail columns on this step's rejects
    needs_global_pass: ClassVar[bool] = False
    # what belongs to one process (a worker pool, a loaded model): not copied when the step is
    # shipped to another process, which builds its own on first use
    process_local: ClassVar[tuple[str, ...]] = ()
    # ``apply`` only reads what ``prepare`` built (no lazy state, no pool, no model): the local
    # runner may apply several parts at once on threads (a ``@property`` where it depends on the
    # parameters)
    thread_safe: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "columns_written" in vars(cls):  # a step written for the old API: say so when it is used
            cls.writes = _columns_written_is_gone(cls)  # type: ignore[assignment]
        own = vars(cls).get("__post_init__")
        if own is not None:
            cls.__post_init__ = _checked_first(own)  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        """Check every parameter against its type hint (a step's own ``__post_init__`` runs after)."""
        check_params(self)

    # --- declarations (instances may refine them from their parameters) -------------------------
    def columns_read(self) -> tuple[str, ...]:
        return self.reads

    def output_rows(self, rows_in: int) -> int:
        """Rows (kept + rejected) the step returns for a batch of ``rows_in``: the same number for
        every step that keeps or drops rows; more for one that expands them (``generate``'s n
        samples per problem), which the runner checks and the funnel records as ``rows_out``."""
        return rows_in

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    # --- work ------------------------------------------------------------------------------------
    def plan(self, ctx: PassContext) -> PlannedApply | None:
        """A global step's pass over the whole stage (``curate.globalpass``), run by every engine.
        Return None when ``apply`` is then used as it is, or a planned apply (``fn(step, batch,
        offset, plan file)``) that reads the per-part plans the pass wrote. By default: ``fit``
        over every part in order, in this process (for passes small enough to need no split)."""
        self.fit(ctx.frames())
        return None

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        """The default ``plan``'s in-memory pass over the whole input, batch by batch, in order."""

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        """Process one batch; ``offset`` is the global position of its first row."""
        raise NotImplementedError

    def apply_parts(self, parts: Iterator[tuple[pl.DataFrame, int]]) -> Iterator[StepResult]:
        """``apply`` to consecutive parts (batch, offset), one result per part, in order: what the
        local runner calls with a stage's parts. A step that feeds a worker pool overrides it to
        keep the pool busy across parts (a part's slowest row runs beside the next part's rows)."""
        for batch, offset in parts:
            yield self.apply(batch, offset)

    def prepare(self) -> None:
        """Build, once and before any batch, what every batch shares (a benchmark index): a
        distributed engine then ships it to its workers instead of each worker building it."""

    def warm_up(self) -> None:
        """Start, without waiting, what ``apply`` needs from other processes (a worker pool's
        imports): the local runner calls it before the read stage, so the two overlap."""

    def worker_resources(self) -> dict[str, float] | None:
        """How a distributed engine runs this step: None, a stateless task per batch; a dict, a
        pool of long-lived workers that each keep what the step loads once (a model, a verifier
        pool), each reserving these resources (e.g. ``{"num_gpus": 1}``)."""
        return None

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, Any]]:
        """The (prompt, ``SamplingParams``) pairs ``apply`` sends the step's ``model`` for this batch,
        so a distributed engine can generate every part's in one batch job ahead of the apply and
        hand them in (``curate.engines.llm``); [] for a step that asks no model."""
        return []

    # --- what the dataset card and the end of a run ask of a step --------------------------------
    @classmethod
    def card_section(cls, ctx: CardContext) -> CardSection | None:
        """This step's part of a dataset card (a Markdown section, figures, tags, limitations).

        Asked of every registered step, ran or not (``ctx.stages()`` says where it ran), so a step
        can describe annotations the input already carried, or say what was not done; None: nothing.
        """
        return None

    @classmethod
    def card_variant(cls, step: VariantStep) -> VariantNote | None:
        """How the card's *Variants* table shows this step in a variant; None: ``step.describe()``."""
        return None

    def coverage_warnings(self, stats: dict[str, Any]) -> list[str]:
        """Lines saying the step changed fewer rows than it was meant to (``stats``: its funnel
        entry's); the runner prefixes each with where it ran (``config C: step N 'name' ``), prints
        them, records them in the manifest (``coverage_warnings``) and the card shows them."""
        return []

    # --- what an engine asks of a step -----------------------------------------------------------
    def model_settings(self) -> dict[str, Any] | None:
        """The generation model's settings (the step's ``model`` block, resolved) when ``apply``
        asks one; None otherwise. Engines read it to batch generations ahead (``engines/llm``)."""
        model = getattr(self, "model", None)
        return model if isinstance(model, dict) else None

    def token_budget(self) -> int | None:
        """Completion tokens the step may generate in one process (its ``budget_tokens``), None
        when unbounded: an engine that makes every generation in one batch job refuses a budget."""
        return getattr(self, "budget_tokens", None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self.process_local:
            if name in state:
                state[name] = None
        return state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _columns_written_is_gone(cls: type) -> property:
    """``writes`` of a step still defining the removed ``columns_written()``: an error, not a guess."""
    message = (f"{cls.__module__}.{cls.__qualname__} defines columns_written(), which is gone: declare "
               "the output columns as `writes` (a dict, or a property of the parameters)")

    def fail(self: Step) -> dict[str, pa.DataType]:
        raise TypeError(message)

    return property(fail)


def _checked_first(post_init: Any) -> Any:
    """A subclass's ``__post_init__``, run after the type check (once, by the most derived class)."""

    @functools.wraps(post_init)
    def wrapper(self: Step) -> None:
        if type(self).__post_init__ is wrapper:
            check_params(self)
        post_init(self)

    return wrapper


def reject_where(batch: pl.DataFrame, drop: pl.Series, reason: pl.Series | pl.Expr | str) -> StepResult:
    """Split a batch on a boolean mask; ``reason`` gives each dropped row's reject reason."""
    reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
    if isinstance(reason_expr, pl.Series):
        tagged = batch.with_columns(reason_expr.alias(REJECT_REASON))
    else:
        tagged = batch.with_columns(reason_expr.cast(pl.String).alias(REJECT_REASON))
    drop = drop.fill_null(False)
    return StepResult(batch.filter(~drop), tagged.filter(drop))


# --- building steps from recipes -----------------------------------------------------------------


def param(default: Any, help_: str) -> Any:
    """A step parameter: its default and the help line `curate ops` and CATALOG.md show."""
    return dataclasses.field(default=default, metadata={"help": help_})


def param_specs(cls: type[Step]) -> list[dict[str, Any]]:
    """Name, type, default and help of each parameter (what `curate ops` and CATALOG.md show)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        specs.append({
            "name": f.name,
            "type": _type_name(hints.get(f.name, Any)),
            "default": default,
            "required": default is dataclasses.MISSING,
            "help": f.metadata.get("help", ""),
        })
    return specs


def _type_name(t: Any) -> str:
    if isinstance(t, type):
        return t.__name__
    return str(t).replace("typing.", "")


class ParamError(ValueError):
    """A parameter whose value does not fit its declared type; the message names step and field."""


@functools.cache
def _hints(cls: type[Step]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_params(step: Step) -> None:
    """Check each parameter of ``step`` against its type hint (the one check for Python and YAML)."""
    cls = type(step)
    hints = _hints(cls)
    label = cls.name or cls.__name__
    for f in dataclasses.fields(step):  # type: ignore[arg-type]
        t = hints.get(f.name, Any)
        value = getattr(step, f.name)
        if _check_type(value, t):
            continue
        options = _literal_options(t)
        if options is not None:
            raise ParamError(f"{label}: {f.name} must be one of {', '.join(map(str, options))}, got {value!r}")
        raise ParamError(f"{label}.{f.name}: expected {_type_name(t)}, got {value!r}")


def _literal_options(t: Any) -> list[Any] | None:
    """The allowed values of a ``Literal`` hint (``None`` included for an optional one), else None."""
    if typing.get_origin(t) is typing.Literal:
        return list(typing.get_args(t))
    args = typing.get_args(t) if _is_union(t) else ()
    literals = [a for a in args if typing.get_origin(a) is typing.Literal]
    if len(literals) == 1 and all(a is type(None) or a in literals for a in args):
        return [*typing.get_args(literals[0]), *([None] if type(None) in args else [])]
    return None


def _is_union(t: Any) -> bool:
    origin = typing.get_origin(t)
    return origin is typing.Union or str(origin) == "<class 'types.UnionType'>"


def _check_type(value: Any, t: Any) -> bool:
    origin = typing.get_origin(t)
    if t is Any:
        return True
    if _is_union(t):
        return any(_check_type(value, a) for a in typing.get_args(t))
    if origin is typing.Literal:
        return value in typing.get_args(t)
    if t is type(None):
        return value is None
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(t)
        return isinstance(value, (list, tuple)) and all(_check_type(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(t, type):
        return isinstance(value, t)
    return True


def build_step(name: str, params: dict[str, Any] | None, where: str = "") -> Step:
    """Instantiate a registered step from a recipe entry, with errors that name the key.

    Only the keys are checked here; the values are checked where every construction is, on the
    step (types from the dataclass hints, then the step's own rules), and reported at ``where``.
    """
    from curate.ops import registry

    at = f"{where}: " if where else ""
    steps = registry()
    if name not in steps:
        known = ", ".join(sorted(steps))
        raise RecipeError(f"{at}unknown step {name!r}; known steps: {known}")
    cls = steps[name]
    params = params or {}
    if not isinstance(params, dict):
        raise RecipeError(f"{at}{name}: parameters must be a mapping, got {type(params).__name__}")
    specs = {s["name"]: s for s in param_specs(cls)}
    for key in params:
        if key not in specs:
            raise RecipeError(f"{at}{name}: unknown parameter {key!r}; valid: {', '.join(specs) or '(none)'}")
    missing = [k for k, s in specs.items() if s["required"] and k not in params]
    if missing:
        raise RecipeError(f"{at}{name}: missing required parameter(s) {', '.join(missing)}")
    try:
        return cls(**params)
    except ParamError as e:  # already names the step
        raise RecipeError(f"{at}{e}") from None
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{at}{name}: {e}") from None
