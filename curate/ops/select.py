"""Seeded sampling: n rows or a fraction, optionally stratified by a column.

The pass (``plan``) counts each part's rows per stratum and keeps its smallest seeded keys per
stratum; the driver merges them into one cut per stratum, a few numbers every apply gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import xxhash

from curate.globalpass import PassContext
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
        self._cut: dict[str | None, tuple[int, int]] | None = None  # per stratum: the last (key, pos) kept
        self._total = 0

    def columns_read(self) -> tuple[str, ...]:
        return ("id",) + ((self.stratify_by,) if self.stratify_by else ())

    def keys(self, batch: pl.DataFrame, offset: int) -> pl.DataFrame:
        """(stratum, key, pos) of each row: rows are chosen by smallest seeded id hash, then position."""
        stratum = (batch[self.stratify_by].cast(pl.String) if self.stratify_by
                   else pl.Series([None] * batch.height, dtype=pl.String))
        key = [xxhash.xxh3_64_intdigest(f"{self.seed}\x00{i}".encode()) for i in batch["id"].to_list()]
        return pl.DataFrame({"stratum": stratum, "key": pl.Series(key, dtype=pl.UInt64),
                             "pos": pl.Series(np.arange(offset, offset + batch.height), dtype=pl.Int64)})

    def plan(self, ctx: PassContext) -> None:
        """One unit per part: its rows per stratum, and its smallest keys per stratum, at most the
        sample size (known from the stage's row count: no stratum's quota exceeds it). The cut of
        each stratum is then its quota-th smallest key among those."""
        done = ctx.done()
        if done is None:
            cols, store = list(self.columns_read()), ctx.scratch
            target = self._quotas([ctx.rows])[0]

            def count_and_keep(s: Sample, item: tuple[int, str, int]) -> dict[str, Any]:
                keys = s.keys(pl.read_parquet(item[1], columns=cols), item[2])
                best = s._ranked(keys, {}).filter(pl.col("rank") < target).drop("rank", "quota")
                store.put(f"smallest/{item[0]:05d}", best)
                return {"rows": keys.height, "strata": keys.group_by("stratum").len().rows()}

            totals: dict[str | None, int] = {}
            for result in ctx.map(count_and_keep, ctx.items(), state=self, on_result=ctx.told()):
                for stratum, n in result["strata"]:
                    totals[stratum] = totals.get(stratum, 0) + n
            found = [store.get(key) for key in store.keys("smallest")]
            candidates = (pl.concat(found) if found
                          else self.keys(pl.DataFrame({"id": []}, schema={"id": pl.String}), 0))
            last = self._ranked(candidates, self._quotas_of(totals)).filter(pl.col("rank") == pl.col("quota") - 1)
            done = {"total": sum(totals.values()), "cuts": last.select("stratum", "key", "pos").rows()}
            ctx.finish(done, ["smallest"])
        self._total = done["total"]
        self._cut = {s: (k, p) for s, k, p in done["cuts"]}
        return None

    def _quotas_of(self, counts: dict[str | None, int]) -> dict[str | None, int]:
        """Rows to keep per stratum, from the rows per stratum of the whole input."""
        strata = sorted(counts, key=lambda s: (s is None, s or ""))
        return dict(zip(strata, self._quotas([counts[s] for s in strata]), strict=True))

    @staticmethod
    def _ranked(keys: pl.DataFrame, quotas: dict[str | None, int]) -> pl.DataFrame:
        """``keys`` with each row's ``rank`` in its stratum (by key, then position) and the
        stratum's ``quota``: the rows with rank < quota are the sample."""
        quota = pl.DataFrame({"stratum": list(quotas), "quota": list(quotas.values())},
                             schema={"stratum": pl.String, "quota": pl.Int64})
        return (keys.sort(["key", "pos"]).with_columns(pl.int_range(pl.len()).over("stratum").alias("rank"))
                .join(quota, on="stratum", how="left", nulls_equal=True))

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
        assert self._cut is not None, "plan() must run before apply()"
        keys = self.keys(batch, offset)
        cut = pl.DataFrame({"stratum": list(self._cut), "cut_key": [c[0] for c in self._cut.values()],
                            "cut_pos": [c[1] for c in self._cut.values()]},
                           schema={"stratum": pl.String, "cut_key": pl.UInt64, "cut_pos": pl.Int64})
        keep = (keys.join(cut, on="stratum", how="left", nulls_equal=True, maintain_order="left")
                .select((pl.col("key") < pl.col("cut_key"))
                        | ((pl.col("key") == pl.col("cut_key")) & (pl.col("pos") <= pl.col("cut_pos"))))
                .to_series().fill_null(False))
        size = f"n={self.n}" if self.n is not None else f"fraction={self.fraction}"
        strat = f", stratified by {self.stratify_by}" if self.stratify_by else ""
        reason = f"not sampled ({size} of {self._total}, seed={self.seed}{strat})"
        return reject_where(batch, ~keep, reason)
