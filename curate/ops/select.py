"""Seeded sampling: n rows or a fraction, optionally stratified by a column."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import xxhash

from curate.step import Step, StepResult, reject_where


@dataclass
class Sample(Step):
    """Keep ``n`` rows (or a ``fraction``), chosen by a seeded hash of each row's id.

    The choice depends on the seed and the ids only, not on input order or batching, so the same
    rows come out of any engine. With ``stratify_by``, each value of that column gets its
    proportional share (largest remainder), so a source or difficulty mix is kept.
    """

    name = "sample"
    needs_global_pass = True

    n: int | None = field(default=None, metadata={"help": "rows to keep (all if fewer)"})
    fraction: float | None = field(default=None, metadata={"help": "share of rows to keep, in (0, 1]"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    stratify_by: str | None = field(default=None, metadata={"help": "column whose value mix the sample keeps"})

    def __post_init__(self) -> None:
        if (self.n is None) == (self.fraction is None):
            raise ValueError("give exactly one of n or fraction")
        if self.n is not None and self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        self._keep: np.ndarray | None = None
        self._total = 0

    def columns_read(self) -> tuple[str, ...]:
        return ("id",) + ((self.stratify_by,) if self.stratify_by else ())

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        parts = []
        for b in batches:
            cols = [b["id"]]
            stratum = b[self.stratify_by].cast(pl.String) if self.stratify_by else pl.Series([None] * b.height, dtype=pl.String)
            parts.append(pl.DataFrame({"id": cols[0], "stratum": stratum}))
        rows = pl.concat(parts) if parts else pl.DataFrame({"id": [], "stratum": []}, schema={"id": pl.String, "stratum": pl.String})
        rows = rows.with_row_index("pos").with_columns(
            pl.Series("key", [xxhash.xxh3_64_intdigest(f"{self.seed}\x00{i}".encode()) for i in rows["id"].to_list()],
                      dtype=pl.UInt64))
        self._total = rows.height
        sizes = rows.group_by("stratum").len().sort("stratum", nulls_last=True)
        quotas = self._quotas(sizes["len"].to_list())
        sizes = sizes.with_columns(pl.Series("quota", quotas, dtype=pl.Int64))
        ranked = rows.sort(["key", "pos"]).with_columns(pl.int_range(pl.len()).over("stratum").alias("rank"))
        chosen = ranked.join(sizes.select("stratum", "quota"), on="stratum", how="left", nulls_equal=True)
        keep = np.zeros(rows.height, dtype=bool)
        keep[chosen.filter(pl.col("rank") < pl.col("quota"))["pos"].to_numpy()] = True
        self._keep = keep

    def _quotas(self, sizes: list[int]) -> list[int]:
        total = sum(sizes)
        if self.fraction is not None:
            target = round(self.fraction * total)
        else:
            target = min(self.n or 0, total)
        if total == 0:
            return [0] * len(sizes)
        exact = [target * s / total for s in sizes]
        quotas = [math.floor(e) for e in exact]
        by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
        for i in by_remainder[: target - sum(quotas)]:
            quotas[i] += 1
        return quotas

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        assert self._keep is not None, "fit() must run before apply()"
        keep = self._keep[offset: offset + batch.height]
        size = f"n={self.n}" if self.n is not None else f"fraction={self.fraction}"
        strat = f", stratified by {self.stratify_by}" if self.stratify_by else ""
        reason = f"not sampled ({size} of {self._total}, seed={self.seed}{strat})"
        return reject_where(batch, pl.Series(~keep), reason)
