"""Difficulty grading: a grader model's pass rate, a judge model's rubric score, or free proxies.

``grade_difficulty`` writes ``difficulty_score`` (higher = harder, on the method's own scale) and
``difficulty_level`` (1 + the number of ``level_edges`` at or below the score) plus the method's
own columns:

- ``pass_rate``: ``n`` samples per problem from a grader model, each checked by the ``verify``
  step's checker (math-verify for math); unverifiable samples are left out of the mean, as
  open-r1 does. Score = 1 - pass rate. ``keep_pass_rate: [lo, hi]`` keeps the strict open band
  lo < rate < hi (open-r1 keeps (0.1, 0.6) or (0.2, 0.8)); otherwise select with ``filter``.
- ``judge``: a rubric prompt, the raw judgement kept. ``rubric: difficulty`` asks for 1-10 (as
  OpenThoughts and DeepScaleR rate problems); ``rubric: omnithought`` asks for OmniThought's two
  0-9 scores of a trace, reasoning verbosity and cognitive difficulty (score = cognitive).
- ``proxy``: no model: the teacher's thinking length in tokens (the score) and its step count.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from statistics import mean
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
    verify_samples,
)
from curate.ops.verify import Verify
from curate.step import REJECT_REASON, Step, StepResult, param
from curate.structure.segment import MODES, step_starts
from curate.structure.tokens import approx_expr, count_tokens

METHODS = ("pass_rate", "judge", "proxy")
RUBRICS = ("difficulty", "omnithought")
SOLVE_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
JUDGE_PROMPTS = {
    "difficulty": (
        "You will be given a competition math problem. Rate how difficult it is to solve on a scale "
        "from 1 (a routine one-step exercise) to 10 (among the hardest olympiad problems), comparing "
        "it with AMC 8 (1-2), AMC 10/12 (2-5), AIME (5-7) and USAMO/IMO (7-10).\n\n"
        "Problem:\n{problem}\n\nExplain briefly, then end with a line of the form\nDifficulty: <1-10>"
    ),
    "omnithought": (
        "Rate the reasoning trace below on two scales from 0 to 9.\n"
        "Reasoning Verbosity (RV): 0 = states the answer almost directly, 9 = very long, with many "
        "detours, re-checks and repetitions.\n"
        "Cognitive Difficulty (CD): 0 = elementary knowledge and one step, 9 = deep expertise and "
        "long chains of non-obvious steps.\n\nProblem:\n{problem}\n\nReasoning:\n{thinking}\n\n"
        "End with two lines of the form\nReasoning Verbosity: <0-9>\nCognitive Difficulty: <0-9>"
    ),
}
DEFAULT_EDGES = {"pass_rate": [0.2, 0.5, 0.8], "judge": [4.0, 7.0], "proxy": [2000.0, 8000.0]}
JUDGE_THINKING_CHARS = 12000  # the judge sees the head and tail of a longer trace

_NUM = r"\**\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)"
_DIFF = re.compile(r"difficulty(?:\s+(?:score|rating|level))?" + _NUM, re.IGNORECASE)
_RV = re.compile(r"(?:reasoning\s+verbosity|\bRV\b)" + _NUM, re.IGNORECASE)
_CD = re.compile(r"(?:cognitive\s+difficulty|\bCD\b)" + _NUM, re.IGNORECASE)
_BARE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\**\s*$")


def _last(pattern: re.Pattern[str], text: str, lo: float, hi: float) -> float | None:
    """The last in-range number the pattern captures (a rubric restated in the answer comes first)."""
    found = [float(m.group(1)) for m in pattern.finditer(text)]
    found = [v for v in found if lo <= v <= hi]
    return found[-1] if found else None


def parse_judgement(text: str, rubric: str) -> dict[str, float] | None:
    """Scores from a judge's answer, or None when it states none in range."""
    if rubric == "difficulty":
        score = _last(_DIFF, text, 1, 10)
        if score is None:  # "... I'd say 6." / "6/10" on the last line
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            m = _BARE.search(lines[-1]) if lines else None
            score = float(m.group(1)) if m and 1 <= float(m.group(1)) <= 10 else None
        return None if score is None else {"score": score}
    rv, cd = _last(_RV, text, 0, 9), _last(_CD, text, 0, 9)
    return None if rv is None or cd is None else {"verbosity": rv, "cognitive": cd}



@dataclass
class GradeDifficulty(Step):
    """Grade problem difficulty by a grader model's pass rate, a judge's rubric score, or cost-free proxies (thinking length, steps).

    Writes ``difficulty_score`` (higher = harder) and ``difficulty_level`` buckets; pass rate
    samples are verified like ``verify`` does, unverifiable samples excluded. Completions are
    cached on disk, so a re-run or resumed run costs nothing for work already done.
    """

    name = "grade_difficulty"
    writes = {  # noqa: RUF012 - the union over methods; columns_written() gives the method's own
        "difficulty_method": pa.string(), "difficulty_score": pa.float64(), "difficulty_level": pa.int64(),
        "difficulty_thinking_tokens": pa.int64(), "difficulty_steps": pa.int64(),
        "difficulty_pass_rate": pa.float64(), "difficulty_samples": pa.list_(pa.float64()),
        "difficulty_grader": pa.string(), "difficulty_n": pa.int64(), "difficulty_sample_tokens": pa.float64(),
        "difficulty_judge_raw": pa.large_string(), "difficulty_verbosity": pa.float64(),
        "difficulty_cognitive": pa.float64(),
    }

    method: str = param("proxy", "pass_rate | judge | proxy")
    model: dict[str, Any] | None = param(None, "grader/judge model: {backend: transformers | openai | vllm, name_or_path: ..., ...} (a recipe-level model: block fills it)")
    n: int | None = param(None, "samples per problem (default 8 for pass_rate, 1 for judge; judge scores are averaged)")
    temperature: float | None = param(None, "sampling temperature (default 0.7 for pass_rate, 0 for judge)")
    top_p: float = param(1.0, "nucleus sampling")
    max_tokens: int = param(4096, "generation limit per sample (judge: 1024 is plenty)")
    seed: int = param(0, "sampling seed (part of the cache key)")
    prompt: str | None = param(None, "prompt template; {problem} (and {thinking} for judge) are filled in. Default: the solve prompt, or the rubric's")
    rubric: str = param("difficulty", "judge rubric: difficulty (1-10) | omnithought (verbosity and cognitive difficulty, 0-9)")
    level_edges: list[float] | None = param(None, "ascending cut points on difficulty_score for difficulty_level (defaults: pass_rate [0.2, 0.5, 0.8] on 1-rate, judge [4, 7], proxy [2000, 8000] tokens)")
    keep_pass_rate: list[float] | None = param(None, "pass_rate: keep only lo < rate < hi (strict open band, e.g. [0.1, 0.6]); others are rejected")
    tokenizer: str | None = param(None, "proxy: count thinking tokens with this tokenizer: qwen2, deepseek, a Hugging Face name or tokenizer.json (default: the fast approximation)")
    step_mode: str = param("transition", "proxy: step segmentation (transition | paragraph)")
    verify_timeout_s: float = param(5.0, "pass_rate: per-sample verification limit")
    verify_workers: int | None = param(None, "pass_rate: verifier processes (default: the CPUs; 0 = inline)")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        checked_model(self.model, self.method, self.method != "proxy")
        if self.rubric not in RUBRICS:
            raise ValueError(f"rubric must be one of {', '.join(RUBRICS)}, got {self.rubric!r}")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.step_mode not in MODES:
            raise ValueError(f"step_mode must be one of {', '.join(MODES)}, got {self.step_mode!r}")
        edges = self.level_edges
        if edges is not None and any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"level_edges must be strictly ascending, got {edges}")
        band = self.keep_pass_rate
        if band is not None:
            if self.method != "pass_rate":
                raise ValueError("keep_pass_rate applies to method pass_rate only (use filter on difficulty_score otherwise)")
            if len(band) != 2 or not 0 <= band[0] < band[1] <= 1:
                raise ValueError(f"keep_pass_rate must be [lo, hi] with 0 <= lo < hi <= 1, got {band}")
        self.sampling()  # validates max_tokens, temperature, top_p
        self._verifier: Verify | None = None

    # --- declarations ----------------------------------------------------------------------------
    def worker_resources(self) -> dict[str, float] | None:
        return model_resources(self.model) if self.method != "proxy" else None

    def columns_read(self) -> tuple[str, ...]:
        if self.method == "proxy":
            return ("thinking",)
        if self.method == "judge":
            return ("problem", "thinking", "solution") if self.rubric == "omnithought" else ("problem",)
        return Verify(workers=0).columns_read()

    def columns_written(self) -> dict[str, pa.DataType]:
        names = ["difficulty_method", "difficulty_score", "difficulty_level"]
        names += {"proxy": ["difficulty_thinking_tokens", "difficulty_steps"],
                  "pass_rate": ["difficulty_pass_rate", "difficulty_samples", "difficulty_grader", "difficulty_n",
                                "difficulty_sample_tokens"],
                  "judge": ["difficulty_grader", "difficulty_n", "difficulty_judge_raw"]
                  + (["difficulty_verbosity", "difficulty_cognitive"] if self.rubric == "omnithought" else [])}[self.method]
        return {k: self.writes[k] for k in names}

    def sampling(self) -> SamplingParams:
        judge = self.method == "judge"
        n = self.n if self.n is not None else (1 if judge else 8)
        temperature = self.temperature if self.temperature is not None else (0.0 if judge else 0.7)
        return SamplingParams(max_tokens=self.max_tokens, temperature=temperature, top_p=self.top_p, n=n, seed=self.seed)

    def _edges(self) -> list[float]:
        return list(self.level_edges) if self.level_edges is not None else DEFAULT_EDGES[self.method]

    def _levels(self, scores: list[float | None]) -> pl.Series:
        edges = self._edges()
        return pl.Series("difficulty_level", [None if s is None else 1 + bisect_right(edges, s) for s in scores],
                         dtype=pl.Int64)

    # --- work ------------------------------------------------------------------------------------
    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        if self.method == "proxy":
            return self._proxy(batch)
        if batch.height == 0:
            empty = batch.with_columns(*[pl.lit(None, dtype=pl.from_arrow(pa.array([], t)).dtype).alias(c)
                                         for c, t in self.columns_written().items()])
            return StepResult(empty, None)
        return self._pass_rate(batch) if self.method == "pass_rate" else self._judge(batch)

    def _proxy(self, batch: pl.DataFrame) -> StepResult:
        thinking = batch["thinking"].fill_null("")
        if self.tokenizer:
            tokens = pl.Series(count_tokens(thinking.to_list(), self.tokenizer), dtype=pl.Int64)
        else:
            tokens = batch.select(approx_expr("thinking"))["thinking"]
        steps = pl.Series([len(step_starts(t, self.step_mode)) for t in thinking.to_list()], dtype=pl.Int64)
        scores = tokens.cast(pl.Float64)
        out = batch.with_columns(
            pl.lit("proxy").alias("difficulty_method"), scores.alias("difficulty_score"),
            self._levels(scores.to_list()), tokens.alias("difficulty_thinking_tokens"), steps.alias("difficulty_steps"))
        return StepResult(out, None)

    def _generate(self, prompts: list[str]) -> tuple[list[list[Any]], dict[str, int]]:
        assert self.model is not None
        backend = get_backend(self.model)
        before = snapshot(backend)
        done = backend.generate(prompts, self.sampling())
        return done, backend_counts(backend, before)

    def _prompts(self, batch: pl.DataFrame) -> tuple[list[int], list[str]]:
        """The rows that ask the model and their prompts: pass_rate, the rows with something to
        verify against; judge, every row."""
        if self.method == "pass_rate":
            refs = batch["reference_answer"].to_list()
            tests = batch["test_cases"].to_list()
            todo = [i for i, (r, t) in enumerate(zip(refs, tests, strict=True)) if (r and str(r).strip()) or t]
            template = self.prompt or SOLVE_PROMPT
            return todo, [fill(template, problem=p) for p in batch["problem"][todo].to_list()]
        template = self.prompt or JUDGE_PROMPTS[self.rubric]
        def column(name: str) -> list[str | None]:
            return batch[name].to_list() if name in batch.columns else [None] * batch.height

        # the trace judged: its reasoning, or its solution when it has no separate reasoning
        traces = [t or s for t, s in zip(column("thinking"), column("solution"), strict=True)]
        return list(range(batch.height)), [fill(template, problem=p, thinking=_clip(t))
                                           for p, t in zip(batch["problem"].to_list(), traces, strict=True)]

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, SamplingParams]]:
        if self.method == "proxy" or batch.height == 0:
            return []
        return [(p, self.sampling()) for p in self._prompts(batch)[1]]

    def _pass_rate(self, batch: pl.DataFrame) -> StepResult:
        refs = batch["reference_answer"].to_list()
        todo, prompts = self._prompts(batch)
        done, gen_stats = self._generate(prompts) if todo else ([], {})
        reasons: list[str | None] = [None] * batch.height
        texts: list[list[str]] = [[] for _ in range(batch.height)]
        tokens: list[float | None] = [None] * batch.height
        for i, comps in zip(todo, done, strict=True):
            bad = [c.error for c in comps if c.error]
            if bad:
                reasons[i] = f"generation failed: {bad[0]}"
                continue
            texts[i] = [c.text for c in comps]
            tokens[i] = mean(c.completion_tokens for c in comps)
        if self._verifier is None:
            self._verifier = Verify(domain="auto", keep="all", timeout_s=self.verify_timeout_s, workers=self.verify_workers)
        # rows sharing a problem and reference (several traces of one problem) share their samples:
        # verify each distinct (prompt, reference) once
        first: dict[tuple[str, str | None], int] = {}
        owner = list(range(batch.height))
        for i, p in zip(todo, prompts, strict=True):
            if texts[i]:
                owner[i] = first.setdefault((p, refs[i]), i)
        unique = [texts[i] if owner[i] == i else [] for i in range(batch.height)]
        checked = verify_samples(self._verifier, batch, unique)
        verdicts = [checked[owner[i]] if texts[i] else [] for i in range(batch.height)]
        rates: list[float | None] = []
        samples: list[list[float | None] | None] = []
        counts = {"correct": 0, "incorrect": 0, "unverifiable": 0}
        for vs in verdicts:
            known = [float(v) for v in vs if v is not None]
            for v in vs:
                counts[{True: "correct", False: "incorrect", None: "unverifiable"}[v]] += 1
            samples.append([None if v is None else float(v) for v in vs] if vs else None)
            rates.append(mean(known) if known else None)
        band = self.keep_pass_rate
        if band is not None:
            lo, hi = band
            for i, r in enumerate(rates):
                if reasons[i] is not None:
                    continue
                if r is None:
                    reasons[i] = "no verifiable sample (or no reference): pass rate unknown"
                elif not lo < r < hi:
                    reasons[i] = f"pass rate {r:.3g} outside ({lo:g}, {hi:g})"
        scores = [None if r is None else 1.0 - r for r in rates]
        n = self.sampling().n
        annotated = batch.with_columns(
            pl.lit("pass_rate").alias("difficulty_method"),
            pl.Series("difficulty_score", scores, dtype=pl.Float64),
            self._levels(scores),
            pl.Series("difficulty_pass_rate", rates, dtype=pl.Float64),
            pl.Series("difficulty_samples", samples, dtype=pl.List(pl.Float64)),
            pl.lit(model_label(self.model or {})).alias("difficulty_grader"),
            pl.lit(n, dtype=pl.Int64).alias("difficulty_n"),
            pl.Series("difficulty_sample_tokens", tokens, dtype=pl.Float64),
        )
        return _split(annotated, reasons, {"samples": counts, "generation": gen_stats})

    def _judge(self, batch: pl.DataFrame) -> StepResult:
        done, gen_stats = self._generate(self._prompts(batch)[1])
        reasons: list[str | None] = [None] * batch.height
        raw, score, verb, cog = [], [], [], []
        for i, comps in enumerate(done):
            bad = [c.error for c in comps if c.error]
            raw.append(None if bad else "\n\n-----\n\n".join(c.text for c in comps))
            parsed = [] if bad else [p for p in (parse_judgement(c.text, self.rubric) for c in comps) if p]
            if bad:
                reasons[i] = f"generation failed: {bad[0]}"
            elif not parsed:
                tail = " ".join(comps[-1].text.split())[-80:]
                reasons[i] = f"judge gave no {self.rubric} score: ...{tail}"
            if self.rubric == "omnithought":
                v = mean(p["verbosity"] for p in parsed) if parsed else None
                c = mean(p["cognitive"] for p in parsed) if parsed else None
                verb.append(v)
                cog.append(c)
                score.append(c)
            else:
                score.append(mean(p["score"] for p in parsed) if parsed else None)
        cols = [
            pl.lit("judge").alias("difficulty_method"),
            pl.Series("difficulty_score", score, dtype=pl.Float64),
            self._levels(score),
            pl.lit(model_label(self.model or {})).alias("difficulty_grader"),
            pl.lit(self.sampling().n, dtype=pl.Int64).alias("difficulty_n"),
            pl.Series("difficulty_judge_raw", raw, dtype=pl.String),
        ]
        if self.rubric == "omnithought":
            cols += [pl.Series("difficulty_verbosity", verb, dtype=pl.Float64),
                     pl.Series("difficulty_cognitive", cog, dtype=pl.Float64)]
        return _split(batch.with_columns(cols), reasons, {"generation": gen_stats})


def _clip(text: str | None) -> str:
    text = text or ""
    if len(text) <= JUDGE_THINKING_CHARS:
        return text
    half = JUDGE_THINKING_CHARS // 2
    return text[:half] + "\n\n[... middle of the trace omitted ...]\n\n" + text[-half:]


def _split(annotated: pl.DataFrame, reasons: list[str | None], stats: dict[str, Any]) -> StepResult:
    drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
    if not drop.any():
        return StepResult(annotated, None, stats)
    tagged = annotated.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
    return StepResult(annotated.filter(~drop), tagged.filter(drop), stats)
