"""Reformat: a model rewrites a raw trace into a target layout, kept only when the answer still verifies.

Sky-T1 had GPT-4o-mini convert QwQ's unstructured responses into its two sections
(``<|begin_of_thought|>`` ... ``<|end_of_thought|>`` then ``<|begin_of_solution|>`` ...
``<|end_of_solution|>``), copying the thinking word for word, and then rejection-sampled the
converted data: NovaSky-AI/SkyThought @ 9a750c7 (branch corrupt), ``skythought/tools/convert_format.py``
(system prompt "You are a solution format convertor.", temperature 0.7) with the instruction in
``skythought/tools/util/prompts.py`` (``convert_prompt``), and the order in ``skythought/tools/README.md``.
The default prompts here restate that instruction without its worked example (pass your own with
``prompt``). A rewrite is kept when it has the layout's markers, closes its thinking, and its
answer verifies against the reference (the check ``shorten``'s rewrite uses); otherwise the row
is rejected with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from curate.io.markers import join_response, split_response
from curate.models import SamplingParams, get_backend
from curate.models.steps import (
    backend_counts,
    checked_model,
    fill,
    model_resources,
    snapshot,
)
from curate.ops.shorten import _verified
from curate.step import REJECT_REASON, Step, StepResult, param

LAYOUTS = {"sky-t1": "sky-t1", "think": "think"}  # layout -> the style split_response reports
PROMPTS = {
    "sky-t1": (
        "Below is a solution written in an unstructured way. Convert it into two sections:\n"
        "<|begin_of_thought|>\n(the thought process: copy the thinking of the original solution exactly)\n"
        "<|end_of_thought|>\n<|begin_of_solution|>\n(the final, precise and clear solution; only one "
        "solution in this section, and if it is a coding problem only one code block)\n<|end_of_solution|>\n"
        "Copy almost all of the original content word by word; only split it into the two sections, and "
        "include the four markers <|begin_of_thought|>, <|end_of_thought|>, <|begin_of_solution|> and "
        "<|end_of_solution|> explicitly.\n\nProblem:\n{problem}\n\nContent to be converted:\n{content}"
    ),
    "think": (
        "Below is a solution written in an unstructured way. Convert it into two parts: the reasoning, copied "
        "word by word inside <think> and </think>, then after </think> the final, precise and clear solution "
        "ending with the final answer in \\boxed{}. Do not add or drop reasoning.\n\n"
        "Problem:\n{problem}\n\nContent to be converted:\n{content}"
    ),
}



@dataclass
class Reformat(Step):
    """Rewrite each trace into a target layout (Sky-T1's thought/solution markers or <think>) with a model, keeping a rewrite only when its answer still verifies.

    Sky-T1's procedure (GPT-4o-mini converting QwQ's responses; NovaSky-AI/SkyThought
    skythought/tools/convert_format.py, branch corrupt); the default prompts restate its
    instruction. The new thinking and solution replace the old; ``reformat_layout`` and the tokens
    of the rewrite are recorded. A rewrite that fails, hits ``max_tokens``, lacks the layout's markers or
    no longer verifies is rejected with the reason.
    """

    name = "reformat"
    reads = ("problem", "thinking", "solution", "reference_answer", "thinking_closed")
    writes = {  # noqa: RUF012
        "thinking_closed": pa.bool_(), "reformat_layout": pa.string(), "reformat_model": pa.string(),
        "reformat_prompt_tokens": pa.int64(), "reformat_completion_tokens": pa.int64(),
    }

    model: dict[str, Any] | None = param(None, "rewriter: {backend: transformers | openai | vllm, name_or_path: ..., ...} (Sky-T1 used gpt-4o-mini)")
    layout: str = param("sky-t1", "sky-t1 (<|begin_of_thought|> ... <|end_of_solution|>) | think (<think> ... </think> solution)")
    prompt: str | None = param(None, "prompt template with {problem} and {content} (the raw trace)")
    max_tokens: int = param(16384, "generation limit (Sky-T1: 16384)")
    temperature: float = param(0.7, "sampling temperature (Sky-T1: 0.7)")
    seed: int = param(0, "sampling seed (part of the cache key)")
    timeout_s: float = param(10.0, "time limit per row for verifying the rewrite's answer")

    def __post_init__(self) -> None:
        checked_model(self.model, "reformat", True)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        self._sampling()

    def worker_resources(self) -> dict[str, float] | None:
        return model_resources(self.model)

    def _sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)

    def _prompts(self, batch: pl.DataFrame) -> list[str]:
        template = self.prompt or PROMPTS[self.layout]
        raw = [join_response(t or "", s or "", "none") for t, s in
               zip(batch["thinking"].to_list(), batch["solution"].to_list(), strict=True)]
        return [fill(template, problem=p, content=c) for p, c in zip(batch["problem"].to_list(), raw, strict=True)]

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, SamplingParams]]:
        params = self._sampling()
        return [(p, params) for p in self._prompts(batch)]

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        assert self.model is not None
        backend = get_backend(self.model)
        before = snapshot(backend)
        done = backend.generate(self._prompts(batch), self._sampling()) if batch.height else []
        thinking, solution, reasons, tin, tout = [], [], [], [], []
        for comps, ref, old_t, old_s in zip(done, batch["reference_answer"].to_list(), batch["thinking"].to_list(),
                                            batch["solution"].to_list(), strict=True):
            c = comps[0]
            tin.append(c.prompt_tokens)
            tout.append(c.completion_tokens)
            split = split_response(c.text)
            why = self._check(c, split, ref)
            if why is None:
                text = join_response(split.thinking, split.solution, "none")
                _, why = _verified(text, {"reference": ref, "thinking": split.thinking, "solution": split.solution,
                                          "timeout_s": self.timeout_s}, "reformatted trace")
            reasons.append(why)
            keep = why is None
            thinking.append(split.thinking if keep else old_t)
            solution.append(split.solution if keep else old_s)
        annotated = batch.with_columns(
            pl.Series("thinking", thinking, dtype=pl.String), pl.Series("solution", solution, dtype=pl.String),
            pl.Series("thinking_closed", [True if r is None else c for r, c in
                                          zip(reasons, batch["thinking_closed"].to_list(), strict=True)],
                      dtype=pl.Boolean),
            pl.lit(self.layout).alias("reformat_layout"),
            pl.lit(f"{self.model['backend']}:{self.model['name_or_path']}").alias("reformat_model"),
            pl.Series("reformat_prompt_tokens", tin, dtype=pl.Int64),
            pl.Series("reformat_completion_tokens", tout, dtype=pl.Int64),
        )
        drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
        tagged = annotated.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
        stats = {"generation": backend_counts(backend, before),
                 "reformat": {"kept": int((~drop).sum()), "rejected": int(drop.sum())}}
        return StepResult(annotated.filter(~drop), tagged.filter(drop), stats)

    def _check(self, c: Any, split: Any, reference: str | None) -> str | None:
        """Why a rewrite cannot be kept before its answer is checked, or None."""
        if c.error:
            return f"reformat failed: {c.error}"
        if c.finish_reason == "length":
            return f"reformat hit max_tokens={self.max_tokens}"
        if split.style != LAYOUTS[self.layout] or not split.closed:
            return f"rewrite lacks the {self.layout} layout (its thinking block is missing or never closed)"
        if not split.solution.strip():
            return "rewrite has no solution section"
        if not reference or not str(reference).strip():
            return "no reference answer to re-verify the rewrite"
        return None
