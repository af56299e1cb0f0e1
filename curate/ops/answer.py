"""Answer extraction: fill the `answer` column from the response text."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from curate.answers import METHODS, extract_answer
from curate.step import Step, StepResult


@dataclass
class ExtractAnswer(Step):
    """Fill `answer` from the solution, else from the end of the thinking (truncated traces).

    Methods are tried in order: last ``\\boxed{}``, "Final Answer:", "the answer is", last number.
    `answer_method` records which one fired. Rows without an answer are kept (answer null);
    drop them with ``filter: {require_answer: true}``.
    """

    name = "extract_answer"
    writes = {"answer": pa.large_string(), "answer_method": pa.string()}

    methods: list[str] = field(default_factory=lambda: list(METHODS),
                               metadata={"help": "extraction methods, tried in order"})
    fallback_to_thinking: bool = field(default=True, metadata={"help": "look in the thinking when the solution has no answer"})
    overwrite: bool = field(default=False, metadata={"help": "replace answers the input already has"})

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {', '.join(unknown)}; use {', '.join(METHODS)}")

    def columns_read(self) -> tuple[str, ...]:
        return ("thinking", "solution", "answer")

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        answers, how = [], []
        rows = batch.select("answer", "solution", "thinking").iter_rows()
        for existing, solution, thinking in rows:
            if existing and not self.overwrite:
                answers.append(existing)
                how.append("input")
                continue
            found, method = extract_answer(solution or "", self.methods)
            if found is None and self.fallback_to_thinking and thinking:
                found, method = extract_answer(thinking, self.methods)
                method = f"thinking:{method}" if method else None
            answers.append(found)
            how.append(method)
        return StepResult(batch.with_columns(
            pl.Series("answer", answers, dtype=pl.String), pl.Series("answer_method", how, dtype=pl.String)))
