"""LIMO's reasoning-chain quality rubric: elaboration, self-verification, exploration, granularity.

LIMO (arXiv 2502.03387) keeps, of the hard problems left after its difficulty filter, the
reasoning chains that score best on four traits: elaborated reasoning, self-verification, an
exploratory approach, and adaptive granularity. Its selection code is not public
(GAIR-NLP/LIMO @ 2284c6a holds evaluation and training only), so both scorers here are this
toolkit's reading of those four traits:

- ``method: rules`` (offline): elaboration = thinking tokens / ``elaboration_tokens`` (capped at
  1); self-verification = reflection keywords per 1k tokens / ``keyword_rate``; exploration =
  backtracking / alternative-approach keywords per 1k tokens / ``keyword_rate``; granularity =
  reasoning steps per 1k tokens / ``step_rate`` (each capped at 1; keywords and steps are
  ``curate.structure``'s lists and segmenter).
- ``method: model``: a judge model rates each trait 0-10 (the raw answer kept); each is scaled to 0-1.

``rubric_score`` is the ``weights``-weighted mean of the four (default equal weights: the paper
weighs them but its exact weights were not available here). ``select_top`` then keeps the best.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from curate.models import SamplingParams, get_backend, model_label
from curate.models.steps import (
    backend_counts,
    checked_model,
    fill,
    model_resources,
    snapshot,
)
from curate.ops.difficulty import JUDGE_THINKING_CHARS
from curate.step import REJECT_REASON, Step, StepResult, param
from curate.structure.keywords import BACKTRACK_KEYWORDS, REFLECTION_KEYWORDS, count_keywords_expr
from curate.structure.segment import step_starts
from curate.structure.tokens import approx_expr

TRAITS = ("elaboration", "self_verification", "exploration", "granularity")
METHODS = ("rules", "model")
EXPLORATION_EXTRA = ("what if", "suppose", "maybe", "perhaps", "let's consider", "let me consider", "consider")
JUDGE_PROMPT = (
    "Rate the quality of the reasoning chain below on four traits, each from 0 (absent) to 10 (excellent).\n"
    "Elaboration: every logical step is worked out, with no premature conclusions.\n"
    "Self-verification: intermediate results are checked and the final answer is validated.\n"
    "Exploration: several approaches or hypotheses are considered before committing.\n"
    "Granularity: the level of detail adapts to the difficulty of each step.\n\n"
    "Problem:\n{problem}\n\nReasoning:\n{thinking}\n\n"
    "End with four lines of the form\nElaboration: <0-10>\nSelf-verification: <0-10>\nExploration: <0-10>\n"
    "Granularity: <0-10>"
)
_PATTERNS = {t: re.compile(t.replace("_", r"[\s_-]*") + r"\**\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
             for t in TRAITS}


def parse_rubric(text: str) -> dict[str, float] | None:
    """The four 0-10 ratings a judge stated (the last of each, in range), scaled to 0-1; None if any is missing."""
    out = {}
    for trait, pattern in _PATTERNS.items():
        found = [float(m.group(1)) for m in pattern.finditer(text) if 0 <= float(m.group(1)) <= 10]
        if not found:
            return None
        out[trait] = found[-1] / 10
    return out



def _clip(text: str | None) -> str:
    text = text or ""
    if len(text) <= JUDGE_THINKING_CHARS:
        return text
    half = JUDGE_THINKING_CHARS // 2
    return text[:half] + "\n\n[...]\n\n" + text[-half:]


@dataclass
class ScoreReasoning(Step):
    """Score each reasoning chain on LIMO's four traits (elaboration, self-verification, exploration, granularity), by offline rules or a judge model.

    The traits are LIMO's (arXiv 2502.03387; its scoring code is not public); both scorers and
    the default equal weights are this toolkit's reading. Writes ``rubric_<trait>`` (0-1 each), their weighted mean ``rubric_score`` and
    ``rubric_method``; a judge's raw answer goes to ``rubric_raw`` and an answer without all four
    ratings is rejected with the reason.
    """

    name = "score_reasoning"
    writes = {  # noqa: RUF012
        **{f"rubric_{t}": pa.float64() for t in TRAITS}, "rubric_score": pa.float64(), "rubric_method": pa.string(),
        "rubric_raw": pa.large_string(),
    }

    method: str = param("rules", "rules (offline proxies) | model (a judge rates each trait 0-10)")
    model: dict[str, Any] | None = param(None, "judge: {backend: transformers | openai | vllm, name_or_path: ..., ...}")
    weights: dict[str, float] | None = param(None, "weight per trait (elaboration, self_verification, exploration, granularity); default equal")
    elaboration_tokens: int = param(8000, "rules: thinking tokens that score full elaboration")
    keyword_rate: float = param(20.0, "rules: keywords per 1k tokens that score full self-verification / exploration")
    step_rate: float = param(10.0, "rules: reasoning steps per 1k tokens that score full granularity")
    prompt: str | None = param(None, "model: prompt template with {problem} and {thinking}")
    max_tokens: int = param(1024, "model: generation limit")
    seed: int = param(0, "model: sampling seed (part of the cache key)")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        checked_model(self.model, self.method, self.method == "model")
        bad = set(self.weights or {}) - set(TRAITS)
        if bad:
            raise ValueError(f"weights: unknown trait(s) {', '.join(sorted(bad))}; use {', '.join(TRAITS)}")
        if self.weights is not None and (any(w < 0 for w in self.weights.values()) or not sum(self.weights.values())):
            raise ValueError(f"weights must be >= 0 and not all 0, got {self.weights}")
        for name in ("elaboration_tokens", "keyword_rate", "step_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        self._sampling()

    def columns_read(self) -> tuple[str, ...]:
        return ("problem", "thinking")

    def columns_written(self) -> dict[str, pa.DataType]:
        cols = dict(self.writes)
        if self.method == "rules":
            cols.pop("rubric_raw")
        return cols

    def worker_resources(self) -> dict[str, float] | None:
        return model_resources(self.model) if self.method == "model" else None

    def _sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=0.0, seed=self.seed)

    def _weights(self) -> dict[str, float]:
        w = {t: (self.weights or {}).get(t, 0.0 if self.weights else 1.0) for t in TRAITS}
        total = sum(w.values())
        return {t: v / total for t, v in w.items()}

    def _score(self, traits: dict[str, pl.Series]) -> pl.Series:
        w = self._weights()
        return sum((traits[t] * w[t] for t in TRAITS), pl.Series([0.0] * len(traits[TRAITS[0]]))).alias("rubric_score")

    def prompts(self, batch: pl.DataFrame) -> list[str]:
        template = self.prompt or JUDGE_PROMPT
        return [fill(template, problem=p, thinking=_clip(t))
                for p, t in zip(batch["problem"].to_list(), batch["thinking"].to_list(), strict=True)]

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, SamplingParams]]:
        if self.method != "model":
            return []
        return [(p, self._sampling()) for p in self.prompts(batch)]

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        return self._rules(batch) if self.method == "rules" else self._judge(batch)

    def _rules(self, batch: pl.DataFrame) -> StepResult:
        thinking = pl.col("thinking").fill_null("")
        counts = batch.select(approx_expr(thinking).alias("tokens"),
                              count_keywords_expr(thinking, REFLECTION_KEYWORDS).alias("reflect"),
                              count_keywords_expr(thinking, BACKTRACK_KEYWORDS + EXPLORATION_EXTRA).alias("explore"))
        steps = pl.Series([len(step_starts(t or "")) for t in batch["thinking"].to_list()], dtype=pl.Float64)
        per_k = counts["tokens"].cast(pl.Float64).clip(lower_bound=1) / 1000

        def capped(values: pl.Series) -> pl.Series:
            return values.cast(pl.Float64).clip(upper_bound=1.0)

        traits = {
            "elaboration": capped(counts["tokens"] / self.elaboration_tokens),
            "self_verification": capped(counts["reflect"] / per_k / self.keyword_rate),
            "exploration": capped(counts["explore"] / per_k / self.keyword_rate),
            "granularity": capped(steps / per_k / self.step_rate),
        }
        out = batch.with_columns(*[v.alias(f"rubric_{t}") for t, v in traits.items()], self._score(traits),
                                 pl.lit("rules").alias("rubric_method"))
        return StepResult(out, None)

    def _judge(self, batch: pl.DataFrame) -> StepResult:
        assert self.model is not None
        backend = get_backend(self.model)
        before = snapshot(backend)
        done = backend.generate(self.prompts(batch), self._sampling()) if batch.height else []
        raw, parsed, reasons = [], [], []
        for comps in done:
            c = comps[0]
            raw.append(c.text)
            scores = None if c.error else parse_rubric(c.text)
            parsed.append(scores or {})
            reasons.append(f"judge failed: {c.error}" if c.error else
                           None if scores else "the judge's answer lacks one of the four ratings")
        traits = {t: pl.Series([p.get(t) for p in parsed], dtype=pl.Float64) for t in TRAITS}
        out = batch.with_columns(*[v.alias(f"rubric_{t}") for t, v in traits.items()], self._score(traits),
                                 pl.lit(model_label(self.model)).alias("rubric_method"),
                                 pl.Series("rubric_raw", raw, dtype=pl.String))
        drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
        tagged = out.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
        return StepResult(out.filter(~drop), tagged.filter(drop), {"generation": backend_counts(backend, before)})
