"""Shortening: cut the thinking after the first concluded correct answer, keep the shortest correct trace, or rewrite.

``shorten`` writes ``shorten_method``, ``shorten_tokens_before`` / ``shorten_tokens_after``
(thinking + solution; the fast approximation or a named tokenizer), ``shorten_applied`` and
``shorten_note`` (why a row was left as it was). Methods:

- ``truncate_after_first_answer``: split the thinking into blank-line paragraphs; the first
  paragraph that reads as a conclusion ("so", "therefore", "the answer is", ...) and whose last
  stated expression math-verifies against ``reference_answer`` ends the thinking (plus
  ``keep_extra_steps`` paragraphs). The solution is kept; the shortened trace is re-verified
  (a wrong solution fails it) and the original is kept, with the reason, when that fails. Over-thinking after the answer (re-checks,
  "Wait, ...") is what this removes.
- ``shortest_correct``: among the traces of one problem that ``verify`` judged correct, keep the
  one with the fewest tokens (self-training for concise reasoning); the others, and problems
  with no correct trace, go to rejects with the reason.
- ``rewrite``: ask a model to rewrite the thinking to ``target_ratio`` of its length; keep the
  rewrite only when it still verifies (on its own) and is shorter, else the original with the why.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from curate.models import SamplingParams, get_backend
from curate.models.steps import (
    backend_counts,
    checked_model,
    fill,
    model_resources,
    snapshot,
)
from curate.step import REJECT_REASON, Step, StepResult, param
from curate.structure.segment import paragraph_starts, spans
from curate.structure.tokens import approx_expr, count_tokens

METHODS = ("truncate_after_first_answer", "shortest_correct", "rewrite")
CONCLUSION = re.compile(
    r"\b(?:so|therefore|thus|hence|the answer|final answer|answer is|we get|gives|equals|is equal to|"
    r"conclude|in conclusion|that means|which means)\b|\\boxed|=", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
TAIL = 300  # the closing part of a paragraph whose last expression is its stated result
REWRITE_PROMPT = (
    "Below is a problem and a long reasoning trace that reaches the correct answer. Rewrite the reasoning "
    "so that it is about {target_tokens} tokens long: keep every step needed to reach the answer, drop "
    "repetition, detours and re-checks, and end by stating the final answer in \\boxed{}. Output only the "
    "rewritten reasoning.\n\nProblem:\n{problem}\n\nReasoning:\n{thinking}"
)



def first_answer_end(thinking: str, reference: str, timeout_s: float = 10.0) -> tuple[int | None, str]:
    """End offset of the first paragraph that concludes with the reference answer, and a note.

    Paragraphs that read as a conclusion and hold every digit run of the reference (a cheap
    screen: an answer written with other digits, 1/2 for 0.5, is missed, never wrongly cut) are
    checked in order: anchored answers first (``\\boxed``, "final answer is"), else the last
    expression of the paragraph's tail.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    from curate.verify.math import (
        GOLD_CONFIG,
        PRED_CONFIG,
        PRED_LENIENT,
        _parse,
        gold_text,
        row_deadline,
    )

    try:
        with row_deadline(timeout_s):
            gold = parse(gold_text(reference), list(GOLD_CONFIG), extraction_mode="first_match",
                         parsing_timeout=None)
            if not gold:
                return None, "reference does not parse"
            digits = _DIGITS.findall(reference)
            for start, end in spans(paragraph_starts(thinking), len(thinking)):
                para = thinking[start:end]
                tail = para.rstrip()[-TAIL:]
                if not CONCLUSION.search(para) or any(d not in tail for d in digits):
                    continue  # cheap screens: a conclusion, holding every digit run of the reference
                pred = _parse(tail, PRED_CONFIG) or _parse(tail, PRED_LENIENT)
                if pred and verify(gold, pred, timeout_seconds=None):
                    return start + len(para.rstrip()), "ok"
    except TimeoutException:
        return None, f"timeout after {timeout_s:g}s looking for the answer"
    return None, "the reference answer is never concluded in the thinking"


@dataclass
class Shorten(Step):
    """Shorten traces: cut thinking after the first concluded correct answer, keep the shortest correct trace per problem, or rewrite with a model.

    Records original and new token counts; a shortened trace is re-verified and the original
    kept (with the reason in ``shorten_note``) when it no longer verifies.
    """

    name = "shorten"
    writes = {  # noqa: RUF012
        "shorten_method": pa.string(), "shorten_tokens_before": pa.int64(), "shorten_tokens_after": pa.int64(),
        "shorten_applied": pa.bool_(), "shorten_note": pa.string(),
    }

    method: str = param("truncate_after_first_answer", "truncate_after_first_answer | shortest_correct | rewrite")
    tokenizer: str | None = param(None, "count tokens with this tokenizer: qwen2, deepseek, a Hugging Face name or tokenizer.json (default: the fast approximation)")
    keep_extra_steps: int = param(0, "truncate: keep this many paragraphs after the one that concludes the answer")
    min_saving: float = param(0.05, "truncate/rewrite: apply only when the thinking gets at least this much shorter (share of its tokens)")
    timeout_s: float = param(10.0, "truncate: time limit per row for finding the answer")
    by: str = param("problem", "shortest_correct: column (whitespace-normalised) whose value groups traces of one problem")
    model: dict[str, Any] | None = param(None, "rewrite: {backend: transformers | openai | vllm, name_or_path: ..., ...}")
    target_ratio: float = param(0.5, "rewrite: target length as a share of the original thinking")
    max_tokens: int = param(8192, "rewrite: generation limit")
    temperature: float = param(0.0, "rewrite: sampling temperature")
    seed: int = param(0, "rewrite: sampling seed (part of the cache key)")
    prompt: str | None = param(None, "rewrite: prompt template with {problem}, {thinking}, {target_tokens}")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        checked_model(self.model, self.method, self.method == "rewrite")
        if self.keep_extra_steps < 0:
            raise ValueError(f"keep_extra_steps must be >= 0, got {self.keep_extra_steps}")
        if not 0 <= self.min_saving < 1:
            raise ValueError(f"min_saving must be in [0, 1), got {self.min_saving}")
        if not 0 < self.target_ratio < 1:
            raise ValueError(f"target_ratio must be in (0, 1), got {self.target_ratio}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature)
        self._best: dict[str, tuple[int, int]] = {}  # problem -> (tokens, global row) of its shortest correct
        self._correct_count: dict[str, int] = {}

    @property
    def needs_global_pass(self) -> bool:  # type: ignore[override]
        return self.method == "shortest_correct"

    def worker_resources(self) -> dict[str, float] | None:
        return model_resources(self.model) if self.method == "rewrite" else None

    def columns_read(self) -> tuple[str, ...]:
        if self.method == "shortest_correct":
            return tuple(dict.fromkeys((self.by, "thinking", "solution", "verify_correct")))
        return ("problem", "thinking", "solution", "reference_answer")

    # --- tokens --------------------------------------------------------------------------------
    def _tokens(self, texts: list[str]) -> list[int]:
        if self.tokenizer:
            return count_tokens(texts, self.tokenizer)
        return pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(approx_expr("t"))["t"].to_list()

    def _response_tokens(self, frame: pl.DataFrame) -> list[int]:
        thinking = frame["thinking"].fill_null("").to_list()
        solution = frame["solution"].fill_null("").to_list()
        return [a + b for a, b in zip(self._tokens(thinking), self._tokens(solution), strict=True)]

    # --- shortest_correct ------------------------------------------------------------------------
    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        best: dict[str, tuple[int, int]] = {}
        count: dict[str, int] = {}
        offset = 0
        for batch in batches:
            tokens = self._response_tokens(batch)
            keys = [_norm(k) for k in batch[self.by].cast(pl.String).to_list()]
            for k, (key, ok, n) in enumerate(zip(keys, batch["verify_correct"].to_list(), tokens, strict=True)):
                if ok is True:
                    count[key] = count.get(key, 0) + 1
                    if key not in best or n < best[key][0]:
                        best[key] = (n, offset + k)
            offset += batch.height
        self._best, self._correct_count = best, count

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        if self.method == "shortest_correct":
            return self._shortest(batch, offset)
        if self.method == "rewrite":
            return self._rewrite(batch)
        return self._truncate(batch)

    def _shortest(self, batch: pl.DataFrame, offset: int) -> StepResult:
        tokens = self._response_tokens(batch)
        keys = [_norm(k) for k in batch[self.by].cast(pl.String).to_list()]
        reasons: list[str | None] = []
        for k, (key, ok, n) in enumerate(zip(keys, batch["verify_correct"].to_list(), tokens, strict=True)):
            best = self._best.get(key)
            if best is None:
                reasons.append("no correct trace of this problem")
            elif best[1] == offset + k:
                reasons.append(None)
            elif ok is True:
                reasons.append(f"a shorter correct trace of this problem is kept ({best[0]} tokens vs {n})")
            else:
                reasons.append("not a correct trace ({}); a correct one of this problem is kept".format(
                    "unverifiable" if ok is None else "incorrect"))
        annotated = batch.with_columns(
            pl.lit("shortest_correct").alias("shorten_method"),
            pl.Series("shorten_tokens_before", tokens, dtype=pl.Int64),
            pl.Series("shorten_tokens_after", tokens, dtype=pl.Int64),
            pl.lit(False).alias("shorten_applied"),
            pl.Series("shorten_note", [None if r else f"shortest of {self._correct_count.get(key, 0)} correct"
                                       for r, key in zip(reasons, keys, strict=True)], dtype=pl.String),
        )
        return _split(annotated, reasons)

    # --- truncate_after_first_answer -----------------------------------------------------------
    def _cut(self, thinking: str, end: int) -> str:
        if self.keep_extra_steps:
            later = [s for s in paragraph_starts(thinking) if s > end]
            if len(later) > self.keep_extra_steps:
                end = later[self.keep_extra_steps] - 1
            else:
                end = len(thinking)
        return thinking[:end].rstrip()

    def _truncate(self, batch: pl.DataFrame) -> StepResult:
        thinking = batch["thinking"].fill_null("").to_list()
        solutions = batch["solution"].fill_null("").to_list()
        refs = batch["reference_answer"].to_list()
        new, notes = [], []
        for text, solution, ref in zip(thinking, solutions, refs, strict=True):
            if not ref or not str(ref).strip():
                new.append(None)
                notes.append("no reference answer")
                continue
            if not text.strip():
                new.append(None)
                notes.append("no thinking")
                continue
            if not solution.strip():
                new.append(None)
                notes.append("no solution to keep (a truncated trace)")
                continue
            end, note = first_answer_end(text, str(ref), self.timeout_s)
            if end is None:
                new.append(None)
                notes.append(note)
                continue
            cut = self._cut(text, end)
            # the shortened trace as a whole (cut thinking + kept solution) must still verify
            kept, note = _verified(cut, {"reference": ref, "thinking": cut, "solution": solution,
                                         "timeout_s": self.timeout_s}, "shortened trace")
            new.append(kept)
            notes.append(note)
        return self._finish(batch, new, notes, "truncate_after_first_answer")

    def _finish(self, batch: pl.DataFrame, new: list[str | None], notes: list[str | None], method: str,
                stats: dict[str, Any] | None = None) -> StepResult:
        """Swap in shortened thinking where it saves enough; record token counts and notes."""
        old = batch["thinking"].fill_null("").to_list()
        sol_tokens = self._tokens(batch["solution"].fill_null("").to_list())
        old_tokens = self._tokens(old)
        cand = [t if t is not None else "" for t in new]
        new_tokens = self._tokens(cand)
        out_thinking, applied, before, after = [], [], [], []
        for i, t in enumerate(new):
            before.append(old_tokens[i] + sol_tokens[i])
            if t is not None and new_tokens[i] <= (1 - self.min_saving) * old_tokens[i]:
                out_thinking.append(t)
                applied.append(True)
                after.append(new_tokens[i] + sol_tokens[i])
            else:
                if t is not None:
                    notes[i] = (f"saving below min_saving={self.min_saving:g} "
                                f"({old_tokens[i]} -> {new_tokens[i]} thinking tokens)")
                out_thinking.append(batch["thinking"][i])
                applied.append(False)
                after.append(before[-1])
        annotated = batch.with_columns(
            pl.Series("thinking", out_thinking, dtype=pl.String),
            pl.lit(method).alias("shorten_method"),
            pl.Series("shorten_tokens_before", before, dtype=pl.Int64),
            pl.Series("shorten_tokens_after", after, dtype=pl.Int64),
            pl.Series("shorten_applied", applied, dtype=pl.Boolean),
            pl.Series("shorten_note", notes, dtype=pl.String),
        )
        counts = {"shortened": sum(applied), "unchanged": len(applied) - sum(applied),
                  "tokens_before": sum(before), "tokens_after": sum(after)}
        return StepResult(annotated, None, {"shorten": counts, **(stats or {})})

    # --- rewrite ---------------------------------------------------------------------------------
    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, SamplingParams]]:
        if self.method != "rewrite":
            return []
        params = self._sampling()
        return [(p, params) for p in self._rewrite_prompts(batch)]

    def _sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)

    def _rewrite_prompts(self, batch: pl.DataFrame) -> list[str]:
        thinking = batch["thinking"].fill_null("").to_list()
        targets = [max(1, int(n * self.target_ratio)) for n in self._tokens(thinking)]
        template = self.prompt or REWRITE_PROMPT
        return [fill(template, problem=p, thinking=t, target_tokens=str(n))
                for p, t, n in zip(batch["problem"].to_list(), thinking, targets, strict=True)]

    def _rewrite(self, batch: pl.DataFrame) -> StepResult:
        assert self.model is not None
        backend = get_backend(self.model)
        before = snapshot(backend)
        done = backend.generate(self._rewrite_prompts(batch), self._sampling())
        new: list[str | None] = []
        notes: list[str | None] = []
        for comps, ref in zip(done, batch["reference_answer"].to_list(), strict=True):
            c = comps[0]
            if c.error:
                new.append(None)
                notes.append(f"rewrite failed: {c.error}")
                continue
            if c.finish_reason == "length":
                new.append(None)
                notes.append(f"rewrite hit max_tokens={self.max_tokens}")
                continue
            text = c.text.strip()
            if not ref:
                new.append(None)
                notes.append("no reference answer to re-verify the rewrite")
                continue
            kept, note = _verified(text, {"reference": ref, "thinking": text, "solution": None, "lenient": True,
                                          "timeout_s": self.timeout_s}, "rewrite")
            new.append(kept)
            notes.append(note)
        return self._finish(batch, new, notes, "rewrite", {"generation": backend_counts(backend, before)})


def _verified(text: str, task: dict[str, Any], what: str) -> tuple[str | None, str | None]:
    """(``text``, None) when the trace ``task`` describes verifies, else (None, why ``what`` is not kept)."""
    check = verify_math(task)
    if check["correct"] is True:
        return text, None
    return None, f"{what} does not verify: {check['error'] or 'answer ' + str(check['pred'])}"


def verify_math(task: dict[str, Any]) -> dict[str, Any]:
    """math-verify verdict of one trace (imported on first use: math-verify loads sympy)."""
    from curate.verify.math import verify_math as run

    return run(task)


def _norm(text: str | None) -> str:
    return " ".join((text or "").split())


def _split(annotated: pl.DataFrame, reasons: list[str | None]) -> StepResult:
    drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
    tagged = annotated.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
    return StepResult(annotated.filter(~drop), tagged.filter(drop))
