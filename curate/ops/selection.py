"""Selection the way s1 and LIMO chose their few hundred or thousand rows (``sample`` draws; these choose).

- ``select_quality``: s1's quality stage (simplescaling/s1 @ 77272c6, ``data/filter.ipynb``,
  "Drop NAs" and "Drop weird string patterns"): rows whose generation failed, and questions with
  Asymptote figures (kept for AIME sources), image links, ``p1.``-style part numbering or bold
  numbers (``**...3...**``). s1 dropped a row when any of its features was missing (a failed
  API call); here a failed generation is an empty thinking or solution, or a truncated trace.
- ``select_diverse``: s1's diversity stage (same notebook, "Diversity sampling" and "Powerlaw length
  sampling"): until ``n`` rows are chosen, draw a domain uniformly among those with rows left, then
  a row of it with weight 2^-rank by length (rank 0: the longest trace), without replacement.
  s1 drew its last 300 domains in proportion to AIME and GPQA's domain mix instead of uniformly
  and pre-selected benchmark-like rows first; here ``preselect`` keeps rows matching a predicate
  first, and every draw is uniform over domains. s1 used numpy's global RNG unseeded; here the
  draw is seeded and independent of input order and batching.
- ``select_top``: keep the best ``n`` rows by a score (LIMO keeps its best-scoring reasoning
  chains: ``score_reasoning`` then ``select_top``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curate.ops.filter import Filter
from curate.ops.structure.tokens import approx_expr
from curate.step import Step, StepResult, param, reject_where

_BOLD_NUMBER = re.compile(r"\*\*(?=.*\d)[^\s\]]*\*\*")  # s1's regex, verbatim (a look-ahead: Python's re)
_PART_NUMBER = r"p[1-9]\d{0,2}\."  # s1: any of "p1." ... "p999." in the question



@dataclass
class SelectQuality(Step):
    """Drop failed generations and questions with formatting problems, as s1's quality stage did; the reason names the rule.

    The formatting rules are s1's own (simplescaling/s1 data/filter.ipynb); the failed-generation
    rule is this toolkit's reading of s1's "drop rows with a missing feature": empty thinking,
    empty solution, or a thinking block never closed (or ``finish_reason`` length). Formatting: ``[asy]`` figures (unless the source matches
    ``asy_sources``), ``![Image]`` links, ``p1.``-style numbering, bold numbers.
    """

    name = "select_quality"

    failed_generations: bool = param(True, "drop rows with empty thinking or solution, or a truncated trace")
    formatting: bool = param(True, "drop questions with s1's formatting patterns")
    asy_sources: list[str] | None = param(None, "keep [asy] figures in questions whose source contains one of these (s1: AIME); default ['aime']")

    def __post_init__(self) -> None:
        if self.asy_sources is None:
            self.asy_sources = ["aime"]

    def columns_read(self) -> tuple[str, ...]:
        return ("problem", "thinking", "solution", "thinking_closed", "finish_reason", "source")

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        problem = pl.col("problem").fill_null("")
        conds: list[tuple[pl.Expr, str]] = []
        if self.failed_generations:
            conds += [
                (pl.col("thinking").fill_null("").str.strip_chars() == "", "failed generation: no thinking"),
                (pl.col("solution").fill_null("").str.strip_chars() == "", "failed generation: no solution"),
                ((pl.col("thinking_closed") == False) | (pl.col("finish_reason") == "length"),  # noqa: E712
                 "failed generation: truncated (thinking never closed or max tokens hit)"),
            ]
        if self.formatting:
            asy_ok = pl.lit(False)
            for s in self.asy_sources or []:
                asy_ok = asy_ok | pl.col("source").fill_null("").str.to_lowercase().str.contains(s.lower(), literal=True)
            conds += [
                (problem.str.contains("[asy]", literal=True) & ~asy_ok, "formatting: an [asy] figure in the question"),
                (problem.str.contains("![Image]", literal=True), "formatting: an image link in the question"),
                (problem.str.contains(_PART_NUMBER), "formatting: p1.-style part numbering in the question"),
                (pl.lit(pl.Series([bool(_BOLD_NUMBER.search(p or "")) for p in batch["problem"].to_list()],
                                  dtype=pl.Boolean)), "formatting: a bold number (**...**) in the question"),
            ]
        if not conds or batch.height == 0:
            return StepResult(batch, None)
        chain = pl.when(conds[0][0].fill_null(False)).then(pl.lit(conds[0][1]))
        for cond, why in conds[1:]:
            chain = chain.when(cond.fill_null(False)).then(pl.lit(why))
        reason = batch.select(chain.otherwise(None).alias("r"))["r"]
        return reject_where(batch, reason.is_not_null(), reason)


def _length(batch: pl.DataFrame, column: str | None) -> pl.Series:
    """The length a draw favours: ``column`` when given, else approximate thinking tokens."""
    if column:
        return batch[column].cast(pl.Float64).fill_null(0.0)
    return batch.select(approx_expr("thinking").cast(pl.Float64))["thinking"]


@dataclass
class SelectDiverse(Step):
    """Draw n rows as s1 did: a domain uniformly at random, then within it a row with weight 2^-rank by trace length (longest first), until n are chosen.

    s1's procedure (simplescaling/s1 data/filter.ipynb), except that here every draw is uniform
    over domains (s1 drew its last 300 in AIME/GPQA's domain mix) and the draw is seeded; the
    choice depends on the rows' ids, domains and lengths only, not on their order or batching. ``preselect`` (a ``filter``-style ``where``) keeps matching rows before any draw
    (s1 kept AIME/GPQA rows and long MATH traces). Writes ``select_draw`` (0-based draw order;
    preselected rows first).
    """

    name = "select_diverse"
    needs_global_pass = True
    writes = {"select_draw": pa.int64()}  # noqa: RUF012

    n: int = param(1000, "rows to keep (all if fewer)")
    domain: str = param("domain_msc", "column whose values are the domains drawn uniformly (classify_domain writes domain_msc)")
    length: str | None = param(None, "numeric column of trace length (default: approximate thinking tokens)")
    seed: int = param(0, "random seed")
    preselect: dict[str, dict[str, Any]] | None = param(None, "rows to keep before drawing: {column: {op: value}} as filter's where")

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        self._pre = Filter(where=self.preselect) if self.preselect else None
        self._order: dict[int, int] = {}  # global row -> draw (a repeated id: its first row)
        self._total = 0

    def columns_read(self) -> tuple[str, ...]:
        cols = ["id", self.domain, *(self.preselect or {})]
        cols += [self.length] if self.length else ["thinking"]
        return tuple(dict.fromkeys(cols))

    def _preselected(self, batch: pl.DataFrame) -> pl.Series:
        if self._pre is None:
            return pl.Series([False] * batch.height, dtype=pl.Boolean)
        return pl.Series(batch.select(pl.all_horizontal([c.fill_null(False) for c, _ in self._pre._conditions()])
                                      .alias("p"))["p"], dtype=pl.Boolean)

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        frames, offset = [], 0
        for b in batches:
            frames.append(pl.DataFrame({"id": b["id"], "domain": b[self.domain].cast(pl.String),
                                        "len": _length(b, self.length), "pre": self._preselected(b),
                                        "pos": pl.Series(np.arange(offset, offset + b.height), dtype=pl.Int64)}))
            offset += b.height
        rows = pl.concat(frames) if frames else pl.DataFrame(schema={"id": pl.String, "domain": pl.String,
                                                                     "len": pl.Float64, "pre": pl.Boolean,
                                                                     "pos": pl.Int64})
        self._total = rows.height
        rows = rows.unique("id", keep="first", maintain_order=True)  # one id, one draw
        chosen = rows.filter(pl.col("pre")).sort("id")["id"].to_list()[: self.n]
        rng = np.random.default_rng(self.seed)
        pools: dict[str, list[str]] = {}  # domain -> ids, longest first (ties: by id)
        for (dom,), g in rows.filter(~pl.col("pre")).sort(["len", "id"], descending=[True, False]).group_by(
                "domain", maintain_order=True):
            pools[str(dom)] = g["id"].to_list()
        domains = sorted(pools)
        while len(chosen) < self.n and domains:
            d = domains[int(rng.integers(len(domains)))]
            pool = pools[d]
            weights = np.power(2.0, -np.arange(len(pool)))  # rank 0: the longest left in this domain
            k = int(rng.choice(len(pool), p=weights / weights.sum()))
            chosen.append(pool.pop(k))
            if not pool:
                domains.remove(d)
        first = dict(zip(rows["id"].to_list(), rows["pos"].to_list(), strict=True))
        self._order = {first[i]: k for k, i in enumerate(chosen)}

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        draw = pl.Series("select_draw", [self._order.get(offset + k) for k in range(batch.height)], dtype=pl.Int64)
        out = batch.with_columns(draw)
        reason = f"not drawn by s1's diversity sampling (n={self.n} of {self._total}, by {self.domain}, seed={self.seed})"
        return reject_where(out, draw.is_null(), reason)


@dataclass
class SelectTop(Step):
    """Keep the best n rows by a score column (LIMO keeps its best-scoring reasoning chains); ties go to the smaller id.

    Rows whose score is null are rejected. Writes ``select_rank`` (0 = best).
    """

    name = "select_top"
    needs_global_pass = True
    writes = {"select_rank": pa.int64()}  # noqa: RUF012

    n: int = param(817, "rows to keep (LIMO: 817)")
    by: str = param("rubric_score", "numeric column to rank by")
    descending: bool = param(True, "higher is better")

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        self._rank: dict[int, int] = {}  # global row -> rank
        self._total = 0

    def columns_read(self) -> tuple[str, ...]:
        return ("id", self.by)

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        frames, offset = [], 0
        for b in batches:
            frames.append(b.select("id", pl.col(self.by).cast(pl.Float64).alias("s"),
                                   pl.Series("pos", np.arange(offset, offset + b.height), dtype=pl.Int64)))
            offset += b.height
        rows = pl.concat(frames) if frames else pl.DataFrame(schema={"id": pl.String, "s": pl.Float64, "pos": pl.Int64})
        self._total = rows.height
        best = (rows.filter(pl.col("s").is_not_null() & pl.col("s").is_not_nan())
                .unique("id", keep="first", maintain_order=True)
                .sort(["s", "id"], descending=[self.descending, False]).head(self.n))
        self._rank = {p: k for k, p in enumerate(best["pos"].to_list())}

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        rank = pl.Series("select_rank", [self._rank.get(offset + k) for k in range(batch.height)], dtype=pl.Int64)
        out = batch.with_columns(rank)
        order = "highest" if self.descending else "lowest"
        reason = pl.when(pl.col(self.by).is_null()).then(pl.lit(f"no {self.by}")).otherwise(
            pl.lit(f"not among the {self.n} {order} {self.by} of {self._total}"))
        return reject_where(out, rank.is_null(), reason)


