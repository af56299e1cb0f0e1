"""Rule-based step segmentation of a thinking block, by character offsets that round-trip exactly.

A step is the text from one step start to the next, so ``"".join(steps) == text`` always holds.
Two rule sets:

- ``paragraph``: every blank-line paragraph is a step (the Sky-T1 system prompt asks the teacher
  to separate steps with a blank line).
- ``transition`` (default): a new step starts only at a paragraph that opens with a transition
  phrase long-CoT teachers begin a new thought with (reflection, backtracking, self-validation,
  conclusion: "Wait", "Alternatively", "But", "Hmm", "Let me check", "Therefore", ...); other
  paragraphs are merged into the current step. With ``split_inline`` a step also starts inside a
  paragraph, at a sentence that opens with a strong transition ("Wait", "Alternatively", "Hmm").
  This approximates the paper's LLM splitter, which cut at backtracking / self-validation /
  reflection boundaries.

Offsets are Python string indices (Unicode code points), the same unit polars' ``str.slice`` uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

MODES = ("transition", "paragraph")

#: Phrases that open a new reasoning step when they start a paragraph (case-sensitive start of
#: paragraph, after optional markdown emphasis). Reflection, backtracking, verification, conclusion.
TRANSITIONS: tuple[str, ...] = (
    "Wait", "Alternatively", "But", "However", "Hmm", "Actually", "Hold on", "On second thought",
    "Let me check", "Let me verify", "Let me double-check", "Let me double check", "Let me confirm",
    "Let me make sure", "Let me recheck", "Let me re-check", "Let me re-examine", "Let me reconsider",
    "Let me think again", "Let me try", "Let me see if", "Let's check", "Let's verify",
    "Let's double-check", "Let's try", "Let's see if", "Just to be sure", "Just to make sure",
    "Just to confirm", "Double-check", "To verify", "To check", "To confirm", "Another approach",
    "Another way", "Instead", "Maybe", "Perhaps", "Therefore", "Thus", "Hence", "In conclusion",
    "So the answer", "So the final answer",
)

#: Transitions strong enough to open a step in the middle of a paragraph (after a sentence end).
INLINE_TRANSITIONS: tuple[str, ...] = ("Wait", "Alternatively", "Hmm", "Hold on", "On second thought")

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


@lru_cache(maxsize=64)
def _opener(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(r"[*_#>\-\s]*(?:" + alts + r")\b")


@lru_cache(maxsize=64)
def _inline(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(r"(?<=[.!?])[ \t]+(?=(?:" + alts + r")\b)")


def paragraph_starts(text: str) -> list[int]:
    """Start offset of every blank-line paragraph (the first is 0)."""
    return [0] + [m.end() for m in _PARAGRAPH_BREAK.finditer(text) if m.end() < len(text)]


def step_starts(
    text: str,
    mode: str = "transition",
    transitions: Sequence[str] = TRANSITIONS,
    split_inline: bool = True,
    inline_transitions: Sequence[str] = INLINE_TRANSITIONS,
    min_step_chars: int = 0,
) -> list[int]:
    """Start offset of each step of ``text`` (empty text: no steps). Steps end where the next begins."""
    if not text:
        return []
    paras = paragraph_starts(text)
    if mode == "paragraph":
        starts = paras
    elif mode == "transition":
        opener = _opener(tuple(transitions))
        starts = [0] + [p for p in paras[1:] if opener.match(text, p)]
        if split_inline and inline_transitions:
            inline = [m.end() for m in _inline(tuple(inline_transitions)).finditer(text)]
            if inline:
                starts = sorted(set(starts).union(inline))
    else:
        raise ValueError(f"unknown segmentation mode {mode!r}; use {', '.join(MODES)}")
    if min_step_chars > 0 and len(starts) > 1:
        merged = [starts[0]]
        bounds = [*starts[1:], len(text)]
        for s, e in zip(starts[1:], bounds[1:], strict=True):
            if len(text[s:e].strip()) >= min_step_chars:
                merged.append(s)
        starts = merged
    return starts


def spans(starts: Sequence[int], length: int) -> list[tuple[int, int]]:
    """(start, end) of each step from the starts and the text length."""
    if not starts:
        return []
    ends = [*starts[1:], length]
    return list(zip(starts, ends, strict=True))


@dataclass(frozen=True)
class Steps:
    """A segmented text as step bodies plus the whitespace that follows each one.

    ``bodies[i] + seps[i]`` is step i; structural edits reorder / drop / replace bodies while the
    separators stay in place, so a moved last step does not glue onto its new neighbour.
    """

    bodies: tuple[str, ...]
    seps: tuple[str, ...]

    @classmethod
    def of(cls, text: str, starts: Sequence[int]) -> Steps:
        bodies, seps = [], []
        for s, e in spans(starts, len(text)):
            chunk = text[s:e]
            body = chunk.rstrip()
            bodies.append(body)
            seps.append(chunk[len(body):])
        return cls(tuple(bodies), tuple(seps))

    def __len__(self) -> int:
        return len(self.bodies)

    def text(self) -> str:
        return "".join(b + s for b, s in zip(self.bodies, self.seps, strict=True))


def join(bodies: Sequence[str], seps: Sequence[str]) -> tuple[str, list[int], list[int]]:
    """Join bodies with separators; returns the text and each step's (start, end) offsets."""
    out, starts, ends, pos = [], [], [], 0
    for b, s in zip(bodies, seps, strict=True):
        starts.append(pos)
        out.append(b)
        out.append(s)
        pos += len(b) + len(s)
        ends.append(pos)
    return "".join(out), starts, ends
