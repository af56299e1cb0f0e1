"""The shared base of the corruption operators: per-row RNG, ratio semantics, audit columns, step offsets.

The contract every corruption keeps is in the package docstring (``curate.ops.corrupt``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl
import pyarrow as pa
import xxhash

from curate.ops.corrupt.coverage import coverage_warnings
from curate.ops.structure.segment import spans
from curate.ops.structure.step import Segmentation, resegment
from curate.schema import trace_id
from curate.step import Step, StepResult, reject_where

if TYPE_CHECKING:
    from curate.card.section import VariantNote, VariantStep

# whose method a corruption is, as the card's *Variants* table says it
PAPER = "Li et al. 2025"
NOT_PUBLIC = ("the paper's perturbation; its code is not public, so the steps (`segment_steps`) and the "
              "choice of steps are this toolkit's reading")

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
class Corruption(Step):
    """Shared parameters, validation and bookkeeping of the corruption operators."""

    writes: ClassVar[dict[str, pa.DataType]] = COMMON_COLUMNS

    def _check_common(self) -> None:
        ratio = getattr(self, "ratio", None)
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")

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
            *[pl.Series(c, v, dtype=_LIST_PL[self.writes[c]]) for c, v in extra.items()],
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

    # --- the end of a run and the dataset card ---------------------------------------------------
    def coverage_warnings(self, stats: dict[str, Any]) -> list[str]:
        """A line when the step changed < 99% of the rows it meant to change (``corruption: {rows,
        target, changed}`` in its stats): the other rows are copies of the base, partly not a variant."""
        return coverage_warnings(stats)

    @classmethod
    def card_variant(cls, step: VariantStep) -> VariantNote:
        """The *Variants* cell: what the step did, whose method it is, the share of rows it changed."""
        from curate.card.section import VariantNote

        c = step.stats.get("corruption")
        changed = None
        if c:
            changed = f"{c['changed'] / step.rows:.1%}" if step.rows else "—"
            changed += (f" ({c['changed'] / c['target']:.1%} of {c['target']:,} drawn)"
                        if c["target"] != c["rows"] and c["target"] else "")
        return VariantNote(cls.card_what(step), cls.method_origin(step), changed)

    @classmethod
    def card_what(cls, step: VariantStep) -> str:
        return step.describe()

    @classmethod
    def method_origin(cls, step: VariantStep) -> str:
        """Whose method this is: the paper's own (with the file followed) or this toolkit's."""
        return ""


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


def scope_parts(scope: str) -> tuple[str, ...]:
    """The text columns a ``scope`` (response or thinking) covers."""
    return ("thinking",) if scope == "thinking" else ("thinking", "solution")
