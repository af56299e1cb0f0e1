"""Exact deduplication on normalised text (near-duplicates are MinHash's job).

The pass is a hash shuffle (``plan``): each part's 128-bit text hashes go to hash buckets,
one task per bucket picks each group's survivor, and each part's apply reads its own plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from curate.globalpass import PassContext, PlannedApply, no_duplicates, read_duplicates
from curate.ops.dedup.minhash import split_duplicates
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
    thread_safe = True  # the planned apply only reads its part's plan
    reject_columns = {"duplicate_of": pa.string()}

    mode: Literal["problem_response", "problem"] = field(
        default="problem_response", metadata={"help": "what must repeat: problem+thinking+solution, or the problem alone"})
    keep: Literal["first", "longest", "shortest"] = field(
        default="first", metadata={"help": "which row of a duplicate group survives (by input order or response length)"})

    def columns_read(self) -> tuple[str, ...]:
        return ("id", *_KEY_COLUMNS[self.mode])

    @classmethod
    def card_section(cls, ctx: CardContext) -> CardSection | None:
        """The dataset is tagged ``deduplicated`` when the base rows went through this step."""
        from curate.card.section import CardSection

        return CardSection(tags=["deduplicated"], order=40) if ctx.stages(configs=False) else None

    def _keep_order(self) -> list[pl.Expr]:
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

    def plan(self, ctx: PassContext) -> PlannedApply:
        """Hash shuffle: each part's keys go to ``ctx.buckets()`` buckets by hash; one task per bucket
        keeps each group's first row in ``keep`` order; the rest are the plan's duplicates."""
        if ctx.done() is None:
            buckets, store = ctx.buckets(), ctx.scratch
            cols = list(dict.fromkeys(["id", *self.columns_read()[1:], "thinking", "solution"]))

            def hash_part(s: ExactDedup, item: tuple[int, str, int]) -> dict[str, int]:
                k, path, offset = item
                batch = pl.read_parquet(path, columns=cols)
                keys = s._keys(batch).with_columns(pl.Series("pos", np.arange(offset, offset + batch.height)),
                                                   batch["id"].alias("id"))
                keys = keys.with_columns((pl.col("hi") % buckets).alias("bucket"))
                for (b,), frame in keys.group_by("bucket"):
                    store.put(f"keys/b-{int(b):04d}/{k:05d}", frame.drop("bucket"))
                return {"rows": batch.height}

            ctx.map(hash_part, ctx.items(), state=self, on_result=ctx.told())
            order = self._keep_order()

            def reduce_bucket(_: Any, bucket: str) -> dict[str, int]:
                table = pl.concat([store.get(key) for key in store.keys(bucket)])
                reps = (table.sort(order).group_by(["hi", "lo"], maintain_order=True)
                        .agg(pl.col("pos").first().alias("rep"), pl.col("id").first().alias("duplicate_of")))
                dups = table.join(reps, on=["hi", "lo"]).filter(pl.col("pos") != pl.col("rep"))
                store.put(f"dups/{bucket[5:]}", dups.select("pos", "duplicate_of",
                                                            pl.lit(None, pl.Float64).alias("score")))
                return {"rows": table.height}

            ctx.map(reduce_bucket, sorted({key.rsplit("/", 1)[0] for key in store.keys("keys")}))
            found = [store.get(key) for key in store.keys("dups")]
            dups = pl.concat(found) if found else no_duplicates()
            ctx.write_plans(dups)
            ctx.finish({"dropped": dups.height}, ["keys", "dups"])
        return ExactDedup.apply_plan

    def apply_plan(self, batch: pl.DataFrame, offset: int, plan: Path) -> StepResult:
        """The apply of one part from its plan (the rows to drop and the id each duplicates)."""
        return self._reject_duplicates(batch, read_duplicates(plan, batch.height)[0])

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        raise RuntimeError("exact_dedup applies from its plan: run it in a Pipeline (or curate.globalpass.run_here)")

    def _reject_duplicates(self, batch: pl.DataFrame, duplicate_of: pl.Series, score: pl.Series | None = None) -> StepResult:
        """Reject the rows whose ``duplicate_of`` (the kept row's id) is set; the rest are kept."""
        what = "problem" if self.mode == "problem" else "problem+response"
        return split_duplicates(batch, duplicate_of,
                                pl.format("exact duplicate (normalised {}) of {}", pl.lit(what), pl.col("duplicate_of")))
