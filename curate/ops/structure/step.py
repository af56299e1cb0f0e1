"""Structure of a trace: reasoning steps (segment_steps) and a structure profile (profile)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from curate.ops.structure.keywords import (
    BACKTRACK_KEYWORDS,
    REFLECTION_KEYWORDS,
    count_keywords_expr,
)
from curate.ops.structure.segment import (
    INLINE_TRANSITIONS,
    TRANSITIONS,
    paragraph_starts,
    spans,
    step_starts,
)
from curate.ops.structure.tokens import approx_expr, count_tokens, method_name
from curate.step import Step, StepResult

STEPS_COLUMNS: dict[str, pa.DataType] = {
    "steps_start": pa.list_(pa.int32()),
    "steps_end": pa.list_(pa.int32()),
    "steps_count": pa.int32(),
    "steps_method": pa.string(),
}


@dataclass
class Segmentation:
    """The segmentation parameters shared by segment_steps, profile and the structural corruptions."""

    mode: Literal["transition", "paragraph", "model"] = field(
        default="transition",
        metadata={"help": "transition: blank-line paragraphs merged into steps that open with a transition "
                          "word (Wait, Alternatively, But, Hmm, Let me check, Therefore...); paragraph: every "
                          "blank-line paragraph is a step; model (segment_steps only): a model marks the paragraphs "
                          "that open a new step"})
    transitions: list[str] = field(
        default_factory=lambda: list(TRANSITIONS),
        metadata={"help": "phrases that open a new step at the start of a paragraph (transition mode)"})
    split_inline: bool = field(
        default=True, metadata={"help": "also start a step at a sentence inside a paragraph that opens with "
                                        "one of inline_transitions (transition mode)"})
    inline_transitions: list[str] = field(
        default_factory=lambda: list(INLINE_TRANSITIONS),
        metadata={"help": "phrases that open a step mid-paragraph, after a sentence end"})
    min_step_chars: int = field(
        default=0, metadata={"help": "merge a step shorter than this (stripped) into the step before it"})
    min_steps: int = field(
        default=1, metadata={"help": "transition mode: a thinking that yields fewer steps (it never opens a "
                                     "paragraph with a transition word) is split by paragraphs instead"})

    def _check_segmentation(self) -> None:
        if self.mode == "model":
            raise ValueError("mode 'model' is segment_steps' own (it asks a model once per trace); run "
                             "segment_steps with mode: model, or use mode: transition or paragraph here")
        if self.min_step_chars < 0:
            raise ValueError(f"min_step_chars must be >= 0, got {self.min_step_chars}")
        if self.min_steps < 1:
            raise ValueError(f"min_steps must be >= 1, got {self.min_steps}")
        if self.mode == "transition" and not self.transitions:
            raise ValueError("transitions must not be empty in transition mode")

    def starts(self, text: str) -> list[int]:
        return step_starts(text, self.mode, self.transitions, self.split_inline, self.inline_transitions,
                           self.min_step_chars)

    def segment(self, text: str) -> tuple[list[int], str]:
        """Step starts of ``text`` and the method that made them (``min_steps``' paragraph fallback named)."""
        starts = self.starts(text)
        if self.mode == "transition" and len(starts) < self.min_steps:
            paragraphs = step_starts(text, "paragraph", min_step_chars=self.min_step_chars)
            if len(paragraphs) > len(starts):
                return paragraphs, f"{self.method()}->rule:paragraph"
        return starts, self.method()

    def method(self) -> str:
        if self.mode == "paragraph":
            return "rule:paragraph"
        return "rule:transition+inline" if self.split_inline else "rule:transition"


def resegment(batch: pl.DataFrame) -> pl.DataFrame:
    """Recompute steps_* columns (when the batch has them) after the thinking text changed.

    Uses the default rules of the mode recorded in ``steps_method``; a row segmented otherwise (by a
    model) gets the transition rules, and ``steps_method`` says so.
    """
    if "steps_start" not in batch.columns:
        return batch
    starts_col, ends_col, counts, used = [], [], [], []
    methods = batch["steps_method"].to_list() if "steps_method" in batch.columns else [None] * batch.height
    for text, method in zip(batch["thinking"].fill_null("").to_list(), methods, strict=True):
        paragraph = method is not None and method.endswith("rule:paragraph")
        seg = Segmentation(mode="paragraph" if paragraph else "transition",
                           split_inline=method != "rule:transition")
        s = seg.starts(text)
        sp = spans(s, len(text))
        starts_col.append([a for a, _ in sp])
        ends_col.append([b for _, b in sp])
        counts.append(len(sp))
        used.append(seg.method())
    return batch.with_columns(
        pl.Series("steps_start", starts_col, dtype=pl.List(pl.Int32)),
        pl.Series("steps_end", ends_col, dtype=pl.List(pl.Int32)),
        pl.Series("steps_count", counts, dtype=pl.Int32),
        pl.Series("steps_method", used, dtype=pl.String),
    )


SPLIT_PROMPT = """The reasoning below is split into numbered paragraphs. A new reasoning step starts where the \
writer begins a new thought: backtracking, checking or verifying earlier work, reflecting, trying an \
alternative, or drawing a conclusion. Reply with the numbers of the paragraphs that start a new step, \
comma-separated (for example: 1, 4, 7). Paragraph 1 always starts a step.

{paragraphs}

Paragraphs that start a new step:"""
_PARAGRAPH_PREVIEW = 400  # characters of each paragraph shown to the model


@dataclass
class SegmentSteps(Segmentation, Step):
    """Split the thinking block into reasoning steps and store their character offsets.

    Rule-based: blank-line paragraphs, merged into steps that open with a transition word ("Wait",
    "Alternatively", "But", "Hmm", "Let me check", "Therefore"...), or every paragraph a step.
    ``mode: model`` asks a model (a recipe's ``model:`` block) which paragraphs open a new step,
    as the seed paper split steps with an LLM; an answer that names no valid paragraph falls back
    to the transition rules, recorded in ``steps_method``. ``thinking[steps_start[i]:steps_end[i]]``
    is step i; the steps tile the thinking exactly, so joining them gives it back.
    """

    name = "segment_steps"
    writes = STEPS_COLUMNS

    model: dict[str, Any] | None = field(
        default=None, metadata={"help": "mode model: {backend: transformers | openai | vllm, name_or_path: ...} "
                                        "(a recipe-level model: block fills it)"})
    max_tokens: int = field(default=128, metadata={"help": "mode model: tokens the model may answer with"})

    def __post_init__(self) -> None:
        if self.mode == "model":
            from curate.models.steps import checked_model

            checked_model(self.model, "model", True)
            if self.min_step_chars < 0:
                raise ValueError(f"min_step_chars must be >= 0, got {self.min_step_chars}")
        else:
            self._check_segmentation()

    def worker_resources(self) -> dict[str, float] | None:
        from curate.models.steps import model_resources

        return model_resources(self.model) if self.mode == "model" else None

    def columns_read(self) -> tuple[str, ...]:
        return ("thinking",)

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        texts = batch["thinking"].fill_null("").to_list()
        if self.mode == "model":
            all_starts, methods, stats = self._model_starts(texts)
        else:
            made = [self.segment(t) for t in texts]
            all_starts, methods, stats = [m[0] for m in made], [m[1] for m in made], None
        starts_col, ends_col, counts = [], [], []
        for text, starts in zip(texts, all_starts, strict=True):
            sp = spans(starts, len(text))
            starts_col.append([a for a, _ in sp])
            ends_col.append([b for _, b in sp])
            counts.append(len(sp))
        return StepResult(batch.with_columns(
            pl.Series("steps_start", starts_col, dtype=pl.List(pl.Int32)),
            pl.Series("steps_end", ends_col, dtype=pl.List(pl.Int32)),
            pl.Series("steps_count", counts, dtype=pl.Int32),
            pl.Series("steps_method", methods, dtype=pl.String),
        ), None, stats)

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, Any]]:
        if self.mode != "model":
            return []
        _, _, prompts = self._model_prompts(batch["thinking"].fill_null("").to_list())
        return [(p, self._sampling()) for p in prompts]

    def _sampling(self) -> Any:
        from curate.models import SamplingParams

        return SamplingParams(max_tokens=self.max_tokens)

    def _model_prompts(self, texts: list[str]) -> tuple[list[list[int]], list[int], list[str]]:
        """Each text's paragraph starts, the texts with more than one (the ones asked), their prompts."""
        paragraphs = [paragraph_starts(t) if t.strip() else [] for t in texts]
        asks = [i for i, p in enumerate(paragraphs) if len(p) > 1]
        return paragraphs, asks, [SPLIT_PROMPT.replace("{paragraphs}", _numbered(texts[i], paragraphs[i])) for i in asks]

    def _model_starts(self, texts: list[str]) -> tuple[list[list[int]], list[str], dict[str, Any]]:
        """Ask the model which paragraphs open a step; rules where its answer is unusable."""
        from curate.models import get_backend, model_label

        assert self.model is not None
        paragraphs, asks, prompts = self._model_prompts(texts)
        replies = get_backend(self.model).generate(prompts, self._sampling()) if asks else []
        rules = Segmentation(min_step_chars=self.min_step_chars)
        label = f"model:{model_label(self.model)}"
        starts = [p[:1] for p in paragraphs]
        methods = [label] * len(texts)
        fallback = 0
        for i, reply in zip(asks, replies, strict=True):
            chosen = _chosen_paragraphs(reply[0].text if reply and reply[0].ok else "", len(paragraphs[i]))
            if chosen is None:
                starts[i], methods[i] = rules.starts(texts[i]), f"{label}->{rules.method()}"
                fallback += 1
            else:
                starts[i] = [paragraphs[i][k] for k in chosen]
        return starts, methods, {"model_segmented": len(asks) - fallback, "rule_fallback": fallback}


def _numbered(text: str, starts: list[int]) -> str:
    out = []
    for k, (a, b) in enumerate(spans(starts, len(text)), 1):
        body = " ".join(text[a:b].split())
        out.append(f"[{k}] {body[:_PARAGRAPH_PREVIEW]}{' ...' if len(body) > _PARAGRAPH_PREVIEW else ''}")
    return "\n\n".join(out)


def _chosen_paragraphs(reply: str, n: int) -> list[int] | None:
    """0-based paragraph indices that open a step (always the first), or None if the reply names none."""
    picked = {int(m) - 1 for m in re.findall(r"\d+", reply) if 1 <= int(m) <= n}
    if not picked:
        return None
    return sorted(picked | {0})


@dataclass
class Profile(Segmentation, Step):
    """Structure profile: steps, reflection / backtracking keywords (total and per 1k tokens), step length, tokens.

    Keywords are counted in the ``keywords_in`` text (default the whole response, thinking +
    solution, as the paper's Table 4 counts "keywords per response"); per-1k rates divide by that
    text's token count. Steps are the thinking's (see segment_steps); mean step length is in
    characters and tokens. Tokens come from ``tokenizer`` (a Hugging Face name or a local
    tokenizer.json) when given, else a fast approximation; ``profile_token_method`` records which.
    Table 4 in one command: ``curate run`` with ``[profile]`` then
    ``df.group_by("source").agg(pl.col("profile_keywords").mean())``.
    """

    name = "profile"
    writes = {
        "profile_steps": pa.int32(),
        "profile_reflection_keywords": pa.int32(),
        "profile_backtrack_keywords": pa.int32(),
        "profile_keywords": pa.int32(),
        "profile_reflection_per_1k": pa.float64(),
        "profile_backtrack_per_1k": pa.float64(),
        "profile_keywords_per_1k": pa.float64(),
        "profile_mean_step_chars": pa.float64(),
        "profile_mean_step_tokens": pa.float64(),
        "profile_thinking_tokens": pa.int64(),
        "profile_solution_tokens": pa.int64(),
        "profile_token_method": pa.string(),
    }

    tokenizer: str | None = field(
        default=None, metadata={"help": "qwen2, deepseek (offline), a Hugging Face tokenizer name or tokenizer.json for exact token "
                                        "counts; unset: a fast approximation (method approx:v1)"})
    keywords_in: Literal["response", "thinking"] = field(
        default="response", metadata={"help": "where keywords are counted: thinking + solution, or thinking only"})
    reflection_keywords: list[str] = field(
        default_factory=lambda: list(REFLECTION_KEYWORDS),
        metadata={"help": "self-verification / reflection phrases (case-insensitive, whole words)"})
    backtrack_keywords: list[str] = field(
        default_factory=lambda: list(BACKTRACK_KEYWORDS),
        metadata={"help": "backtracking phrases (case-insensitive, whole words)"})

    def __post_init__(self) -> None:
        self._check_segmentation()
        if self.tokenizer is not None and not self.tokenizer.strip():
            raise ValueError("tokenizer must be a name or path, or unset")

    def columns_read(self) -> tuple[str, ...]:
        return ("thinking", "solution")

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        thinking = batch["thinking"].fill_null("").to_list()
        solution = batch["solution"].fill_null("").to_list()
        if self.tokenizer:
            t_tok = count_tokens(thinking, self.tokenizer)
            s_tok = count_tokens(solution, self.tokenizer)
        else:
            toks = batch.select(approx_expr("thinking").alias("t"), approx_expr("solution").alias("s"))
            t_tok, s_tok = toks["t"].to_list(), toks["s"].to_list()
        steps, mean_chars = [], []
        for th in thinking:
            n = len(self.starts(th))
            steps.append(n)
            mean_chars.append(len(th) / n if n else None)
        text = pl.col("thinking").fill_null("")
        if self.keywords_in == "response":
            text = text + "\n\n" + pl.col("solution").fill_null("")
        kw = batch.select(count_keywords_expr(text, self.reflection_keywords).alias("r"),
                          count_keywords_expr(text, self.backtrack_keywords).alias("b"))
        frame = pl.DataFrame({
            "profile_steps": pl.Series(steps, dtype=pl.Int32),
            "profile_reflection_keywords": kw["r"],
            "profile_backtrack_keywords": kw["b"],
            "profile_thinking_tokens": pl.Series(t_tok, dtype=pl.Int64),
            "profile_solution_tokens": pl.Series(s_tok, dtype=pl.Int64),
            "profile_mean_step_chars": pl.Series(mean_chars, dtype=pl.Float64),
        })
        denom = pl.col("profile_thinking_tokens") + (
            pl.col("profile_solution_tokens") if self.keywords_in == "response" else 0)
        per_1k = lambda c: pl.when(denom > 0).then(pl.col(c) * 1000.0 / denom).otherwise(None)  # noqa: E731
        frame = frame.with_columns(
            (pl.col("profile_reflection_keywords") + pl.col("profile_backtrack_keywords")).alias("profile_keywords"),
        ).with_columns(
            per_1k("profile_reflection_keywords").alias("profile_reflection_per_1k"),
            per_1k("profile_backtrack_keywords").alias("profile_backtrack_per_1k"),
            per_1k("profile_keywords").alias("profile_keywords_per_1k"),
            pl.when(pl.col("profile_steps") > 0)
              .then(pl.col("profile_thinking_tokens") / pl.col("profile_steps")).otherwise(None)
              .alias("profile_mean_step_tokens"),
            pl.lit(method_name(self.tokenizer), dtype=pl.String).alias("profile_token_method"),
        )
        out = batch.with_columns(frame.select(list(self.writes)).get_columns())
        return StepResult(out)
