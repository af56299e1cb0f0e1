"""Multiple-choice answers (GPQA / MMLU style): extract the chosen letter and compare.

math-verify's string target misses the forms science traces actually end with (``\\boxed{B}``,
``(C)``, ``\\boxed{\\text{(A)}}``), so letters are found here, most explicit form first, in the
tail of the solution, then of the thinking:

1. the last ``\\boxed{}`` whose content starts with a letter (``B``, ``(B)``, ``B. 12 eV``);
2. the last "answer is / answer: / correct option is ... X";
3. a final line that is only a letter (``**B**``, ``(B).``).

The gold is the reference letter; a reference that is an option's text (``10^-4 ev``) is mapped to
the letter of the option with that text in the problem.
"""

from __future__ import annotations

import re
from typing import Any

from curate.answers import extract_boxed

LETTERS = "ABCDEFGHIJ"
_L = f"[{LETTERS}]"
_BOXED_LETTER = re.compile(rf"^\s*(?:\\text\{{)?\s*\(?({_L})\)?(?:[\s.):}}]|$)")
_ANCHORED = re.compile(
    rf"(?:answer|option|choice)\s*(?:is|would be|should be)?\s*[:：]?\s*(?:\\boxed\{{)?\s*\**\s*\(?({_L})\)?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_LAST_LINE = re.compile(rf"^\s*[*$\\(\[]*\s*\(?({_L})\)?\s*[*$.)\]]*\s*$")
_OPTION = re.compile(rf"^\s*\(?({_L})[.):]\s*(.+?)\s*$", re.MULTILINE)
TAIL = 3000


def _norm(s: str) -> str:
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def gold_letter(reference: str, problem: str = "") -> str | None:
    """The reference as a letter: ``B``, ``(B)``, ``B.`` or the text of one of the problem's options."""
    ref = reference.strip()
    m = re.fullmatch(rf"\(?({_L})\)?\.?", ref, flags=re.IGNORECASE)
    if m:
        return m.group(1).upper()
    for letter, text in _OPTION.findall(problem or ""):
        if _norm(text) == _norm(ref):
            return letter
    return None


def extract_letter(text: str) -> tuple[str | None, str | None]:
    """The chosen letter in ``text`` and the rule that found it (boxed, anchored, last_line)."""
    tail = text[-TAIL:]
    boxed = extract_boxed(tail)
    if boxed is not None:
        m = _BOXED_LETTER.match(boxed)
        if m:
            return m.group(1), "boxed"
    found = _ANCHORED.findall(tail)
    if found:
        return found[-1].upper(), "anchored"
    lines = [ln for ln in tail.strip().splitlines() if ln.strip()]
    if lines:
        m = _LAST_LINE.match(lines[-1])
        if m:
            return m.group(1), "last_line"
    return None, None


def verify_mcq(task: dict[str, Any]) -> dict[str, Any]:
    """Verdict for one multiple-choice row (same keys as ``verify_math``)."""
    out: dict[str, Any] = {"correct": None, "error": None, "method": "mcq", "gold": None, "pred": None}
    reference = task.get("reference")
    if reference is None or not str(reference).strip():
        out["error"] = "no reference answer"
        return out
    gold = gold_letter(str(reference), task.get("problem") or "")
    if gold is None:
        out["error"] = f"reference {str(reference)[:40]!r} is not an option letter"
        return out
    out["gold"] = gold
    pred, rule = None, None
    for where in ("solution", "thinking"):
        pred, rule = extract_letter(task.get(where) or "")
        if pred:
            out["method"] = f"mcq:{where}:{rule}"
            break
    if pred is None and task.get("answer"):
        pred = gold_letter(task["answer"], task.get("problem") or "")
        out["method"] = "mcq:answer"
    out["pred"] = pred
    if pred is None:
        out["correct"] = False
        out["error"] = "no option letter found in the response"
        return out
    out["correct"] = pred == gold
    return out
