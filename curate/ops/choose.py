"""Rejection sampling's last step: of each problem's verified samples, keep the first, the shortest, or all.

Sky-T1, OpenThoughts and s1 sample a teacher several times per problem and keep what verifies;
this step picks among the correct samples of one problem (grouped by the whitespace-normalised
``by`` column) after ``verify: {keep: all}`` or ``{keep: correct}``. Every other row is rejected
with the reason: not correct, or another correct sample of the problem was chosen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import polars as pl
import pyarrow as pa

from curate.ops.structure.tokens import approx_expr
from curate.step import REJECT_REASON, Step, StepResult, param

Keep = Literal["first", "shortest", "all"]
KEEP = get_args(Keep)



def response_tokens(batch: pl.DataFrame) -> pl.Series:
    """Approximate tokens of thinking + solution (the fast counter every length rule here uses)."""
    t = batch.select(approx_expr(pl.col("thinking").fill_null("")).alias("t"),
                     approx_expr(pl.col("solution").fill_null("")).alias("s"))
    return (t["t"] + t["s"]).cast(pl.Int64).alias("choose_tokens")


@dataclass
class Choose(Step):
    """Keep the first, the shortest, or all correct samples of each problem (rejection sampling after generate and verify).

    ``first`` keeps the earliest correct sample (input order, i.e. sample 0 before sample 1), as a
    sampler that stops at the first success would; ``shortest`` the one with the fewest tokens
    (ties: the earliest); ``all`` every correct one. Writes ``choose_correct`` (correct samples of
    the problem) and ``choose_tokens``.
    """

    name = "choose"
    needs_global_pass = True
    writes = {"choose_correct": pa.int64(), "choose_tokens": pa.int64()}  # noqa: RUF012

    keep: Keep = param("first", "first | shortest | all (of each problem's correct samples)")
    by: str = param("problem", "column (whitespace-normalised) whose value groups the samples of one problem")

    def __post_init__(self) -> None:
        self._best: dict[str, tuple[int, int]] = {}  # problem -> (tokens or 0, global row) of the kept one
        self._count: dict[str, int] = {}

    def columns_read(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.by, "thinking", "solution", "verify_correct")))

    def _keys(self, batch: pl.DataFrame) -> list[str]:
        return [" ".join((k or "").split()) for k in batch[self.by].cast(pl.String).to_list()]

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        best: dict[str, tuple[int, int]] = {}
        count: dict[str, int] = {}
        offset = 0
        for batch in batches:
            tokens = response_tokens(batch).to_list()
            for k, (key, ok, n) in enumerate(zip(self._keys(batch), batch["verify_correct"].to_list(), tokens,
                                                 strict=True)):
                if ok is True:
                    count[key] = count.get(key, 0) + 1
                    rank = n if self.keep == "shortest" else 0
                    if key not in best or rank < best[key][0]:
                        best[key] = (rank, offset + k)
            offset += batch.height
        self._best, self._count = best, count

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        keys = self._keys(batch)
        reasons: list[str | None] = []
        for k, (key, ok) in enumerate(zip(keys, batch["verify_correct"].to_list(), strict=True)):
            if ok is not True:
                why = "unverifiable" if ok is None else "incorrect"
                reasons.append(f"not a correct sample ({why})")
            elif self.keep == "all" or self._best[key][1] == offset + k:
                reasons.append(None)
            else:
                reasons.append(f"another correct sample of this problem is kept ({self.keep} of "
                               f"{self._count[key]} correct)")
        annotated = batch.with_columns(
            pl.Series("choose_correct", [self._count.get(key, 0) for key in keys], dtype=pl.Int64),
            response_tokens(batch))
        drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
        tagged = annotated.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
        return StepResult(annotated.filter(~drop), tagged.filter(drop))
