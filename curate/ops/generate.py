"""Teacher generation: ``n`` samples per problem from a model, one output row per sample.

The front half of distillation (Sky-T1, OpenThoughts, s1 all sample a teacher, then keep the
samples that verify): each problem row becomes ``n`` trace rows, the response split into
thinking and solution whatever markers the teacher uses, with the teacher, the sampling
settings, the finish reason and the tokens in and out recorded per row. Completions go through
the generation backends (``curate.models``), so they are cached on disk: a killed or re-run
stage asks the model only for what it has not answered yet. A failed request's samples are
rejected with the reason (not cached, so a re-run retries them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from curate.errors import PipelineError
from curate.io.markers import split_response
from curate.models import Completion, SamplingParams, get_backend, model_label
from curate.models.steps import (
    backend_counts,
    checked_model,
    fill,
    model_resources,
    snapshot,
)
from curate.ops.difficulty import SOLVE_PROMPT
from curate.schema import TRACE_SCHEMA, trace_id
from curate.step import REJECT_REASON, Step, StepResult, param


class BudgetExhausted(PipelineError):
    """The step's token budget is spent: the run stops; a re-run resumes from the cache."""



_CORE = ("id", "source_id", "thinking", "solution", "answer", "teacher", "finish_reason", "thinking_closed")


@dataclass
class Generate(Step):
    """Sample ``n`` responses per problem from a teacher model; one output row per sample (thinking, solution, finish reason, tokens, teacher and sampling recorded).

    Expands rows: a batch of k problems returns k * n rows (kept + rejected), which the funnel
    records as ``rows_out``. Completions are cached and requested ``chunk`` prompts at a time, so
    a killed run regenerates at most one chunk; ``budget_tokens`` stops the run cleanly once this
    many completion tokens have been generated (cache hits are free), and a re-run resumes.
    """

    name = "generate"
    reads = ("problem", "source_id")
    writes = {  # noqa: RUF012
        **{c: TRACE_SCHEMA.field(c).type for c in _CORE},
        "generate_sample": pa.int64(), "generate_model": pa.string(), "generate_sampling": pa.string(),
        "generate_prompt_tokens": pa.int64(), "generate_completion_tokens": pa.int64(),
    }

    model: dict[str, Any] | None = param(None, "teacher: {backend: transformers | openai | vllm, name_or_path: ..., ...} (a recipe-level model: block fills it)")
    n: int = param(1, "samples per problem (one output row each)")
    temperature: float = param(0.7, "sampling temperature")
    top_p: float = param(1.0, "nucleus sampling")
    max_tokens: int = param(4096, "generation limit per sample (a sample that hits it has finish_reason length)")
    seed: int = param(0, "sampling seed (part of the cache key; sample j of a vLLM request uses seed + j)")
    prompt: str | None = param(None, "prompt template with {problem}; default: the problem and 'put your final answer within \\boxed{}'")
    chunk: int = param(64, "prompts per backend call: each call's completions are cached when it returns")
    budget_tokens: int | None = param(None, "stop the run (cleanly, resumable) once this step has generated this many completion tokens in this process")

    def __post_init__(self) -> None:
        checked_model(self.model, "generate", True)
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ValueError(f"budget_tokens must be >= 1, got {self.budget_tokens}")
        self.sampling()  # validates the sampling settings
        self._spent = 0

    # --- declarations ----------------------------------------------------------------------------
    def output_rows(self, rows_in: int) -> int:
        return rows_in * self.n

    def worker_resources(self) -> dict[str, float] | None:
        return model_resources(self.model)

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              n=self.n, seed=self.seed)

    def prompts(self, batch: pl.DataFrame) -> list[str]:
        template = self.prompt or SOLVE_PROMPT
        return [fill(template, problem=p) for p in batch["problem"].to_list()]

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, SamplingParams]]:
        params = self.sampling()
        return [(p, params) for p in self.prompts(batch)]

    # --- work ------------------------------------------------------------------------------------
    def _generate(self, prompts: list[str]) -> tuple[list[list[Completion]], dict[str, int]]:
        assert self.model is not None
        backend = get_backend(self.model)
        before = snapshot(backend)
        tokens = backend.stats.prompt_tokens, backend.stats.completion_tokens
        params = self.sampling()
        done: list[list[Completion]] = []
        for start in range(0, len(prompts), self.chunk):
            if self.budget_tokens is not None and self._spent >= self.budget_tokens:
                raise BudgetExhausted(
                    f"step 'generate': token budget spent ({self._spent} completion tokens generated, "
                    f"budget_tokens={self.budget_tokens}); what was generated is cached and the finished "
                    "parts are kept: run again (with a larger budget or none) to resume")
            spent = backend.stats.completion_tokens
            done += backend.generate(prompts[start:start + self.chunk], params)
            self._spent += backend.stats.completion_tokens - spent
        counts = backend_counts(backend, before)
        counts["prompt_tokens"] = backend.stats.prompt_tokens - tokens[0]
        counts["completion_tokens"] = backend.stats.completion_tokens - tokens[1]
        return done, counts

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        assert self.model is not None
        done, counts = self._generate(self.prompts(batch)) if batch.height else ([], {})
        rows = [i for i in range(batch.height) for _ in range(self.n)]
        out = batch[rows] if rows else batch.clear()
        problems = out["problem"].to_list()
        sids = out["source_id"].to_list()
        label, sampling = model_label(self.model), json.dumps(self.sampling().as_dict(), sort_keys=True)
        cols: dict[str, list[Any]] = {c: [] for c in ("id", "source_id", "thinking", "solution", "finish_reason",
                                                      "thinking_closed", "generate_sample",
                                                      "generate_prompt_tokens", "generate_completion_tokens")}
        reasons: list[str | None] = []
        for i in range(batch.height):
            for j, c in enumerate(done[i]):
                r = i * self.n + j
                split = split_response(c.text)
                cols["id"].append(trace_id(problems[r], split.thinking, split.solution))
                cols["source_id"].append(f"{sids[r] if sids[r] is not None else offset + i}:s{j}")
                cols["thinking"].append(split.thinking)
                cols["solution"].append(split.solution)
                cols["finish_reason"].append(None if c.error else c.finish_reason)
                cols["thinking_closed"].append(split.closed)
                cols["generate_sample"].append(j)
                cols["generate_prompt_tokens"].append(c.prompt_tokens)
                cols["generate_completion_tokens"].append(c.completion_tokens)
                reasons.append(f"generation failed: {c.error}" if c.error else None)
        types = {c: pl.from_arrow(pa.array([], self.writes[c])).dtype for c in cols}  # type: ignore[union-attr]
        out = out.with_columns(
            *[pl.Series(c, v, dtype=types[c]) for c, v in cols.items()],
            pl.lit(None, dtype=pl.String).alias("answer"),
            pl.lit(label).alias("teacher"), pl.lit(label).alias("generate_model"),
            pl.lit(sampling).alias("generate_sampling"),
        )
        drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
        tagged = out.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
        stats = {"generation": counts} if counts else None
        return StepResult(out.filter(~drop), tagged.filter(drop), stats)
