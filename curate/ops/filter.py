"""Row filters: lengths, domains, truncation, answers present, and predicates on any column."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from curate.ops.structure.tokens import (
    NAMED,
    approx_expr,
    count_tokens,
    load_tokenizer,
    method_name,
)
from curate.schema import DOMAINS
from curate.step import Step, StepResult, reject_where

if TYPE_CHECKING:
    from curate.card.section import VariantNote, VariantStep

_TOKENS = "__filter_tokens"

_OPS = {
    "eq": lambda c, v: c == v,
    "ne": lambda c, v: c != v,
    "gt": lambda c, v: c > v,
    "ge": lambda c, v: c >= v,
    "lt": lambda c, v: c < v,
    "le": lambda c, v: c <= v,
    "in": lambda c, v: c.is_in(v),
    "not_in": lambda c, v: ~c.is_in(v),
    "null": lambda c, v: c.is_null() if v else c.is_not_null(),
}
_SYMBOL = {"eq": "==", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<=", "in": "in",
           "not_in": "not in", "null": "is null =="}


def _opt(help_: str) -> Any:
    return field(default=None, metadata={"help": help_})


@dataclass
class Filter(Step):
    """Keep rows that pass every condition; each dropped row's reason names the first it failed.

    Lengths count characters; ``min_tokens`` / ``max_tokens`` count the tokens of thinking +
    solution with ``tokenizer`` (``qwen2``, ``deepseek``, a Hugging Face name or tokenizer.json;
    unset: the regex approximation, within about 5% of qwen2 per trace). ``where`` holds predicates on any column, e.g.
    ``{verify_correct: {eq: true}, difficulty_pass_rate: {gt: 0, le: 0.5}}`` (ops: eq, ne, gt,
    ge, lt, le, in, not_in, null); a null value fails a comparison.
    """

    name = "filter"

    min_problem_chars: int | None = _opt("drop problems shorter than this")
    max_problem_chars: int | None = _opt("drop problems longer than this")
    min_thinking_chars: int | None = _opt("drop traces whose thinking is shorter than this")
    max_thinking_chars: int | None = _opt("drop traces whose thinking is longer than this")
    min_solution_chars: int | None = _opt("drop traces whose solution is shorter than this")
    max_solution_chars: int | None = _opt("drop traces whose solution is longer than this")
    domains: list[str] | None = _opt("keep only these domains (" + ", ".join(DOMAINS) + ")")
    require_closed_thinking: bool = field(default=False, metadata={"help": "drop truncated traces (thinking block never closed)"})
    require_answer: bool = field(default=False, metadata={"help": "drop rows whose `answer` is empty (run extract_answer first)"})
    min_tokens: int | None = _opt("drop traces whose thinking + solution has fewer tokens than this")
    max_tokens: int | None = _opt("drop traces whose thinking + solution has more tokens than this (e.g. the trainer's cutoff)")
    tokenizer: str | None = _opt("tokenizer for min/max_tokens: qwen2, deepseek, a Hugging Face name or tokenizer.json (unset: approximation)")
    where: dict[str, dict[str, Any]] | None = _opt("predicates on columns: {column: {op: value}}")

    def __post_init__(self) -> None:
        for name in ("min_problem_chars", "max_problem_chars", "min_thinking_chars", "max_thinking_chars",
                     "min_solution_chars", "max_solution_chars", "min_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.tokenizer is not None:
            if self.min_tokens is None and self.max_tokens is None:
                raise ValueError("tokenizer counts tokens for min_tokens / max_tokens: set one of them, or drop it")
            if self.tokenizer in NAMED:
                load_tokenizer(self.tokenizer)  # a missing extra is an error now, not mid-run
        for d in self.domains or []:
            if d not in DOMAINS:
                raise ValueError(f"domains: {d!r} is not one of {', '.join(DOMAINS)}")
        for col, preds in (self.where or {}).items():
            if not isinstance(preds, dict) or not preds:
                raise ValueError(f"where.{col} must map operators to values, e.g. {{ge: 0.5}}")
            for op, value in preds.items():
                if op not in _OPS:
                    raise ValueError(f"where.{col}: unknown operator {op!r}; use {', '.join(_OPS)}")
                if op in ("in", "not_in") and not isinstance(value, list):
                    raise ValueError(f"where.{col}.{op} needs a list")

    @classmethod
    def card_variant(cls, step: VariantStep) -> VariantNote:
        """A variant that keeps the base's correct or incorrect traces says so; the incorrect ones
        are the seed paper's wrong-answer set (Li et al. 2025: the same teacher's incorrect traces)."""
        from curate.card.section import VariantNote

        shown = step.shown
        what = step.describe()
        if set(shown) == {"where"} and set(shown["where"]) == {"verify_correct"}:
            eq = shown["where"]["verify_correct"].get("eq")
            what = "the base's " + ("correct" if eq else "incorrect") + " traces (`verify_correct`)"
        origin = ("Li et al. 2025's: the same teacher's traces whose answer verified incorrect"
                  if (step.params.get("where") or {}).get("verify_correct") == {"eq": False} else "")
        return VariantNote(what, origin)

    def columns_read(self) -> tuple[str, ...]:
        cols = ["problem", "thinking", "solution", "domain", "thinking_closed"]
        if self.require_answer:
            cols.append("answer")
        return (*cols, *(self.where or {}))

    def _conditions(self) -> list[tuple[pl.Expr, pl.Expr]]:
        """(passes, reason) pairs in the order they are checked."""
        conds: list[tuple[pl.Expr, pl.Expr]] = []
        for col in ("problem", "thinking", "solution"):
            n = pl.col(col).fill_null("").str.len_chars()
            lo, hi = getattr(self, f"min_{col}_chars"), getattr(self, f"max_{col}_chars")
            if lo is not None:
                conds.append((n >= lo, pl.format(f"{col} has {{}} chars < min_{col}_chars={lo}", n)))
            if hi is not None:
                conds.append((n <= hi, pl.format(f"{col} has {{}} chars > max_{col}_chars={hi}", n)))
        if self.domains is not None:
            conds.append((pl.col("domain").is_in(self.domains),
                          pl.format("domain {} not in {}", pl.col("domain"), pl.lit(", ".join(self.domains)))))
        if self.require_closed_thinking:
            conds.append((pl.col("thinking_closed").fill_null(True), pl.lit("thinking block never closed (truncated)")))
        if self.require_answer:
            conds.append((pl.col("answer").fill_null("").str.strip_chars() != "", pl.lit("no answer extracted")))
        lo, hi = self.min_tokens, self.max_tokens
        if lo is not None or hi is not None:
            n, how = pl.col(_TOKENS), method_name(self.tokenizer)
            if lo is not None:
                conds.append((n >= lo, pl.format(f"{{}} tokens ({how}) < min_tokens={lo}", n)))
            if hi is not None:
                conds.append((n <= hi, pl.format(f"{{}} tokens ({how}) > max_tokens={hi}", n)))
        for col, preds in (self.where or {}).items():
            for op, value in preds.items():
                ok = _OPS[op](pl.col(col), value)
                shown = pl.col(col).cast(pl.String).fill_null("null")
                conds.append((ok, pl.format(f"{col}={{}} fails {col} {_SYMBOL[op]} {value!r}", shown)))
        return conds

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        conds = self._conditions()
        if not conds or batch.height == 0:
            return StepResult(batch, None)
        chain = pl.when(~conds[0][0].fill_null(False)).then(conds[0][1])
        for ok, reason in conds[1:]:
            chain = chain.when(~ok.fill_null(False)).then(reason)
        reason = self._with_tokens(batch).select(chain.otherwise(None).alias("r"))["r"]
        return reject_where(batch, reason.is_not_null(), reason)

    def _with_tokens(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch with the token count of thinking + solution, when a token limit is set."""
        if self.min_tokens is None and self.max_tokens is None:
            return batch
        if self.tokenizer:
            texts = [(t or "") + (s or "") for t, s in zip(batch["thinking"].to_list(), batch["solution"].to_list())]
            return batch.with_columns(pl.Series(_TOKENS, count_tokens(texts, self.tokenizer), dtype=pl.Int64))
        return batch.with_columns((approx_expr("thinking") + approx_expr("solution")).alias(_TOKENS))
