"""Content corruption: replace numbers (or digits) in the response with random ones."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

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
from curate.step import StepResult

if TYPE_CHECKING:
    from curate.card.section import VariantStep

_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b", re.ASCII)  # the paper's script's number token (ASCII digits)
_DIGIT = re.compile(r"\d", re.ASCII)
_OTHER_DIGITS = {d: "0123456789".replace(d, "") for d in "0123456789"}


@dataclass
class CorruptDigits(Corruption):
    """Replace numbers (or single digits) in the response with random ones (paper: 20/50/70/100%).

    ``replacement: paper`` with ``unit: number, sampling: bernoulli`` is the paper's rule, from its
    script (NovaSky-AI/SkyThought, branch ``corrupt``, ``skythought/tools/corrupt_data.py``): every
    number token ``\\b\\d+(\\.\\d+)?\\b`` of the whole response is, with probability ``ratio``,
    replaced by ``random.randint(0, 10)``, which may equal the original (the number then stays as it
    was and does not count as touched). Options of this toolkit: ``small_int`` re-draws 0..10 until it
    differs; ``same_shape`` keeps the digit count and decimal places (no new leading zero);
    ``unit: digit`` makes each digit a unit (another digit); ``sampling: exact`` picks exactly
    ``round_half_up(ratio * units)`` units. ``scope: response`` (default, as the paper corrupted whole
    responses) covers thinking and solution, ``thinking`` the thinking only. ``corrupt_touched``
    counts the numbers whose text changed; ``corrupt_spans`` gives their original (part, start, end).
    """

    name = "corrupt_digits"
    writes: ClassVar[dict[str, pa.DataType]] = {**COMMON_COLUMNS, "corrupt_spans": pa.list_(SPAN)}

    ratio: float = field(default=0.7, metadata={"help": "share of units to corrupt, in [0, 1]"})
    unit: Literal["number", "digit"] = field(default="number", metadata={"help": "what one unit is: a number token or a digit"})
    sampling: Literal["exact", "bernoulli"] = field(
        default="exact", metadata={"help": "exact: round(ratio*units) units; bernoulli: each unit with probability ratio (paper's script)"})
    replacement: Literal["same_shape", "small_int", "paper"] = field(
        default="same_shape", metadata={"help": "paper: randint(0, 10), may equal the original (corrupt_data.py); "
                                                "small_int: 0..10 re-drawn until it differs; same_shape: same digit count"})
    scope: Literal["response", "thinking"] = field(
        default="response", metadata={"help": "response: thinking and solution; thinking: thinking only"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows where nothing changed (no number): keep unchanged, or reject"})

    def __post_init__(self) -> None:
        self._check_common()
        if self.replacement in ("small_int", "paper") and self.unit == "digit":
            raise ValueError(f"replacement {self.replacement} applies to unit: number")

    @classmethod
    def method_origin(cls, step: VariantStep) -> str:
        p = step.params
        if (p.get("replacement"), p.get("unit"), p.get("sampling")) == ("paper", "number", "bernoulli"):
            return f"{PAPER}'s rule (`skythought/tools/corrupt_data.py`)"
        return "this toolkit's option (not the paper's rule)"

    def columns_read(self) -> tuple[str, ...]:
        return ("id", "problem", "thinking", "solution")

    def kind(self) -> str:
        return f"{self.name}:{self.unit}" + (":paper" if self.replacement == "paper" else "")

    def _new_value(self, rng: random.Random, old: str) -> str:
        if self.unit == "digit":
            return _OTHER_DIGITS[old][rng.randrange(9)]
        if self.replacement == "paper":
            return str(rng.randint(0, 10))
        if self.replacement == "small_int":
            while True:
                v = str(rng.randint(0, 10))
                if v != old:
                    return v
        whole, dot, frac = old.partition(".")
        width = len(whole) + len(frac)
        low = 10 ** (width - 1) if len(whole) > 1 else 0  # no new leading zero
        while True:
            digits = str(rng.randrange(low, 10 ** width)).zfill(width)
            v = digits[:len(whole)] + dot + digits[len(whole):]
            if v != old:
                return v

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        parts = scope_parts(self.scope)
        pattern = _DIGIT if self.unit == "digit" else _NUMBER
        new: dict[str, list[str]] = {p: [] for p in parts}
        units, touched, spans, reasons, edits = [], [], [], [], []
        for row in batch.select("id", *[pl.col(p).fill_null("") for p in parts]).iter_rows(named=True):
            rng = row_rng(self.name, self.seed, row["id"])
            found = [(p, m) for p in parts for m in pattern.finditer(row[p])]
            hit = set(choose(rng, len(found), self.ratio, self.sampling))
            texts = {p: [] for p in parts}
            last = dict.fromkeys(parts, 0)
            row_spans, row_edits = [], []
            for i, (p, m) in enumerate(found):
                if i not in hit:
                    continue
                value = self._new_value(rng, m.group(0))
                if value == m.group(0):  # the paper's draw can give the number back
                    continue
                texts[p].append(row[p][last[p]:m.start()])
                texts[p].append(value)
                last[p] = m.end()
                row_spans.append({"part": p, "start": m.start(), "end": m.end()})
                if p == "thinking":
                    row_edits.append((m.start(), m.end(), len(value)))
            for p in parts:
                texts[p].append(row[p][last[p]:])
                new[p].append("".join(texts[p]))
            units.append(len(found))
            touched.append(len(row_spans))
            spans.append(row_spans)
            edits.append(row_edits)
            reasons.append(None if row_spans else f"{self.name}: nothing corrupted ({len(found)} {self.unit}s)")
        return self._finish(batch, new, units, touched, {"corrupt_spans": spans}, reasons, edits=edits)
