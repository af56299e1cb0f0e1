"""What a step contributes to a dataset card, and what it may read to write it.

The card knows no step by name: it asks every registered step class for its section
(``Step.card_section(ctx)``), whether the step ran or not, so a step describes its own stages,
rejects and annotation columns, and says what was not done (a limitation). In the *Variants* table
each variant step describes itself (``Step.card_variant``). The Markdown helpers are re-exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from curate.card.markdown import Md, code, escape, fmt, params_text, table

if TYPE_CHECKING:
    from curate.card.card import Folder
    from curate.step import Step

__all__ = ["CardContext", "CardSection", "Md", "Stage", "VariantNote", "VariantStep", "code", "escape", "fmt",
           "params_text", "step_classes", "table"]

PLOTS_DIR = "plots"
# (title, headers, rows): a table `curate card --show` prints
ShowTable = tuple[str, list[str], list[list[Any]]]


def step_classes() -> dict[str, type[Step]]:
    """Every registered step class by name (the built-in operators and any imported user step)."""
    from curate.ops import registry

    return registry()


@dataclass(frozen=True)
class Stage:
    """One run of a step in the folder: its funnel entry and parameters (``config`` None: the base)."""

    config: str | None
    entry: dict[str, Any]
    params: dict[str, Any]

    @property
    def stats(self) -> dict[str, Any]:
        """What the step reported (its ``StepResult.stats``, summed over batches)."""
        return self.entry.get("stats", {})

    @property
    def where(self) -> str:
        return f"step {self.entry['step']}" + (f" (config {self.config})" if self.config else "")


@dataclass
class CardSection:
    """A step's part of the card; each field is optional."""

    key: str | None = None  # name of `figures` in key_figures (`curate card --show --json`)
    figures: Any = None  # plain (JSON-able) data the section shows
    markdown: list[str] = field(default_factory=list)  # from its "## Title", before *Length statistics*
    tags: list[str] = field(default_factory=list)  # dataset tags of the YAML header ("verified")
    limitations: list[str] = field(default_factory=list)  # lines of *Limitations*
    tables: list[ShowTable] = field(default_factory=list)  # what `curate card --show` prints
    order: int = 100  # place of the section, its tags and limitations among the steps' (lower first)


class CardContext:
    """What a step's card hook reads: the finished folder, this step's stages and rejects, plots."""

    def __init__(self, folder: Folder, step: str, *, plots: bool = False) -> None:
        self.folder = folder
        self.step = step
        self.plots = plots

    @property
    def manifest(self) -> dict[str, Any]:
        return self.folder.manifest

    def stages(self, configs: bool = True) -> list[Stage]:
        """This step's runs: in the base steps, then (with ``configs``) in each variant's."""
        out = [Stage(None, f, p) for f, p in self.folder.steps() if f["name"] == self.step]
        if configs:
            out += [Stage(c, f, p) for c in self.folder.configs
                    for f, name, p in self.folder.variant_steps(c) if name == self.step]
        return out

    def rows(self) -> pl.DataFrame:
        """The base config's rows without the long text (``*_chars`` lengths instead)."""
        return self.folder.stats_frame()

    def schema(self) -> pa.Schema:
        return self.folder.schema()

    def scan(self) -> pl.LazyFrame:
        """The base config's rows, all columns."""
        return self.folder.scan()

    def rejects(self) -> pl.DataFrame | None:
        """Every row this step rejected (base and configs, as listed in the manifest); None if none."""
        paths = [self.folder.root / r["path"] for r in self.manifest.get("rejects", []) if r["step"] == self.step]
        frames = [pl.read_parquet(p) for p in paths]
        return pl.concat(frames, how="diagonal_relaxed") if frames else None

    def histogram(self, name: str, values: list[float], *, title: str, xlabel: str) -> str | None:
        """Write ``plots/<name>.png`` (when the card writes plots); its path for the Markdown, else None."""
        if not self.plots:
            return None
        from curate.card import plots

        rel = f"{PLOTS_DIR}/{name}.png"
        plots.value_histogram(values, self.folder.root / rel, title=title, xlabel=xlabel)
        return rel


@dataclass(frozen=True)
class VariantStep:
    """One step of a variant as the card's *Variants* table describes it."""

    name: str
    params: dict[str, Any]  # as run
    shown: dict[str, Any]  # what tells variants apart: the non-default parameters plus ratio and mode
    stats: dict[str, Any]  # what the step reported in the variant's funnel
    rows: int  # rows of the variant
    distinct: Callable[[str], set[str]]  # the distinct values of a column in the variant's rows

    def describe(self, hidden: tuple[str, ...] = (), ran_as: list[str] | None = None) -> str:
        """The default cell: the step and its shown parameters (never ``model``/``prompt``)."""
        shown = {k: v for k, v in self.shown.items() if k not in ("model", "prompt", *hidden)}
        return (f"{code(self.name)} {code(params_text(shown)) if shown else ''}".rstrip()
                + (f" (ran as {code(', '.join(ran_as))})" if ran_as else ""))


@dataclass(frozen=True)
class VariantNote:
    """What a variant step says in the *Variants* table."""

    what: str  # what it changes (Markdown)
    origin: str = ""  # whose method it is ("" when there is nothing to say)
    changed: str | None = None  # the share of the variant's rows it changed (None: it does not say)
