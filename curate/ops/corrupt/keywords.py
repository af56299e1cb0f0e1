"""Content corruption: remove reflection, by the paper's model rewrite or by deleting keyword sentences / phrases."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import polars as pl
import pyarrow as pa

from curate.ops.corrupt.base import (
    COMMON_COLUMNS,
    PAPER,
    SPAN,
    Corruption,
    choose,
    row_rng,
    scope_parts,
)
from curate.ops.structure.keywords import REASONING_KEYWORDS, keyword_pattern
from curate.step import StepResult

if TYPE_CHECKING:
    from curate.card.section import VariantStep

_WS = re.compile(r"\s*")
_PHRASE_TAIL = re.compile(r"[,:;]?[ \t]*")
_FILLER = re.compile(r"[ \t.,:;!?]*")
_LINE_REST = re.compile(r"[ \t.,:;!?]*(?=\n|\Z)")
_SENTENCE_GAP = re.compile(r"(?<=[.!?])[ \t]+|[ \t]*\n\s*")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: split after . ! ? followed by spaces, and at newlines."""
    out, pos = [], 0
    for m in _SENTENCE_GAP.finditer(text):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        out.append((pos, len(text)))
    return out


@dataclass
class RemoveKeywords(Corruption):
    """Remove reflection from traces: the paper's model rewrite, or deleting keyword sentences / phrases by rules.

    ``mode: model`` is the paper's method (NovaSky-AI/SkyThought, branch ``corrupt``,
    ``skythought/tools/tag_output.py``): each row is drawn with probability ``ratio`` and a model
    rewrites a drawn row's reasoning without its reflections (the passage reflected on, the
    reflection and its revision) and their transition phrases. The prompt is this toolkit's own,
    with the intent of the paper's ``remove_reflection_prompt`` (``util/prompts.py``); it gets the
    thinking only (the paper sent whole responses with their markers) and the solution stays as it
    was. A reply that failed, was cut at ``max_tokens`` or is empty leaves the row unchanged (counted
    in ``model_failed``). Replies are cached like every generation. ``mode: auto`` is ``model`` when
    a model is given (a recipe's ``model:`` block) and ``sentence`` otherwise.

    ``sentence`` and ``phrase`` are this toolkit's rule-based methods (a different method from the
    paper's, for offline use): units are the sentences holding at least one of ``keywords``, or each
    keyword occurrence (the phrase and a following comma / colon and spaces go; a sentence that
    started with it is re-capitalised). With ``per: unit`` ``ratio`` is the share of a row's units
    removed; with ``per: row`` (the paper's sampling) each row is drawn with probability ``ratio``
    and all its units go. A sentence that fills its line is removed with its line break, one inside
    a line with the space before it, so paragraphs stay separated. ``scope`` as in corrupt_digits
    (rule modes).
    """

    name = "remove_keywords"
    writes: ClassVar[dict[str, pa.DataType]] = {**COMMON_COLUMNS, "corrupt_spans": pa.list_(SPAN)}

    ratio: float = field(default=1.0, metadata={"help": "share of keyword units (per: unit) or of rows (per: row) changed, in [0, 1]"})
    mode: Literal["sentence", "phrase", "model", "auto"] = field(
        default="sentence", metadata={"help": "model: a model removes reflections (the paper's); sentence / phrase: "
                                              "delete keyword sentences / phrases by rules; auto: model when a model is given"})
    per: Literal["unit", "row"] = field(
        default="unit", metadata={"help": "unit: ratio is a share of each row's keyword units; row: each row is "
                                          "rewritten with probability ratio (the paper's; mode model needs it)"})
    keywords: list[str] = field(
        default_factory=lambda: list(REASONING_KEYWORDS),
        metadata={"help": "phrases to remove (case-insensitive, whole words); default reflection + backtracking lists"})
    sampling: Literal["exact", "bernoulli"] = field(
        default="exact", metadata={"help": "per unit: exact: round(ratio*units) units; bernoulli: each unit with probability ratio"})
    scope: Literal["response", "thinking"] = field(
        default="response", metadata={"help": "rule modes: response: thinking and solution; thinking: thinking only"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows left unchanged (not drawn, no keyword, model failed): keep, or reject"})
    model: dict[str, Any] | None = field(
        default=None, metadata={"help": "mode model / auto: {backend: transformers | openai | vllm, name_or_path: ...} "
                                        "(a recipe-level model: block fills it)"})
    prompt: str = field(default="", metadata={"help": "mode model: prompt with a {thinking} placeholder (empty: the built-in one)"})
    max_tokens: int = field(default=16384, metadata={"help": "mode model: tokens the rewrite may take (the paper's script used 16384)"})
    temperature: float = field(default=0.0, metadata={"help": "mode model: sampling temperature (the paper's script used 0.7)"})

    def __post_init__(self) -> None:
        self._check_common()
        if not self.keywords:
            raise ValueError("keywords must not be empty")
        if self.mode == "model" or (self.mode == "auto" and self.model is not None):
            from curate.models.steps import checked_model

            checked_model(self.model, "model", True)
            if self.per != "row":
                raise ValueError("mode model rewrites whole rows: set per: row (each row drawn with probability ratio)")
            if self.prompt and "{thinking}" not in self.prompt:
                raise ValueError("prompt must hold a {thinking} placeholder")
            if self.max_tokens < 1:
                raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @classmethod
    def card_what(cls, step: VariantStep) -> str:
        return step.describe(ran_as=sorted({k.split("+")[-1] for k in step.distinct("corrupt_kind")}))

    @classmethod
    def method_origin(cls, step: VariantStep) -> str:
        if any(":model" in k for k in step.distinct("corrupt_kind")):
            return f"{PAPER}'s method, a model rewrite (`tag_output.py`), with this toolkit's prompt"
        return "this toolkit's rule-based keyword deletion: a different method from the paper's model rewrite"

    def method(self) -> str:
        """The mode that runs: ``auto`` resolved."""
        if self.mode == "auto":
            return "model" if self.model is not None else "sentence"
        return self.mode

    def worker_resources(self) -> dict[str, float] | None:
        from curate.models.steps import model_resources

        return model_resources(self.model) if self.method() == "model" else None

    def columns_read(self) -> tuple[str, ...]:
        return ("id", "problem", "thinking", "solution")

    def kind(self) -> str:
        return f"{self.name}:{self.method()}" + (":per_row" if self.per == "row" and self.method() != "model" else "")

    def _drawn(self, row_id: str) -> tuple[random.Random, bool]:
        """The row's RNG and, per row, whether it is rewritten (probability ratio, as tag_output.py)."""
        rng = row_rng(self.name, self.seed, row_id)
        return rng, (self.per != "row" or rng.random() < self.ratio)

    def _units(self, text: str) -> list[tuple[int, int]]:
        """One span per unit: a keyword sentence, or a keyword phrase with its trailing , : ; and spaces."""
        pattern = keyword_pattern(tuple(self.keywords))
        if self.method() == "phrase":
            return [(m.start(), _PHRASE_TAIL.match(text, m.end()).end())  # type: ignore[union-attr]
                    for m in pattern.finditer(text)]
        hits = [m.start() for m in pattern.finditer(text)]
        if not hits:
            return []
        out, j = [], 0
        for s, e in sentence_spans(text):  # sentences holding a keyword start (both lists are sorted)
            while j < len(hits) and hits[j] < s:
                j += 1
            if j == len(hits):
                break
            if hits[j] < e:
                out.append((s, e))
        return out

    @staticmethod
    def _sentence_cuts(text: str, chosen: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """What to delete for the chosen sentences, so the text around them stays well spaced.

        Sentences with only whitespace between them form one block. A block that opens its line or
        is followed by more text on its line goes with the whitespace after it; one that ends a line
        it does not open goes with the spaces before it (the line break stays).
        """
        blocks: list[list[int]] = []
        for s, e in chosen:
            if blocks and not text[blocks[-1][1]:s].strip():
                blocks[-1][1] = e
            else:
                blocks.append([s, e])
        cuts = []
        for s, e in blocks:
            after = _WS.match(text, e).end()  # type: ignore[union-attr]
            opens_line = s == 0 or text[s - 1] == "\n"
            ends_line = after == len(text) or "\n" in text[e:after]
            if opens_line or not ends_line:
                cuts.append((s, after))
            else:
                b = s
                while b > 0 and text[b - 1] in " \t":
                    b -= 1
                cuts.append((b, e))
        return cuts

    @staticmethod
    def _phrase_cuts(text: str, chosen: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The chosen phrases; a line left holding nothing but punctuation goes whole, with its break."""
        blocks: list[list[int]] = []
        for s, e in chosen:
            if blocks and _FILLER.fullmatch(text, blocks[-1][1], s):
                blocks[-1][1] = e
            else:
                blocks.append([s, e])
        cuts = []
        for s, e in blocks:
            rest = _LINE_REST.match(text, e)
            if (s == 0 or text[s - 1] == "\n") and rest is not None:
                cuts.append((s, _WS.match(text, rest.end()).end()))  # type: ignore[union-attr]
            else:
                cuts.append((s, e))
        return cuts

    def _remove(self, text: str, chosen: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
        """The text without the chosen units, and the spans cut from it."""
        if not chosen:
            return text, []
        phrase = self.method() == "phrase"
        cuts = self._phrase_cuts(text, chosen) if phrase else self._sentence_cuts(text, chosen)
        out, last, cap = [], 0, False
        for s, e in cuts:
            piece = text[last:s]
            out.append(piece[:1].upper() + piece[1:] if cap else piece)
            b = s
            while b > 0 and text[b - 1] in " \t":
                b -= 1
            cap = phrase and ((cap and not piece) or b == 0 or text[b - 1] in ".!?\n")
            last = e
        piece = text[last:]
        out.append(piece[:1].upper() + piece[1:] if cap else piece)
        return "".join(out), cuts

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        if self.method() == "model":
            return self._apply_model(batch)
        parts = scope_parts(self.scope)
        new: dict[str, list[str]] = {p: [] for p in parts}
        units, touched, spans, reasons, edits, targets = [], [], [], [], [], []
        for row in batch.select("id", *[pl.col(p).fill_null("") for p in parts]).iter_rows(named=True):
            rng, drawn = self._drawn(row["id"])
            found = [(p, s, e) for p in parts for s, e in self._units(row[p])] if drawn else []
            hit = list(range(len(found))) if self.per == "row" else choose(rng, len(found), self.ratio, self.sampling)
            chosen = [found[i] for i in hit]
            row_edits: list[tuple[int, int, int]] = []
            for p in parts:
                text, cuts = self._remove(row[p], [(s, e) for q, s, e in chosen if q == p])
                new[p].append(text)
                if p == "thinking":
                    row_edits = [(s, e, 0) for s, e in cuts]
            units.append(len(found))
            touched.append(len(chosen))
            spans.append([{"part": p, "start": s, "end": e} for p, s, e in chosen])
            edits.append(row_edits)
            targets.append(drawn)
            reasons.append(None if chosen else f"{self.name}: " + (
                f"no keyword {self.method()} to remove" if drawn else "row not drawn (per row, ratio)"))
        return self._finish(batch, new, units, touched, {"corrupt_spans": spans}, reasons, edits=edits,
                            targets=targets)

    # --- mode model -----------------------------------------------------------------------------

    def _sampling(self) -> Any:
        from curate.models import SamplingParams

        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)

    def _model_prompts(self, batch: pl.DataFrame) -> tuple[list[int], list[str]]:
        """Rows drawn for a rewrite (with a thinking to rewrite) and their prompts."""
        rows, prompts = [], []
        template = self.prompt or REMOVE_REFLECTION_PROMPT
        for i, (row_id, text) in enumerate(batch.select("id", pl.col("thinking").fill_null("")).iter_rows()):
            if text.strip() and self._drawn(row_id)[1]:
                rows.append(i)
                prompts.append(template.replace("{thinking}", text))
        return rows, prompts

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, Any]]:
        if self.method() != "model":
            return []
        return [(p, self._sampling()) for p in self._model_prompts(batch)[1]]

    def _apply_model(self, batch: pl.DataFrame) -> StepResult:
        from curate.models import get_backend

        assert self.model is not None
        rows, prompts = self._model_prompts(batch)
        replies = get_backend(self.model).generate(prompts, self._sampling()) if rows else []
        thinking = batch["thinking"].fill_null("").to_list()
        new = list(thinking)
        drawn = [False] * batch.height
        reasons: list[str | None] = ["remove_keywords: row not drawn (per row, ratio)"] * batch.height
        failed = 0
        for i, reply in zip(rows, replies, strict=True):
            drawn[i] = True
            c = reply[0] if reply else None
            text = _strip_markers(c.text) if c is not None and c.ok else ""
            if c is None or not c.ok:
                reasons[i] = f"remove_keywords: model failed ({c.error if c is not None else 'no reply'})"
            elif c.finish_reason == "length":
                reasons[i] = f"remove_keywords: rewrite cut at max_tokens={self.max_tokens}"
            elif not text:
                reasons[i] = "remove_keywords: empty rewrite"
            elif text == thinking[i].strip():
                reasons[i] = "remove_keywords: the model returned the thinking unchanged"
            else:
                new[i], reasons[i] = text, None
                continue
            failed += 1
        touched = [1 if r is None else 0 for r in reasons]
        units = [1 if d else 0 for d in drawn]
        spans: list[list[dict[str, Any]]] = [[] for _ in range(batch.height)]
        return self._finish(batch, {"thinking": new}, units, touched, {"corrupt_spans": spans}, reasons,
                            targets=drawn, stats={"model_rewritten": sum(touched), "model_failed": failed})


#: The rewrite prompt of ``remove_keywords`` mode model: this toolkit's wording of the intent of the
#: paper's ``remove_reflection_prompt`` (NovaSky-AI/SkyThought, branch corrupt, skythought/tools/util/prompts.py).
REMOVE_REFLECTION_PROMPT = """Below is the reasoning part of a long chain-of-thought answer to a problem. \
It contains reflections: places where the writer stops to doubt, re-check or revise earlier work \
("Wait", "Let me check", "Hmm", "Alternatively", "But let me verify"...). Each reflection has a target \
(the earlier content it questions), the reflection itself, and often a revision that follows it.

Remove every reflection together with its target and its revision, and remove the transition phrases \
that introduce them, so that the reasoning proceeds straight forward. Copy everything else exactly, word \
for word; do not add, summarise, explain or solve anything. Reply with the edited reasoning only.

Reasoning:
{thinking}"""


def _strip_markers(text: str) -> str:
    """A rewrite without thinking markers a model may echo back."""
    for m in ("<|begin_of_thought|>", "<|end_of_thought|>", "<think>", "</think>"):
        text = text.replace(m, "")
    return text.strip()
