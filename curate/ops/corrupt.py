"""Controlled corruptions of traces, the seed paper's ablation family: content and structure perturbed.

Content: ``corrupt_wrong_answer`` (synthetic wrong final answer), ``corrupt_digits``,
``remove_keywords``. Structure: ``shuffle_steps``, ``delete_steps``, ``insert_steps`` (these touch
the thinking block only; the solution is never modified). No operator changes the problem.

Shared contract of every corruption:

- **Seeded, per row.** Each row draws from its own RNG, seeded from (operator name, ``seed``, the
  row's ``id``), so a row's corruption does not depend on batching, order or the other rows; the
  same seed gives the same output, another seed another one.
- **Ratios.** ``ratio`` is a share of a row's *units* (steps, numbers, digits, keyword sentences or
  phrases). With ``sampling: exact`` (the default) exactly ``round_half_up(ratio * units)`` units are
  chosen, uniformly without replacement; with ``sampling: bernoulli`` (where offered) each unit is
  chosen independently with probability ``ratio`` (what the paper's digit script did).
  ``remove_keywords`` with ``per: row`` (and its model mode) draws whole rows with probability
  ``ratio`` instead, as the paper's keyword script did.
- **Steps.** The structural corruptions use the segmentation already on the row (``segment_steps``,
  rule- or model-made) when its offsets still tile the thinking, and their own rules otherwise.
- **Audit columns.** ``corrupt_kind``, ``corrupt_ratio``, ``corrupt_seed``, ``corrupt_units`` (units
  in the row), ``corrupt_touched`` (units changed) and per-operator lists of what was touched
  (``corrupt_steps``, ``corrupt_order``, ``corrupt_donors``, ``corrupt_spans``).
- **Ids.** ``id`` becomes the content hash of the corrupted row (``curate.schema.trace_id``), so a
  corrupted trace never passes for its clean original; ``original_id`` keeps the input's id (the
  first one, when corruptions are chained) so every variant joins back to its base row.
- **Untouched rows** (no unit to corrupt: empty thinking, no number...) are kept unchanged by default
  so all variants of a base share the same rows; ``on_untouched: reject`` drops them instead.
- **Coverage.** Each corruption reports ``corruption: {rows, target, changed}`` in its funnel entry;
  a run where fewer than 99% of the target rows changed says so at the end and in the card
  (:func:`coverage_warnings`).
- **Stale annotations.** When the input has ``steps_*`` columns (segment_steps) they follow the edit
  (offsets moved through it; a model rewrite is re-segmented by rules and ``steps_method`` says so);
  other annotations (``profile_*``, ``verify_*``) describe the clean row: run those steps after the
  corruption when a variant needs them.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Literal

import polars as pl
import pyarrow as pa
import xxhash

from curate.answers import extract_answer
from curate.ops.structure import STEPS_COLUMNS, Segmentation, resegment
from curate.schema import trace_id
from curate.step import Step, StepResult, reject_where
from curate.structure.keywords import REASONING_KEYWORDS, keyword_pattern
from curate.structure.segment import Steps, join, spans

SPAN = pa.struct([("part", pa.string()), ("start", pa.int32()), ("end", pa.int32())])
_SPAN_PL = pl.Struct({"part": pl.String, "start": pl.Int32, "end": pl.Int32})

COMMON_COLUMNS: dict[str, pa.DataType] = {
    "id": pa.string(),
    "original_id": pa.string(),
    "corrupt_kind": pa.string(),
    "corrupt_ratio": pa.float64(),
    "corrupt_seed": pa.int64(),
    "corrupt_units": pa.int32(),
    "corrupt_touched": pa.int32(),
}

_LIST_PL = {pa.list_(pa.int32()): pl.List(pl.Int32), pa.list_(pa.string()): pl.List(pl.String),
            pa.list_(SPAN): pl.List(_SPAN_PL), pa.string(): pl.String, pa.large_string(): pl.String}


#: A corruption that changed fewer of the rows it was meant to change than this is reported loudly.
MIN_CHANGED_SHARE = 0.99


def coverage_warnings(manifest: dict[str, Any]) -> list[str]:
    """One line per corruption step (base or config) that changed < 99% of the rows it meant to change.

    Reads the ``corruption: {rows, target, changed}`` stats every corruption reports in its funnel
    entry; unchanged rows are copies of the base rows, so such a variant is partly not a variant.
    """
    entries = [(None, f) for f in manifest.get("funnel", [])]
    entries += [(name, f) for name, c in manifest.get("configs", {}).items() for f in c.get("funnel", [])]
    out = []
    for config, f in entries:
        c = (f.get("stats") or {}).get("corruption")
        if not c or not c.get("target") or c["changed"] >= MIN_CHANGED_SHARE * c["target"]:
            continue
        where = f"config {config}: " if config else ""
        drawn = f" ({c['target']} drawn)" if c["target"] != c["rows"] else ""
        out.append(f"{where}step {f['step']} '{f['name']}' changed {c['changed']:,} of {c['target']:,} rows{drawn} "
                   f"({c['changed'] / c['target']:.1%} < {MIN_CHANGED_SHARE:.0%}): the other rows are unchanged "
                   "copies of the base rows (on_untouched: reject drops them, with the reason)")
    return out


def row_rng(op: str, seed: int, row_id: str) -> random.Random:
    """The RNG of one row: a function of (operator, seed, row id) only."""
    return random.Random(xxhash.xxh3_64_intdigest(f"{op}\x00{seed}\x00{row_id}".encode()))


def share(ratio: float, units: int) -> int:
    """How many of ``units`` a ``ratio`` selects: round half up, so 0.5 of 3 is 2 and 0.67 of 3 is 2."""
    return min(units, math.floor(ratio * units + 0.5))


def choose(rng: random.Random, units: int, ratio: float, sampling: str) -> list[int]:
    """Sorted unit indices to corrupt, by the documented ratio semantics."""
    if sampling == "bernoulli":
        return [i for i in range(units) if rng.random() < ratio]
    return sorted(rng.sample(range(units), share(ratio, units)))


def row_segmentations(batch: pl.DataFrame, rules: Segmentation) -> Iterator[tuple[str, str, list[int], str]]:
    """(id, thinking, step starts, steps_method) per row: the segmentation already on the row.

    A row that ran ``segment_steps`` (any mode, the model's included) keeps its own steps when they
    still tile its thinking; otherwise (no ``steps_*`` columns, null, or stale offsets) the
    operator's rules segment it and ``steps_method`` names those rules.
    """
    has = "steps_start" in batch.columns and "steps_end" in batch.columns
    cols = ["id", pl.col("thinking").fill_null("")]
    if has:
        cols += ["steps_start", "steps_end",
                 pl.col("steps_method") if "steps_method" in batch.columns else pl.lit(None, dtype=pl.String)]
    for row in batch.select(*cols).iter_rows():
        row_id, text = row[0], row[1]
        if has:
            starts, ends, method = row[2], row[3], row[4]
            if starts is not None and ends is not None and _tiles(list(starts), list(ends), len(text)):
                yield row_id, text, list(starts), method or "input"
                continue
        yield row_id, text, *rules.segment(text)


def _tiles(starts: list[int], ends: list[int], length: int) -> bool:
    """Whether step offsets cover ``[0, length)`` exactly, in order (an empty text has no steps)."""
    if not starts:
        return length == 0
    return (len(starts) == len(ends) and starts[0] == 0 and ends[-1] == length
            and all(e == s for e, s in zip(ends, starts[1:], strict=False)) and all(s < e for s, e in zip(starts, ends, strict=True)))


@dataclass
class _Corruption(Step):
    """Shared parameters, validation and bookkeeping of the corruption operators."""

    specific: ClassVar[dict[str, pa.DataType]] = {}

    def _check_common(self) -> None:
        ratio = getattr(self, "ratio", None)
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        if getattr(self, "on_untouched", "keep") not in ("keep", "reject"):
            raise ValueError(f"on_untouched must be keep or reject, not {self.on_untouched!r}")
        sampling = getattr(self, "sampling", "exact")
        if sampling not in ("exact", "bernoulli"):
            raise ValueError(f"sampling must be exact or bernoulli, not {sampling!r}")

    def columns_written(self) -> dict[str, pa.DataType]:
        return {**COMMON_COLUMNS, **self.specific}

    def kind(self) -> str:
        return self.name

    def _finish(self, batch: pl.DataFrame, new: dict[str, list[Any]], units: list[int], touched: list[int],
                extra: dict[str, list[Any]], untouched_reason: list[str | None],
                refresh_steps: bool = True, edits: list[list[tuple[int, int, int]]] | None = None,
                targets: list[bool] | None = None, stats: dict[str, Any] | None = None) -> StepResult:
        """Write the new texts, the audit columns and the new ids; split off untouched rows if asked.

        ``edits`` (per row, the thinking's replaced spans as (start, end, new length)) lets the
        row's own step offsets follow the edit; without them changed thinkings are re-segmented
        by rules. ``targets`` marks the rows the corruption meant to change (default: all): the
        step reports ``corruption: {rows, target, changed}`` for the end-of-run coverage check.
        """
        cols = {c: pl.Series(c, v, dtype=pl.String) for c, v in new.items()}
        out = batch.with_columns(*cols.values())
        prev_orig = batch["original_id"] if "original_id" in batch.columns else None
        orig = batch["id"] if prev_orig is None else prev_orig.fill_null(batch["id"])
        prev_kind = batch["corrupt_kind"] if "corrupt_kind" in batch.columns else None
        kinds = pl.Series([self.kind()] * batch.height, dtype=pl.String)
        if prev_kind is not None:
            kinds = pl.select(pl.when(prev_kind.is_not_null()).then(prev_kind + "+" + kinds).otherwise(kinds)).to_series()
        ids = [trace_id(p or "", t or "", s or "") for p, t, s in
               out.select("problem", "thinking", "solution").iter_rows()]
        out = out.with_columns(
            pl.Series("id", ids, dtype=pl.String),
            orig.alias("original_id"),
            kinds.alias("corrupt_kind"),
            pl.lit(float(getattr(self, "ratio", 1.0)), dtype=pl.Float64).alias("corrupt_ratio"),
            pl.lit(int(self.seed), dtype=pl.Int64).alias("corrupt_seed"),
            pl.Series("corrupt_units", units, dtype=pl.Int32),
            pl.Series("corrupt_touched", touched, dtype=pl.Int32),
            *[pl.Series(c, v, dtype=_LIST_PL[self.specific[c]]) for c, v in extra.items()],
        )
        if "thinking" in new and refresh_steps:
            out = shift_steps(out, edits) if edits is not None else resegment(out)
        wanted = targets if targets is not None else [True] * batch.height
        stats = {**(stats or {}), "corruption": {
            "rows": batch.height, "target": sum(wanted),
            "changed": sum(1 for w, t in zip(wanted, touched, strict=True) if w and t > 0)}}
        if getattr(self, "on_untouched", "keep") == "reject":
            reason = pl.Series(untouched_reason, dtype=pl.String)
            kept = reject_where(out, reason.is_not_null(), reason)
            return StepResult(kept.kept, kept.rejected, stats)
        return StepResult(out, None, stats)


def shift_steps(batch: pl.DataFrame, edits: list[list[tuple[int, int, int]]]) -> pl.DataFrame:
    """Move each row's step offsets through its thinking edits (start, end, new length), keeping
    its segmentation (and ``steps_method``); a step whose text was wholly removed disappears."""
    if "steps_start" not in batch.columns:
        return batch
    starts_col, ends_col, counts = [], [], []
    for text, starts, row_edits in zip(batch["thinking"].fill_null("").to_list(),
                                       batch["steps_start"].to_list(), edits, strict=True):
        if starts is None:
            starts_col.append(None)
            ends_col.append(None)
            counts.append(None)
            continue
        moved = sorted({_shift(x, row_edits) for x in starts} - {len(text)}) if text else []
        if moved and moved[0] != 0:
            moved[0] = 0
        sp = spans(moved, len(text))
        starts_col.append([a for a, _ in sp])
        ends_col.append([b for _, b in sp])
        counts.append(len(sp))
    return batch.with_columns(
        pl.Series("steps_start", starts_col, dtype=pl.List(pl.Int32)),
        pl.Series("steps_end", ends_col, dtype=pl.List(pl.Int32)),
        pl.Series("steps_count", counts, dtype=pl.Int32),
    )


def _shift(x: int, edits: list[tuple[int, int, int]]) -> int:
    """Where old offset ``x`` lands after the edits (sorted, non-overlapping); inside an edit: its start."""
    delta = 0
    for s, e, n in edits:
        if e <= x:
            delta += n - (e - s)
        elif s < x:
            return s + delta
        else:
            break
    return x + delta


# --- structure: shuffle, delete, insert ----------------------------------------------------------


@dataclass
class _StepCorruption(Segmentation, _Corruption):
    specific: ClassVar[dict[str, pa.DataType]] = {
        "corrupt_steps": pa.list_(pa.int32()),
        "corrupt_order": pa.list_(pa.int32()),
        **STEPS_COLUMNS,
    }

    def columns_read(self) -> tuple[str, ...]:
        return ("id", "problem", "thinking", "solution")

    def _edit(self, rng: random.Random, steps: Steps, row_id: str) -> tuple[list[str], list[str], list[int], list[int], list[str]]:
        """(bodies, seps, touched original indices, order, donors) of the edited thinking."""
        raise NotImplementedError

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        new_thinking, units, touched, touched_idx, orders, donors = [], [], [], [], [], []
        st_start, st_end, st_count, reasons, methods = [], [], [], [], []
        for row_id, text, starts, method in row_segmentations(batch, self):
            steps = Steps.of(text, starts)
            methods.append(method)
            rng = row_rng(self.name, self.seed, row_id)
            bodies, seps, hit, order, donor = self._edit(rng, steps, row_id)
            new_text, s, e = join(bodies, seps)
            new_thinking.append(new_text)
            units.append(len(steps))
            touched.append(len(hit))
            touched_idx.append(hit)
            orders.append(order)
            donors.append(donor)
            st_start.append(s)
            st_end.append(e)
            st_count.append(len(s))
            reasons.append(None if hit else f"{self.name}: nothing to corrupt ({len(steps)} steps)")
        extra: dict[str, list[Any]] = {"corrupt_steps": touched_idx, "corrupt_order": orders}
        if "corrupt_donors" in self.specific:
            extra["corrupt_donors"] = donors
        result = self._finish(batch, {"thinking": new_thinking}, units, touched, extra, reasons,
                              refresh_steps=False)
        # the edit knows the new step boundaries exactly: record them (overrides resegment)
        fix = pl.DataFrame({"steps_start": pl.Series(st_start, dtype=pl.List(pl.Int32)),
                            "steps_end": pl.Series(st_end, dtype=pl.List(pl.Int32)),
                            "steps_count": pl.Series(st_count, dtype=pl.Int32)})
        fix = fix.with_columns(pl.Series("steps_method", methods, dtype=pl.String))
        if result.rejected is None:
            return StepResult(result.kept.with_columns(*fix.get_columns()), None, result.stats)
        keep = pl.Series([r is None for r in reasons])
        return StepResult(result.kept.with_columns(*fix.filter(keep).get_columns()),
                          result.rejected.with_columns(*fix.filter(~keep).get_columns()), result.stats)


@dataclass
class ShuffleSteps(_StepCorruption):
    """Reorder a ratio of the thinking's steps among themselves (paper: 33/67/100%); other steps stay put.

    ``round_half_up(ratio * steps)`` positions are chosen (at least 2 when any, one step cannot
    move) and their steps permuted by a random cycle, so every chosen step lands somewhere else.
    ``corrupt_order[i]`` is the original index of the step now at position i (a permutation);
    ``corrupt_steps`` the chosen original indices. Separators stay in place.
    """

    name = "shuffle_steps"

    ratio: float = field(default=1.0, metadata={"help": "share of steps to reorder, in [0, 1]"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows with fewer than 2 steps: keep unchanged, or reject"})

    def __post_init__(self) -> None:
        self._check_segmentation()
        self._check_common()

    def _edit(self, rng, steps, row_id):  # type: ignore[no-untyped-def]
        n = len(steps)
        k = share(self.ratio, n)
        if k == 1:
            k = 2 if n >= 2 else 0
        pos = sorted(rng.sample(range(n), k)) if k else []
        order = list(range(n))
        if k >= 2:
            cycle = pos[:]
            # Sattolo's algorithm: a uniformly random cyclic permutation (no fixed point)
            for i in range(k - 1, 0, -1):
                j = rng.randrange(i)
                cycle[i], cycle[j] = cycle[j], cycle[i]
            for p, src in zip(pos, cycle, strict=True):
                order[p] = src
        bodies = [steps.bodies[i] for i in order]
        return bodies, list(steps.seps), pos, order, []


@dataclass
class DeleteSteps(_StepCorruption):
    """Drop a ratio of the thinking's steps (paper: 67%), chosen uniformly; the rest keep their order.

    ``round_half_up(ratio * steps)`` steps are removed; ``corrupt_steps`` lists them and
    ``corrupt_order`` the surviving original indices. ratio 1.0 empties the thinking.
    """

    name = "delete_steps"

    ratio: float = field(default=0.67, metadata={"help": "share of steps to delete, in [0, 1]"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows with no step deleted (empty thinking): keep unchanged, or reject"})

    def __post_init__(self) -> None:
        self._check_segmentation()
        self._check_common()

    def _edit(self, rng, steps, row_id):  # type: ignore[no-untyped-def]
        n = len(steps)
        gone = sorted(rng.sample(range(n), share(self.ratio, n)))
        dropped = set(gone)
        kept = [i for i in range(n) if i not in dropped]
        bodies = [steps.bodies[i] for i in kept]
        seps = [steps.seps[i] for i in kept]
        if seps:
            seps[-1] = steps.seps[-1]  # the text ends as it did
        return bodies, seps, gone, kept, []


@dataclass
class InsertSteps(_StepCorruption):
    """Insert steps of other traces of the dataset into each trace (paper: "inserted steps", 33/67/100%).

    ``insert`` (default): ``round_half_up(ratio * steps)`` donor steps go in at random positions and
    every original step is kept, so ratio 1.0 doubles the step count. The paper (Li et al. 2025,
    Table 2) names this perturbation insertion of steps from other samples; its code for it is not
    public (the ``corrupt`` branch of NovaSky-AI/SkyThought has only the digit and keyword scripts),
    so position and donor choice here are this toolkit's reading. ``replace``: that many chosen
    steps are replaced by donor steps instead (an option of this toolkit, not the paper's). Donors
    are steps of other traces of similar length (within a factor 2 when the pool has one, else the
    closest), any domain, from a pool of up to ``pool_size`` steps drawn from the whole input in a
    global pass (the steps with the smallest seeded hash, so the pool does not depend on
    batching); a row never receives its own steps. Rows keep their own segmentation (segment_steps,
    model-made included) for both the row and the donor pool. ``corrupt_donors`` names each donor
    as ``id:step``; ``corrupt_order`` gives, per new position, the original index or -1 for a donor;
    ``corrupt_steps`` the inserted steps' new positions (insert) or the replaced original indices
    (replace).
    """

    name = "insert_steps"
    needs_global_pass = True
    specific: ClassVar[dict[str, pa.DataType]] = {
        **_StepCorruption.specific, "corrupt_donors": pa.list_(pa.string())}

    ratio: float = field(default=0.67, metadata={"help": "steps added (insert) or replaced (replace), as a share of the row's steps, in [0, 1]"})
    mode: Literal["insert", "replace"] = field(  # type: ignore[assignment]
        default="insert", metadata={"help": "insert donor steps (the paper's perturbation), or replace chosen steps with them"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    pool_size: int = field(default=50_000, metadata={"help": "donor steps kept from the global pass"})
    min_donor_chars: int = field(default=20, metadata={"help": "ignore donor steps shorter than this"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows with nothing inserted (empty thinking): keep unchanged, or reject"})

    # InsertSteps has its own `mode`; segmentation mode is `split`.
    split: Literal["transition", "paragraph"] = field(
        default="transition", metadata={"help": "segmentation rules (see segment_steps.mode)"})

    def __post_init__(self) -> None:
        if self.mode not in ("replace", "insert"):
            raise ValueError(f"mode must be replace or insert, not {self.mode!r}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if self.min_donor_chars < 0:
            raise ValueError(f"min_donor_chars must be >= 0, got {self.min_donor_chars}")
        self._check_common()
        self._seg = Segmentation(mode=self.split, transitions=self.transitions, split_inline=self.split_inline,
                                 inline_transitions=self.inline_transitions, min_step_chars=self.min_step_chars,
                                 min_steps=self.min_steps)
        self._seg._check_segmentation()
        self._lens: list[int] = []
        self._pool: list[tuple[int, str, str]] = []  # (length, donor "id:step", body), sorted by length
        self._fitted = False

    def starts(self, text: str) -> list[int]:
        return self._seg.starts(text)

    def segment(self, text: str) -> tuple[list[int], str]:
        return self._seg.segment(text)

    def method(self) -> str:
        return self._seg.method()

    def kind(self) -> str:
        return f"{self.name}:{self.mode}"

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        heap: list[tuple[int, str, str]] = []  # max-heap on key via negation: (-key, donor, body)
        for batch in batches:
            for row_id, text, starts, _ in row_segmentations(batch, self):
                if not text:
                    continue
                steps = Steps.of(text, starts)
                for i, body in enumerate(steps.bodies):
                    if len(body) < self.min_donor_chars:
                        continue
                    key = xxhash.xxh3_64_intdigest(f"{self.seed}\x00{row_id}\x00{i}".encode())
                    item = (-key, f"{row_id}:{i}", body)
                    if len(heap) < self.pool_size:
                        heapq.heappush(heap, item)
                    elif item > heap[0]:
                        heapq.heapreplace(heap, item)
        self._pool = sorted(((len(b), d, b) for _, d, b in heap), key=lambda x: (x[0], x[1]))
        self._lens = [x[0] for x in self._pool]
        self._fitted = True

    def _donor(self, rng: random.Random, length: int, row_id: str) -> tuple[str, str] | None:
        lo = bisect.bisect_left(self._lens, max(1, length // 2))
        hi = bisect.bisect_right(self._lens, max(2 * length, self.min_donor_chars))
        own = f"{row_id}:"
        for _ in range(8):
            if hi > lo:
                j = rng.randrange(lo, hi)
            else:  # no donor of similar length: the closest one
                j = min(max(bisect.bisect_left(self._lens, length), 0), len(self._pool) - 1)
            _, donor, body = self._pool[j]
            if not donor.startswith(own):
                return donor, body
            lo, hi = 0, len(self._pool)  # widen after hitting the row's own step
        return None

    def _edit(self, rng, steps, row_id):  # type: ignore[no-untyped-def]
        assert self._fitted, "fit() must run before apply()"
        n = len(steps)
        if not n or not self._pool:
            return list(steps.bodies), list(steps.seps), [], list(range(n)), []
        k = max(share(self.ratio, n), 1 if self.ratio > 0 else 0)  # a one-step row still gets one
        bodies, seps, order, donors = list(steps.bodies), list(steps.seps), list(range(n)), []
        if self.mode == "replace":
            hit = sorted(rng.sample(range(n), k))
            done = []
            for i in hit:
                got = self._donor(rng, len(steps.bodies[i]), row_id)
                if got is None:
                    continue
                donors.append(got[0])
                bodies[i] = got[1]
                order[i] = -1
                done.append(i)
            return bodies, seps, done, order, donors
        # insert: k donor steps after random gaps (0 = before the first step)
        gaps = sorted(rng.randrange(n + 1) for _ in range(k))
        out_b, out_s, out_o = [], [], []
        g = 0
        for pos in range(n + 1):
            while g < len(gaps) and gaps[g] == pos:
                ref = steps.bodies[min(pos, n - 1)]
                got = self._donor(rng, len(ref), row_id)
                g += 1
                if got is None:
                    continue
                donors.append(got[0])
                out_b.append(got[1])
                out_s.append("\n\n")
                out_o.append(-1)
            if pos < n:
                out_b.append(steps.bodies[pos])
                out_s.append(steps.seps[pos] if pos < n - 1 else "\n\n")
                out_o.append(pos)
        out_s[-1] = steps.seps[-1]
        added = [i for i, o in enumerate(out_o) if o < 0]  # new positions of the inserted steps
        return out_b, out_s, added, out_o, donors


# --- content: digits, keywords -------------------------------------------------------------------

_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b", re.ASCII)  # the paper's script's number token (ASCII digits)
_DIGIT = re.compile(r"\d", re.ASCII)
_OTHER_DIGITS = {d: "0123456789".replace(d, "") for d in "0123456789"}


def _parts(scope: str) -> tuple[str, ...]:
    return ("thinking",) if scope == "thinking" else ("thinking", "solution")


@dataclass
class CorruptDigits(_Corruption):
    """Replace numbers (or single digits) in the response with random ones (paper: 20/50/70/100%).

    ``replacement: paper`` with ``unit: number, sampling: bernoulli`` is the paper's rule, from its
    script (NovaSky-AI/SkyThought, branch ``corrupt``, ``skythought/tools/corrupt_data.py``): every
    number token ``\\b\\d+(\\.\\d+)?\\b`` of the whole response is, with probability ``ratio``,
    replaced by ``random.randint(0, 10)``, which may equal the original (the number then stays as it
    was and does not count as touched). Options of this toolkit: ``small_int`` re-draws 0..10 until it
    differs; ``same_shape`` keeps the digit count and decimal places (no new leading zero);
    ``unit: digit`` makes each digit a unit (another digit); ``sampling: exact`` picks exactly
    ``round_half_up(ratio * units)`` units. ``scope: response`` (default, as the paper corrupted whole
    responses) covers thinking and solution, ``thinking`` the thinking only. ``corrupt_touched``
    counts the numbers whose text changed; ``corrupt_spans`` gives their original (part, start, end).
    """

    name = "corrupt_digits"
    specific: ClassVar[dict[str, pa.DataType]] = {"corrupt_spans": pa.list_(SPAN)}

    ratio: float = field(default=0.7, metadata={"help": "share of units to corrupt, in [0, 1]"})
    unit: Literal["number", "digit"] = field(default="number", metadata={"help": "what one unit is: a number token or a digit"})
    sampling: Literal["exact", "bernoulli"] = field(
        default="exact", metadata={"help": "exact: round(ratio*units) units; bernoulli: each unit with probability ratio (paper's script)"})
    replacement: Literal["same_shape", "small_int", "paper"] = field(
        default="same_shape", metadata={"help": "paper: randint(0, 10), may equal the original (corrupt_data.py); "
                                                "small_int: 0..10 re-drawn until it differs; same_shape: same digit count"})
    scope: Literal["response", "thinking"] = field(
        default="response", metadata={"help": "response: thinking and solution; thinking: thinking only"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows where nothing changed (no number): keep unchanged, or reject"})

    def __post_init__(self) -> None:
        self._check_common()
        if self.unit not in ("number", "digit"):
            raise ValueError(f"unit must be number or digit, not {self.unit!r}")
        if self.replacement not in ("same_shape", "small_int", "paper"):
            raise ValueError(f"replacement must be paper, small_int or same_shape, not {self.replacement!r}")
        if self.replacement in ("small_int", "paper") and self.unit == "digit":
            raise ValueError(f"replacement {self.replacement} applies to unit: number")
        if self.scope not in ("response", "thinking"):
            raise ValueError(f"scope must be response or thinking, not {self.scope!r}")

    def columns_read(self) -> tuple[str, ...]:
        return ("id", "problem", "thinking", "solution")

    def kind(self) -> str:
        return f"{self.name}:{self.unit}" + (":paper" if self.replacement == "paper" else "")

    def _new_value(self, rng: random.Random, old: str) -> str:
        if self.unit == "digit":
            return _OTHER_DIGITS[old][rng.randrange(9)]
        if self.replacement == "paper":
            return str(rng.randint(0, 10))
        if self.replacement == "small_int":
            while True:
                v = str(rng.randint(0, 10))
                if v != old:
                    return v
        whole, dot, frac = old.partition(".")
        width = len(whole) + len(frac)
        low = 10 ** (width - 1) if len(whole) > 1 else 0  # no new leading zero
        while True:
            digits = str(rng.randrange(low, 10 ** width)).zfill(width)
            v = digits[:len(whole)] + dot + digits[len(whole):]
            if v != old:
                return v

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        parts = _parts(self.scope)
        pattern = _DIGIT if self.unit == "digit" else _NUMBER
        new: dict[str, list[str]] = {p: [] for p in parts}
        units, touched, spans, reasons, edits = [], [], [], [], []
        for row in batch.select("id", *[pl.col(p).fill_null("") for p in parts]).iter_rows(named=True):
            rng = row_rng(self.name, self.seed, row["id"])
            found = [(p, m) for p in parts for m in pattern.finditer(row[p])]
            hit = set(choose(rng, len(found), self.ratio, self.sampling))
            texts = {p: [] for p in parts}
            last = dict.fromkeys(parts, 0)
            row_spans, row_edits = [], []
            for i, (p, m) in enumerate(found):
                if i not in hit:
                    continue
                value = self._new_value(rng, m.group(0))
                if value == m.group(0):  # the paper's draw can give the number back
                    continue
                texts[p].append(row[p][last[p]:m.start()])
                texts[p].append(value)
                last[p] = m.end()
                row_spans.append({"part": p, "start": m.start(), "end": m.end()})
                if p == "thinking":
                    row_edits.append((m.start(), m.end(), len(value)))
            for p in parts:
                texts[p].append(row[p][last[p]:])
                new[p].append("".join(texts[p]))
            units.append(len(found))
            touched.append(len(row_spans))
            spans.append(row_spans)
            edits.append(row_edits)
            reasons.append(None if row_spans else f"{self.name}: nothing corrupted ({len(found)} {self.unit}s)")
        return self._finish(batch, new, units, touched, {"corrupt_spans": spans}, reasons, edits=edits)


_WS = re.compile(r"\s*")
_PHRASE_TAIL = re.compile(r"[,:;]?[ \t]*")
_FILLER = re.compile(r"[ \t.,:;!?]*")
_LINE_REST = re.compile(r"[ \t.,:;!?]*(?=\n|\Z)")
_SENTENCE_GAP = re.compile(r"(?<=[.!?])[ \t]+|[ \t]*\n\s*")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: split after . ! ? followed by spaces, and at newlines."""
    out, pos = [], 0
    for m in _SENTENCE_GAP.finditer(text):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        out.append((pos, len(text)))
    return out


@dataclass
class RemoveKeywords(_Corruption):
    """Remove reflection from traces: the paper's model rewrite, or deleting keyword sentences / phrases by rules.

    ``mode: model`` is the paper's method (NovaSky-AI/SkyThought, branch ``corrupt``,
    ``skythought/tools/tag_output.py``): each row is drawn with probability ``ratio`` and a model
    rewrites a drawn row's reasoning without its reflections (the passage reflected on, the
    reflection and its revision) and their transition phrases. The prompt is this toolkit's own,
    with the intent of the paper's ``remove_reflection_prompt`` (``util/prompts.py``); it gets the
    thinking only (the paper sent whole responses with their markers) and the solution stays as it
    was. A reply that failed, was cut at ``max_tokens`` or is empty leaves the row unchanged (counted
    in ``model_failed``). Replies are cached like every generation. ``mode: auto`` is ``model`` when
    a model is given (a recipe's ``model:`` block) and ``sentence`` otherwise.

    ``sentence`` and ``phrase`` are this toolkit's rule-based methods (a different method from the
    paper's, for offline use): units are the sentences holding at least one of ``keywords``, or each
    keyword occurrence (the phrase and a following comma / colon and spaces go; a sentence that
    started with it is re-capitalised). With ``per: unit`` ``ratio`` is the share of a row's units
    removed; with ``per: row`` (the paper's sampling) each row is drawn with probability ``ratio``
    and all its units go. A sentence that fills its line is removed with its line break, one inside
    a line with the space before it, so paragraphs stay separated. ``scope`` as in corrupt_digits
    (rule modes).
    """

    name = "remove_keywords"
    specific: ClassVar[dict[str, pa.DataType]] = {"corrupt_spans": pa.list_(SPAN)}

    ratio: float = field(default=1.0, metadata={"help": "share of keyword units (per: unit) or of rows (per: row) changed, in [0, 1]"})
    mode: Literal["sentence", "phrase", "model", "auto"] = field(
        default="sentence", metadata={"help": "model: a model removes reflections (the paper's); sentence / phrase: "
                                              "delete keyword sentences / phrases by rules; auto: model when a model is given"})
    per: Literal["unit", "row"] = field(
        default="unit", metadata={"help": "unit: ratio is a share of each row's keyword units; row: each row is "
                                          "rewritten with probability ratio (the paper's; mode model needs it)"})
    keywords: list[str] = field(
        default_factory=lambda: list(REASONING_KEYWORDS),
        metadata={"help": "phrases to remove (case-insensitive, whole words); default reflection + backtracking lists"})
    sampling: Literal["exact", "bernoulli"] = field(
        default="exact", metadata={"help": "per unit: exact: round(ratio*units) units; bernoulli: each unit with probability ratio"})
    scope: Literal["response", "thinking"] = field(
        default="response", metadata={"help": "rule modes: response: thinking and solution; thinking: thinking only"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows left unchanged (not drawn, no keyword, model failed): keep, or reject"})
    model: dict[str, Any] | None = field(
        default=None, metadata={"help": "mode model / auto: {backend: transformers | openai | vllm, name_or_path: ...} "
                                        "(a recipe-level model: block fills it)"})
    prompt: str = field(default="", metadata={"help": "mode model: prompt with a {thinking} placeholder (empty: the built-in one)"})
    max_tokens: int = field(default=16384, metadata={"help": "mode model: tokens the rewrite may take (the paper's script used 16384)"})
    temperature: float = field(default=0.0, metadata={"help": "mode model: sampling temperature (the paper's script used 0.7)"})

    def __post_init__(self) -> None:
        self._check_common()
        if self.mode not in ("sentence", "phrase", "model", "auto"):
            raise ValueError(f"mode must be model, auto, sentence or phrase, not {self.mode!r}")
        if self.per not in ("unit", "row"):
            raise ValueError(f"per must be unit or row, not {self.per!r}")
        if not self.keywords:
            raise ValueError("keywords must not be empty")
        if self.scope not in ("response", "thinking"):
            raise ValueError(f"scope must be response or thinking, not {self.scope!r}")
        if self.mode == "model" or (self.mode == "auto" and self.model is not None):
            from curate.models.steps import checked_model

            checked_model(self.model, "model", True)
            if self.per != "row":
                raise ValueError("mode model rewrites whole rows: set per: row (each row drawn with probability ratio)")
            if self.prompt and "{thinking}" not in self.prompt:
                raise ValueError("prompt must hold a {thinking} placeholder")
            if self.max_tokens < 1:
                raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def method(self) -> str:
        """The mode that runs: ``auto`` resolved."""
        if self.mode == "auto":
            return "model" if self.model is not None else "sentence"
        return self.mode

    def worker_resources(self) -> dict[str, float] | None:
        from curate.models.steps import model_resources

        return model_resources(self.model) if self.method() == "model" else None

    def columns_read(self) -> tuple[str, ...]:
        return ("id", "problem", "thinking", "solution")

    def kind(self) -> str:
        return f"{self.name}:{self.method()}" + (":per_row" if self.per == "row" and self.method() != "model" else "")

    def _drawn(self, row_id: str) -> tuple[random.Random, bool]:
        """The row's RNG and, per row, whether it is rewritten (probability ratio, as tag_output.py)."""
        rng = row_rng(self.name, self.seed, row_id)
        return rng, (self.per != "row" or rng.random() < self.ratio)

    def _units(self, text: str) -> list[tuple[int, int]]:
        """One span per unit: a keyword sentence, or a keyword phrase with its trailing , : ; and spaces."""
        pattern = keyword_pattern(tuple(self.keywords))
        if self.method() == "phrase":
            return [(m.start(), _PHRASE_TAIL.match(text, m.end()).end())  # type: ignore[union-attr]
                    for m in pattern.finditer(text)]
        hits = [m.start() for m in pattern.finditer(text)]
        if not hits:
            return []
        out, j = [], 0
        for s, e in sentence_spans(text):  # sentences holding a keyword start (both lists are sorted)
            while j < len(hits) and hits[j] < s:
                j += 1
            if j == len(hits):
                break
            if hits[j] < e:
                out.append((s, e))
        return out

    @staticmethod
    def _sentence_cuts(text: str, chosen: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """What to delete for the chosen sentences, so the text around them stays well spaced.

        Sentences with only whitespace between them form one block. A block that opens its line or
        is followed by more text on its line goes with the whitespace after it; one that ends a line
        it does not open goes with the spaces before it (the line break stays).
        """
        blocks: list[list[int]] = []
        for s, e in chosen:
            if blocks and not text[blocks[-1][1]:s].strip():
                blocks[-1][1] = e
            else:
                blocks.append([s, e])
        cuts = []
        for s, e in blocks:
            after = _WS.match(text, e).end()  # type: ignore[union-attr]
            opens_line = s == 0 or text[s - 1] == "\n"
            ends_line = after == len(text) or "\n" in text[e:after]
            if opens_line or not ends_line:
                cuts.append((s, after))
            else:
                b = s
                while b > 0 and text[b - 1] in " \t":
                    b -= 1
                cuts.append((b, e))
        return cuts

    @staticmethod
    def _phrase_cuts(text: str, chosen: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The chosen phrases; a line left holding nothing but punctuation goes whole, with its break."""
        blocks: list[list[int]] = []
        for s, e in chosen:
            if blocks and _FILLER.fullmatch(text, blocks[-1][1], s):
                blocks[-1][1] = e
            else:
                blocks.append([s, e])
        cuts = []
        for s, e in blocks:
            rest = _LINE_REST.match(text, e)
            if (s == 0 or text[s - 1] == "\n") and rest is not None:
                cuts.append((s, _WS.match(text, rest.end()).end()))  # type: ignore[union-attr]
            else:
                cuts.append((s, e))
        return cuts

    def _remove(self, text: str, chosen: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
        """The text without the chosen units, and the spans cut from it."""
        if not chosen:
            return text, []
        phrase = self.method() == "phrase"
        cuts = self._phrase_cuts(text, chosen) if phrase else self._sentence_cuts(text, chosen)
        out, last, cap = [], 0, False
        for s, e in cuts:
            piece = text[last:s]
            out.append(piece[:1].upper() + piece[1:] if cap else piece)
            b = s
            while b > 0 and text[b - 1] in " \t":
                b -= 1
            cap = phrase and ((cap and not piece) or b == 0 or text[b - 1] in ".!?\n")
            last = e
        piece = text[last:]
        out.append(piece[:1].upper() + piece[1:] if cap else piece)
        return "".join(out), cuts

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        if self.method() == "model":
            return self._apply_model(batch)
        parts = _parts(self.scope)
        new: dict[str, list[str]] = {p: [] for p in parts}
        units, touched, spans, reasons, edits, targets = [], [], [], [], [], []
        for row in batch.select("id", *[pl.col(p).fill_null("") for p in parts]).iter_rows(named=True):
            rng, drawn = self._drawn(row["id"])
            found = [(p, s, e) for p in parts for s, e in self._units(row[p])] if drawn else []
            hit = list(range(len(found))) if self.per == "row" else choose(rng, len(found), self.ratio, self.sampling)
            chosen = [found[i] for i in hit]
            row_edits: list[tuple[int, int, int]] = []
            for p in parts:
                text, cuts = self._remove(row[p], [(s, e) for q, s, e in chosen if q == p])
                new[p].append(text)
                if p == "thinking":
                    row_edits = [(s, e, 0) for s, e in cuts]
            units.append(len(found))
            touched.append(len(chosen))
            spans.append([{"part": p, "start": s, "end": e} for p, s, e in chosen])
            edits.append(row_edits)
            targets.append(drawn)
            reasons.append(None if chosen else f"{self.name}: " + (
                f"no keyword {self.method()} to remove" if drawn else "row not drawn (per row, ratio)"))
        return self._finish(batch, new, units, touched, {"corrupt_spans": spans}, reasons, edits=edits,
                            targets=targets)

    # --- mode model -----------------------------------------------------------------------------

    def _sampling(self) -> Any:
        from curate.models import SamplingParams

        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)

    def _model_prompts(self, batch: pl.DataFrame) -> tuple[list[int], list[str]]:
        """Rows drawn for a rewrite (with a thinking to rewrite) and their prompts."""
        rows, prompts = [], []
        template = self.prompt or REMOVE_REFLECTION_PROMPT
        for i, (row_id, text) in enumerate(batch.select("id", pl.col("thinking").fill_null("")).iter_rows()):
            if text.strip() and self._drawn(row_id)[1]:
                rows.append(i)
                prompts.append(template.replace("{thinking}", text))
        return rows, prompts

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, Any]]:
        if self.method() != "model":
            return []
        return [(p, self._sampling()) for p in self._model_prompts(batch)[1]]

    def _apply_model(self, batch: pl.DataFrame) -> StepResult:
        from curate.models import get_backend

        assert self.model is not None
        rows, prompts = self._model_prompts(batch)
        replies = get_backend(self.model).generate(prompts, self._sampling()) if rows else []
        thinking = batch["thinking"].fill_null("").to_list()
        new = list(thinking)
        drawn = [False] * batch.height
        reasons: list[str | None] = ["remove_keywords: row not drawn (per row, ratio)"] * batch.height
        failed = 0
        for i, reply in zip(rows, replies, strict=True):
            drawn[i] = True
            c = reply[0] if reply else None
            text = _strip_markers(c.text) if c is not None and c.ok else ""
            if c is None or not c.ok:
                reasons[i] = f"remove_keywords: model failed ({c.error if c is not None else 'no reply'})"
            elif c.finish_reason == "length":
                reasons[i] = f"remove_keywords: rewrite cut at max_tokens={self.max_tokens}"
            elif not text:
                reasons[i] = "remove_keywords: empty rewrite"
            elif text == thinking[i].strip():
                reasons[i] = "remove_keywords: the model returned the thinking unchanged"
            else:
                new[i], reasons[i] = text, None
                continue
            failed += 1
        touched = [1 if r is None else 0 for r in reasons]
        units = [1 if d else 0 for d in drawn]
        spans: list[list[dict[str, Any]]] = [[] for _ in range(batch.height)]
        return self._finish(batch, {"thinking": new}, units, touched, {"corrupt_spans": spans}, reasons,
                            targets=drawn, stats={"model_rewritten": sum(touched), "model_failed": failed})


#: The rewrite prompt of ``remove_keywords`` mode model: this toolkit's wording of the intent of the
#: paper's ``remove_reflection_prompt`` (NovaSky-AI/SkyThought, branch corrupt, skythought/tools/util/prompts.py).
REMOVE_REFLECTION_PROMPT = """Below is the reasoning part of a long chain-of-thought answer to a problem. \
It contains reflections: places where the writer stops to doubt, re-check or revise earlier work \
("Wait", "Let me check", "Hmm", "Alternatively", "But let me verify"...). Each reflection has a target \
(the earlier content it questions), the reflection itself, and often a revision that follows it.

Remove every reflection together with its target and its revision, and remove the transition phrases \
that introduce them, so that the reasoning proceeds straight forward. Copy everything else exactly, word \
for word; do not add, summarise, explain or solve anything. Reply with the edited reasoning only.

Reasoning:
{thinking}"""


def _strip_markers(text: str) -> str:
    """A rewrite without thinking markers a model may echo back."""
    for m in ("<|begin_of_thought|>", "<|end_of_thought|>", "<think>", "</think>"):
        text = text.replace(m, "")
    return text.strip()


# --- content: wrong final answer -----------------------------------------------------------------

_CHOICE = re.compile(r"^(\(?)([A-E])(\)?)$")
_TEXT_CHOICE = re.compile(r"^\\text\{\s*\(?([A-E])\)?\s*\}$")
_INT = re.compile(r"^-?\d{1,3}(?:,\d{3})+$|^-?\d+$")
_DEC = re.compile(r"^-?\d+\.\d+$")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_SLASH = re.compile(r"^(-?)(\d+)/(\d+)$")
_LEAD = re.compile(r"^(-?\d+(?:\.\d+)?)(\s*[^\d.,/\s].*)$", re.DOTALL)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_ANSWER_WORD = re.compile(r"\banswer\b", re.IGNORECASE)


def normalise_answer(a: str | None) -> str:
    """A light canonical form for comparing answers: no $, spaces, \\left/\\right, \\dfrac, trailing dot."""
    if a is None:
        return ""
    s = a.strip().strip("$").strip()
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\ ", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if _INT.match(s):
        s = s.replace(",", "")
    return s


def _as_number(s: str) -> Fraction | None:
    try:
        if _INT.match(s) or _DEC.match(s):
            return Fraction(s.replace(",", ""))
        m = _FRAC.match(s) or _SLASH.match(s)
        if m:
            v = Fraction(int(m.group(2)), int(m.group(3)))
            return -v if m.group(1) else v
    except (ValueError, ZeroDivisionError):
        return None
    return None


def same_answer(a: str | None, b: str | None) -> bool:
    """Simple equivalence: equal canonical strings, or equal as numbers (ints, decimals, fractions)."""
    na, nb = normalise_answer(a), normalise_answer(b)
    if not na or not nb:
        return False
    if na == nb:
        return True
    x, y = _as_number(na), _as_number(nb)
    return x is not None and x == y


def _perturb_int(rng: random.Random, n: int) -> int:
    if abs(n) >= 10 and rng.random() < 0.5:
        d = max(1, abs(n) * rng.randint(5, 30) // 100)  # integers only: answers can be huge
    else:
        d = rng.randint(1, 9) if abs(n) >= 10 else rng.randint(1, 3)
    w = n + rng.choice((-1, 1)) * d
    if n >= 0 > w:
        w = n + d
    return w if w != n else n + 1


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the content of every \\boxed{...} / \\fbox{...} with balanced braces."""
    out = []
    for m in _BOX.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.end(), i - 1))
    return out


@dataclass
class CorruptWrongAnswer(_Corruption):
    """Give each trace a plausible wrong final answer, replaced consistently in \\boxed{}, solution and conclusion.

    ``mode: synthetic``: numbers are perturbed (integers by a few units or 5-30%, decimals in their
    last places, fractions in the numerator, a leading number in answers like ``30^\\circ``, choice
    letters to another letter); symbolic answers borrow another problem's answer from a pool built in
    a global pass. The wrong value replaces every ``\\boxed{}`` holding the answer (thinking and
    solution) and the standalone occurrences in the last ``conclusion_paragraphs`` paragraphs of the
    solution and of the thinking, and in every paragraph that states an answer ("the final answer is ..."). A simple check (canonical strings, numbers as fractions) then
    confirms the re-extracted answer differs from the original and from ``reference_answer``; rows
    where it does not, or with no final answer, are rejected by default (``on_untouched``).
    The paper's own way (``teacher`` mode: keep the teacher's traces whose answer verified
    *incorrect*) is not a corruption: run ``verify`` and keep the incorrect rows
    (``verify: {keep: incorrect}``, or ``filter: {where: {verify_correct: {eq: false}}}``).
    """

    name = "corrupt_wrong_answer"
    needs_global_pass = True
    specific: ClassVar[dict[str, pa.DataType]] = {
        "answer": pa.large_string(),
        "corrupt_answer_from": pa.string(),
        "corrupt_answer_to": pa.string(),
        "corrupt_answer_method": pa.string(),
        "corrupt_spans": pa.list_(SPAN),
    }

    mode: Literal["synthetic", "teacher"] = field(
        default="synthetic", metadata={"help": "synthetic (this step); teacher is verify + keep incorrect, not this step"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    conclusion_paragraphs: int = field(
        default=3, metadata={"help": "trailing paragraphs of solution and thinking where plain occurrences are replaced"})
    pool_size: int = field(default=10_000, metadata={"help": "answers kept from the global pass for borrowing"})
    on_untouched: Literal["keep", "reject"] = field(
        default="reject", metadata={"help": "rows that could not be given a wrong answer: reject (default) or keep unchanged"})

    def __post_init__(self) -> None:
        if self.mode == "teacher":
            raise ValueError("mode teacher is the paper's way: keep teacher traces whose answer verified incorrect. "
                             "Use the verify step and keep the incorrect rows (verify: {keep: incorrect}, or "
                             "filter: {where: {verify_correct: {eq: false}}}); corrupt_wrong_answer is synthetic only")
        if self.mode != "synthetic":
            raise ValueError(f"mode must be synthetic, not {self.mode!r}")
        if self.conclusion_paragraphs < 0:
            raise ValueError(f"conclusion_paragraphs must be >= 0, got {self.conclusion_paragraphs}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        self._check_common()
        self._symbolic: list[str] = []
        self._any: list[str] = []
        self._fitted = False

    def columns_read(self) -> tuple[str, ...]:
        return ("id", "problem", "thinking", "solution", "answer", "reference_answer")

    def kind(self) -> str:
        return f"{self.name}:{self.mode}"

    @staticmethod
    def _final_answer(answer: str | None, solution: str, thinking: str) -> str | None:
        if answer and answer.strip():
            return answer.strip()
        for text in (solution, thinking):
            found, _ = extract_answer(text, ("boxed", "final_answer", "answer_is"))
            if found:
                return found
        if solution:  # no marker anywhere: the solution's last number (not a truncated thinking's)
            found, _ = extract_answer(solution, ("last_number",))
            if found:
                return found
        return None

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        heap: list[tuple[int, str]] = []
        seen: set[str] = set()
        for batch in batches:
            for ans, sol, th in batch.select("answer", pl.col("solution").fill_null(""),
                                             pl.col("thinking").fill_null("")).iter_rows():
                a = self._final_answer(ans, sol, th)
                norm = normalise_answer(a)
                if not norm or norm in seen or len(norm) > 200:
                    continue
                seen.add(norm)
                item = (-xxhash.xxh3_64_intdigest(f"{self.seed}\x00{norm}".encode()), a)  # type: ignore[arg-type]
                if len(heap) < self.pool_size:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        pool = sorted(a for _, a in heap)
        self._any = pool
        self._symbolic = [a for a in pool if _as_number(normalise_answer(a)) is None]
        self._fitted = True

    def wrong_value(self, rng: random.Random, a: str, reference: str | None) -> tuple[str, str] | None:
        """(wrong value, method) for answer ``a``, or None when no plausible one is found."""
        s = a.strip()
        for _ in range(20):
            got = self._perturb(rng, s)
            if got is None:
                break
            if not same_answer(got[0], a) and not same_answer(got[0], reference):
                return got
        pool = self._symbolic or self._any
        for _ in range(min(64, 4 * len(pool))):  # random draws: the pool is large, clashes are rare
            b = pool[rng.randrange(len(pool))]
            if not same_answer(b, a) and not same_answer(b, reference):
                return b, "borrow"
        return None

    @staticmethod
    def _perturb(rng: random.Random, s: str) -> tuple[str, str] | None:
        if m := _CHOICE.match(s):
            return m.group(1) + rng.choice([c for c in "ABCDE" if c != m.group(2)]) + m.group(3), "choice"
        if m := _TEXT_CHOICE.match(s):
            new = rng.choice([c for c in "ABCDE" if c != m.group(1)])
            return s[:m.start(1)] + new + s[m.end(1):], "choice"
        if _INT.match(s):
            return str(_perturb_int(rng, int(s.replace(",", "")))), "perturb_int"
        if _DEC.match(s):
            whole, frac = s.lstrip("-").split(".")
            scaled = int(whole + frac) * (-1 if s.startswith("-") else 1)
            w = _perturb_int(rng, scaled)
            digits = str(abs(w)).rjust(len(frac) + 1, "0")
            return ("-" if w < 0 else "") + digits[:-len(frac)] + "." + digits[-len(frac):], "perturb_decimal"
        if m := (_FRAC.match(s) or _SLASH.match(s)):
            num = _perturb_int(rng, int(m.group(2)))
            num = num if num != 0 else int(m.group(2)) + 1
            if m.re is _FRAC:
                head = s[:s.index("{") + 1]
                return f"{head}{num}}}{{{m.group(3)}}}", "perturb_fraction"
            return f"{m.group(1)}{num}/{m.group(3)}", "perturb_fraction"
        if m := _LEAD.match(s):
            lead = m.group(1)
            inner = CorruptWrongAnswer._perturb(rng, lead)
            if inner is not None:
                return inner[0] + m.group(2), "perturb_leading_number"
        return None

    @staticmethod
    def _occurrences(a: str) -> re.Pattern[str]:
        esc = re.escape(a)
        if _as_number(normalise_answer(a)) is not None or a[:1].isdigit() or a[:1] == "-":
            return re.compile(r"(?<![\d.])" + esc + r"(?!\d|\.\d)")
        return re.compile(r"(?<![\w\\])" + esc + r"(?![\w])")

    def _spans(self, text: str, a: str) -> list[tuple[int, int]]:
        """Spans of ``text`` holding the answer: \\boxed contents equal to it, plus plain
        occurrences in the last ``conclusion_paragraphs`` paragraphs (outside those boxes)."""
        boxes = [(s, e) for s, e in _boxed_spans(text) if same_answer(text[s:e], a)]
        starts = [0] + [m.end() for m in _PARAGRAPH.finditer(text)]
        paras = list(zip(starts, [*starts[1:], len(text)], strict=True))
        cut = max(0, len(paras) - self.conclusion_paragraphs)
        regions = [(s, e) for i, (s, e) in enumerate(paras) if i >= cut or _ANSWER_WORD.search(text, s, e)]
        inside = lambda p: any(s <= p < e for s, e in boxes)  # noqa: E731
        pattern = self._occurrences(a)
        plain = [m.span() for s, e in regions for m in pattern.finditer(text, s, e) if not inside(m.start())]
        return sorted(set(boxes + plain))

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        assert self._fitted, "fit() must run before apply()"
        new_th, new_so, new_ans, frm, to, how, units, touched, spans, reasons, th_edits = ([] for _ in range(11))
        cols = batch.select("id", pl.col("thinking").fill_null(""), pl.col("solution").fill_null(""),
                            "answer", "reference_answer")
        for row_id, th, so, ans, ref in cols.iter_rows():
            a = self._final_answer(ans, so, th)
            rng = row_rng(self.name, self.seed, row_id)
            got = self.wrong_value(rng, a, ref) if a else None
            reason = None
            out_th, out_so, row_spans, answer_now = th, so, [], ans
            if a is None:
                reason = f"{self.name}: no final answer found"
            elif got is None:
                reason = f"{self.name}: no plausible wrong value for {a!r}"
            else:
                w = got[0]
                edits = {"thinking": self._spans(th, a), "solution": self._spans(so, a)}
                out = {}
                for part, text in (("thinking", th), ("solution", so)):
                    pieces, last = [], 0
                    for s, e in edits[part]:
                        pieces += [text[last:s], w]
                        last = e
                        row_spans.append({"part": part, "start": s, "end": e})
                    out[part] = "".join(pieces) + text[last:]
                check = self._final_answer(None, out["solution"], out["thinking"])
                if not row_spans:
                    reason = f"{self.name}: answer {a!r} not found in a \\boxed{{}} or the conclusion"
                elif check is None or same_answer(check, a) or same_answer(check, ref):
                    reason = f"{self.name}: answer still {check!r} after replacing {a!r} with {w!r}"
                else:
                    out_th, out_so, answer_now = out["thinking"], out["solution"], check
            if reason is not None:
                row_spans = []
            th_edits.append([(sp["start"], sp["end"], len(got[0])) for sp in row_spans  # type: ignore[index]
                             if sp["part"] == "thinking"])
            new_th.append(out_th)
            new_so.append(out_so)
            new_ans.append(answer_now)
            frm.append(a)
            to.append(None if reason else got[0])  # type: ignore[index]
            how.append(None if reason else got[1])  # type: ignore[index]
            units.append(1 if a else 0)
            touched.append(len(row_spans))
            spans.append(row_spans)
            reasons.append(reason)
        extra = {"answer": new_ans, "corrupt_answer_from": frm, "corrupt_answer_to": to,
                 "corrupt_answer_method": how, "corrupt_spans": spans}
        return self._finish(batch, {"thinking": new_th, "solution": new_so}, units, touched, extra, reasons,
                            edits=th_edits)
