"""Content corruption: give each trace a plausible wrong final answer, replaced consistently."""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import polars as pl
import pyarrow as pa
import xxhash

from curate.answers import (
    DECIMAL,
    FRACTION,
    INTEGER,
    SLASH_FRACTION,
    as_number,
    extract_answer,
    normalise_answer,
    same_answer,
)
from curate.ops.corrupt.base import COMMON_COLUMNS, SPAN, Corruption, row_rng
from curate.step import StepResult

if TYPE_CHECKING:
    from curate.card.section import VariantStep

_CHOICE = re.compile(r"^(\(?)([A-E])(\)?)$")
_TEXT_CHOICE = re.compile(r"^\\text\{\s*\(?([A-E])\)?\s*\}$")
_LEAD = re.compile(r"^(-?\d+(?:\.\d+)?)(\s*[^\d.,/\s].*)$", re.DOTALL)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_ANSWER_WORD = re.compile(r"\banswer\b", re.IGNORECASE)


def _perturb_int(rng: random.Random, n: int) -> int:
    if abs(n) >= 10 and rng.random() < 0.5:
        d = max(1, abs(n) * rng.randint(5, 30) // 100)  # integers only: answers can be huge
    else:
        d = rng.randint(1, 9) if abs(n) >= 10 else rng.randint(1, 3)
    w = n + rng.choice((-1, 1)) * d
    if n >= 0 > w:
        w = n + d
    return w if w != n else n + 1


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the content of every \\boxed{...} / \\fbox{...} with balanced braces."""
    out = []
    for m in _BOX.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.end(), i - 1))
    return out


@dataclass
class CorruptWrongAnswer(Corruption):
    """Give each trace a plausible wrong final answer, replaced consistently in \\boxed{}, solution and conclusion.

    ``mode: synthetic``: numbers are perturbed (integers by a few units or 5-30%, decimals in their
    last places, fractions in the numerator, a leading number in answers like ``30^\\circ``, choice
    letters to another letter); symbolic answers borrow another problem's answer from a pool built in
    a global pass. The wrong value replaces every ``\\boxed{}`` holding the answer (thinking and
    solution) and the standalone occurrences in the last ``conclusion_paragraphs`` paragraphs of the
    solution and of the thinking, and in every paragraph that states an answer ("the final answer is ..."). A simple check (canonical strings, numbers as fractions) then
    confirms the re-extracted answer differs from the original and from ``reference_answer``; rows
    where it does not, or with no final answer, are rejected by default (``on_untouched``).
    The paper's own way (``teacher`` mode: keep the teacher's traces whose answer verified
    *incorrect*) is not a corruption: run ``verify`` and keep the incorrect rows
    (``verify: {keep: incorrect}``, or ``filter: {where: {verify_correct: {eq: false}}}``).
    """

    name = "corrupt_wrong_answer"
    needs_global_pass = True
    writes: ClassVar[dict[str, pa.DataType]] = {
        **COMMON_COLUMNS,
        "answer": pa.large_string(),
        "corrupt_answer_from": pa.string(),
        "corrupt_answer_to": pa.string(),
        "corrupt_answer_method": pa.string(),
        "corrupt_spans": pa.list_(SPAN),
    }

    mode: Literal["synthetic", "teacher"] = field(
        default="synthetic", metadata={"help": "synthetic (this step); teacher is verify + keep incorrect, not this step"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    conclusion_paragraphs: int = field(
        default=3, metadata={"help": "trailing paragraphs of solution and thinking where plain occurrences are replaced"})
    pool_size: int = field(default=10_000, metadata={"help": "answers kept from the global pass for borrowing"})
    on_untouched: Literal["keep", "reject"] = field(
        default="reject", metadata={"help": "rows that could not be given a wrong answer: reject (default) or keep unchanged"})

    def __post_init__(self) -> None:
        if self.mode == "teacher":
            raise ValueError("mode teacher is the paper's way: keep teacher traces whose answer verified incorrect. "
                             "Use the verify step and keep the incorrect rows (verify: {keep: incorrect}, or "
                             "filter: {where: {verify_correct: {eq: false}}}); corrupt_wrong_answer is synthetic only")
        if self.conclusion_paragraphs < 0:
            raise ValueError(f"conclusion_paragraphs must be >= 0, got {self.conclusion_paragraphs}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        self._check_common()
        self._symbolic: list[str] = []
        self._any: list[str] = []
        self._fitted = False

    @classmethod
    def method_origin(cls, step: VariantStep) -> str:
        return "this toolkit's synthetic wrong answers (the paper used the teacher's incorrect traces)"

    def columns_read(self) -> tuple[str, ...]:
        return ("id", "problem", "thinking", "solution", "answer", "reference_answer")

    def kind(self) -> str:
        return f"{self.name}:{self.mode}"

    @staticmethod
    def _final_answer(answer: str | None, solution: str, thinking: str) -> str | None:
        if answer and answer.strip():
            return answer.strip()
        for text in (solution, thinking):
            found, _ = extract_answer(text, ("boxed", "final_answer", "answer_is"))
            if found:
                return found
        if solution:  # no marker anywhere: the solution's last number (not a truncated thinking's)
            found, _ = extract_answer(solution, ("last_number",))
            if found:
                return found
        return None

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        heap: list[tuple[int, str]] = []
        seen: set[str] = set()
        for batch in batches:
            for ans, sol, th in batch.select("answer", pl.col("solution").fill_null(""),
                                             pl.col("thinking").fill_null("")).iter_rows():
                a = self._final_answer(ans, sol, th)
                norm = normalise_answer(a)
                if not norm or norm in seen or len(norm) > 200:
                    continue
                seen.add(norm)
                item = (-xxhash.xxh3_64_intdigest(f"{self.seed}\x00{norm}".encode()), a)  # type: ignore[arg-type]
                if len(heap) < self.pool_size:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        pool = sorted(a for _, a in heap)
        self._any = pool
        self._symbolic = [a for a in pool if as_number(normalise_answer(a)) is None]
        self._fitted = True

    def wrong_value(self, rng: random.Random, a: str, reference: str | None) -> tuple[str, str] | None:
        """(wrong value, method) for answer ``a``, or None when no plausible one is found."""
        s = a.strip()
        for _ in range(20):
            got = self._perturb(rng, s)
            if got is None:
                break
            if not same_answer(got[0], a) and not same_answer(got[0], reference):
                return got
        pool = self._symbolic or self._any
        for _ in range(min(64, 4 * len(pool))):  # random draws: the pool is large, clashes are rare
            b = pool[rng.randrange(len(pool))]
            if not same_answer(b, a) and not same_answer(b, reference):
                return b, "borrow"
        return None

    @staticmethod
    def _perturb(rng: random.Random, s: str) -> tuple[str, str] | None:
        if m := _CHOICE.match(s):
            return m.group(1) + rng.choice([c for c in "ABCDE" if c != m.group(2)]) + m.group(3), "choice"
        if m := _TEXT_CHOICE.match(s):
            new = rng.choice([c for c in "ABCDE" if c != m.group(1)])
            return s[:m.start(1)] + new + s[m.end(1):], "choice"
        if INTEGER.match(s):
            return str(_perturb_int(rng, int(s.replace(",", "")))), "perturb_int"
        if DECIMAL.match(s):
            whole, frac = s.lstrip("-").split(".")
            scaled = int(whole + frac) * (-1 if s.startswith("-") else 1)
            w = _perturb_int(rng, scaled)
            digits = str(abs(w)).rjust(len(frac) + 1, "0")
            return ("-" if w < 0 else "") + digits[:-len(frac)] + "." + digits[-len(frac):], "perturb_decimal"
        if m := (FRACTION.match(s) or SLASH_FRACTION.match(s)):
            num = _perturb_int(rng, int(m.group(2)))
            num = num if num != 0 else int(m.group(2)) + 1
            if m.re is FRACTION:
                head = s[:s.index("{") + 1]
                return f"{head}{num}}}{{{m.group(3)}}}", "perturb_fraction"
            return f"{m.group(1)}{num}/{m.group(3)}", "perturb_fraction"
        if m := _LEAD.match(s):
            lead = m.group(1)
            inner = CorruptWrongAnswer._perturb(rng, lead)
            if inner is not None:
                return inner[0] + m.group(2), "perturb_leading_number"
        return None

    @staticmethod
    def _occurrences(a: str) -> re.Pattern[str]:
        esc = re.escape(a)
        if as_number(normalise_answer(a)) is not None or a[:1].isdigit() or a[:1] == "-":
            return re.compile(r"(?<![\d.])" + esc + r"(?!\d|\.\d)")
        return re.compile(r"(?<![\w\\])" + esc + r"(?![\w])")

    def _spans(self, text: str, a: str) -> list[tuple[int, int]]:
        """Spans of ``text`` holding the answer: \\boxed contents equal to it, plus plain
        occurrences in the last ``conclusion_paragraphs`` paragraphs (outside those boxes)."""
        boxes = [(s, e) for s, e in _boxed_spans(text) if same_answer(text[s:e], a)]
        starts = [0] + [m.end() for m in _PARAGRAPH.finditer(text)]
        paras = list(zip(starts, [*starts[1:], len(text)], strict=True))
        cut = max(0, len(paras) - self.conclusion_paragraphs)
        regions = [(s, e) for i, (s, e) in enumerate(paras) if i >= cut or _ANSWER_WORD.search(text, s, e)]
        inside = lambda p: any(s <= p < e for s, e in boxes)  # noqa: E731
        pattern = self._occurrences(a)
        plain = [m.span() for s, e in regions for m in pattern.finditer(text, s, e) if not inside(m.start())]
        return sorted(set(boxes + plain))

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        assert self._fitted, "fit() must run before apply()"
        new_th, new_so, new_ans, frm, to, how, units, touched, spans, reasons, th_edits = ([] for _ in range(11))
        cols = batch.select("id", pl.col("thinking").fill_null(""), pl.col("solution").fill_null(""),
                            "answer", "reference_answer")
        for row_id, th, so, ans, ref in cols.iter_rows():
            a = self._final_answer(ans, so, th)
            rng = row_rng(self.name, self.seed, row_id)
            got = self.wrong_value(rng, a, ref) if a else None
            reason = None
            out_th, out_so, row_spans, answer_now = th, so, [], ans
            if a is None:
                reason = f"{self.name}: no final answer found"
            elif got is None:
                reason = f"{self.name}: no plausible wrong value for {a!r}"
            else:
                w = got[0]
                edits = {"thinking": self._spans(th, a), "solution": self._spans(so, a)}
                out = {}
                for part, text in (("thinking", th), ("solution", so)):
                    pieces, last = [], 0
                    for s, e in edits[part]:
                        pieces += [text[last:s], w]
                        last = e
                        row_spans.append({"part": part, "start": s, "end": e})
                    out[part] = "".join(pieces) + text[last:]
                check = self._final_answer(None, out["solution"], out["thinking"])
                if not row_spans:
                    reason = f"{self.name}: answer {a!r} not found in a \\boxed{{}} or the conclusion"
                elif check is None or same_answer(check, a) or same_answer(check, ref):
                    reason = f"{self.name}: answer still {check!r} after replacing {a!r} with {w!r}"
                else:
                    out_th, out_so, answer_now = out["thinking"], out["solution"], check
            if reason is not None:
                row_spans = []
            th_edits.append([(sp["start"], sp["end"], len(got[0])) for sp in row_spans  # type: ignore[index]
                             if sp["part"] == "thinking"])
            new_th.append(out_th)
            new_so.append(out_so)
            new_ans.append(answer_now)
            frm.append(a)
            to.append(None if reason else got[0])  # type: ignore[index]
            how.append(None if reason else got[1])  # type: ignore[index]
            units.append(1 if a else 0)
            touched.append(len(row_spans))
            spans.append(row_spans)
            reasons.append(reason)
        extra = {"answer": new_ans, "corrupt_answer_from": frm, "corrupt_answer_to": to,
                 "corrupt_answer_method": how, "corrupt_spans": spans}
        return self._finish(batch, {"thinking": new_th, "solution": new_so}, units, touched, extra, reasons,
                            edits=th_edits)
