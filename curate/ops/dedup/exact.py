"""Exact deduplication on normalised text (near-duplicates are MinHash's job)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from curate.ops.dedup.minhash import duplicate_of, split_duplicates
from curate.step import Step, StepResult

if TYPE_CHECKING:
    from curate.card.section import CardContext, CardSection

_KEY_COLUMNS = {"problem_response": ("problem", "thinking", "solution"), "problem": ("problem",)}


def normalised(col: str) -> pl.Expr:
    """Case-folded, whitespace-collapsed text: formatting noise does not make a row unique."""
    return pl.col(col).fill_null("").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


@dataclass
class ExactDedup(Step):
    """Drop rows whose normalised problem + response (or problem alone) repeats another row's.

    Text is lower-cased and whitespace-collapsed, then hashed with 128-bit xxh3. Within each group
    of duplicates one row is kept by ``keep``; the others go to rejects with ``duplicate_of``.
    """

    name = "exact_dedup"
    needs_global_pass = True
    reject_columns = {"duplicate_of": pa.string()}

    mode: Literal["problem_response", "problem"] = field(
        default="problem_response", metadata={"help": "what must repeat: problem+thinking+solution, or the problem alone"})
    keep: Literal["first", "longest", "shortest"] = field(
        default="first", metadata={"help": "which row of a duplicate group survives (by input order or response length)"})

    def __post_init__(self) -> None:
        self._rep: np.ndarray | None = None
        self._ids: pl.Series | None = None

    def columns_read(self) -> tuple[str, ...]:
        return ("id", *_KEY_COLUMNS[self.mode])

    @classmethod
    def card_section(cls, ctx: CardContext) -> CardSection | None:
        """The dataset is tagged ``deduplicated`` when the base rows went through this step."""
        from curate.card.section import CardSection

        return CardSection(tags=["deduplicated"], order=40) if ctx.stages(configs=False) else None

    def keep_order(self) -> list[pl.Expr]:
        """Sort keys over (pos, len) that put each duplicate group's survivor first."""
        return {"first": [pl.col("pos")], "longest": [-pl.col("len"), pl.col("pos")],
                "shortest": [pl.col("len"), pl.col("pos")]}[self.keep]

    def _keys(self, batch: pl.DataFrame) -> pl.DataFrame:
        cols = _KEY_COLUMNS[self.mode]
        text = batch.select(pl.concat_str([normalised(c) for c in cols], separator="\x00").alias("k"))["k"]
        digests = [xxhash.xxh3_128_intdigest(s.encode()) for s in text.to_list()]
        length = batch.select(
            (pl.col("thinking").fill_null("").str.len_bytes() + pl.col("solution").fill_null("").str.len_bytes())
            .alias("n"))["n"]
        return pl.DataFrame({
            "hi": pl.Series([d >> 64 for d in digests], dtype=pl.UInt64),
            "lo": pl.Series([d & 0xFFFFFFFFFFFFFFFF for d in digests], dtype=pl.UInt64),
            "len": length.cast(pl.Int64),
        })

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        keys, ids = [], []
        for batch in batches:
            keys.append(self._keys(batch))
            ids.append(batch["id"])
        table = pl.concat(keys).with_row_index("pos") if keys else pl.DataFrame(
            {"pos": [], "hi": [], "lo": [], "len": []},
            schema={"pos": pl.UInt32, "hi": pl.UInt64, "lo": pl.UInt64, "len": pl.Int64})
        reps = table.sort(self.keep_order()).group_by(["hi", "lo"], maintain_order=True).agg(pl.col("pos").first().alias("rep"))
        rep = table.join(reps, on=["hi", "lo"], how="left").sort("pos")["rep"]
        self._rep = rep.to_numpy().astype(np.int64)
        self._ids = pl.concat(ids) if ids else pl.Series("id", [], dtype=pl.String)

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        assert self._rep is not None and self._ids is not None, "fit() must run before apply()"
        return self.reject_duplicates(batch, duplicate_of(self._ids, self._rep, offset, batch.height))

    def reject_duplicates(self, batch: pl.DataFrame, duplicate_of: pl.Series, score: pl.Series | None = None) -> StepResult:
        """Reject the rows whose ``duplicate_of`` (the kept row's id) is set; the rest are kept."""
        what = "problem" if self.mode == "problem" else "problem+response"
        return split_duplicates(batch, duplicate_of,
                                pl.format("exact duplicate (normalised {}) of {}", pl.lit(what), pl.col("duplicate_of")))
