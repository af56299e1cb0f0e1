"""Final answers: extraction from model text (\\boxed{...}, 'Final Answer:', 'the answer is', last
number) and a light comparison of two answers (canonical strings, numbers as fractions)."""

from __future__ import annotations

import re
from fractions import Fraction

_BOX_CMDS = ("\\boxed", "\\fbox")
_FINAL = re.compile(r"final\s+answer", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b", re.IGNORECASE)
_LEAD = re.compile(r"^[\s*#:：]*(?:is\b)?[\s*:：]*")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")
_TAIL_CHARS = 4000  # the answer lives at the end; scanning 1 MB traces in full is wasted work

METHODS = ("boxed", "final_answer", "answer_is", "last_number")
# answer shapes the comparison reads as numbers (and corrupt_wrong_answer perturbs)
INTEGER = re.compile(r"^-?\d{1,3}(?:,\d{3})+$|^-?\d+$")
DECIMAL = re.compile(r"^-?\d+\.\d+$")
FRACTION = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
SLASH_FRACTION = re.compile(r"^(-?)(\d+)/(\d+)$")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox``), braces balanced; ``\\boxed 5`` too."""
    best = None
    for cmd in _BOX_CMDS:
        at = text.rfind(cmd)
        while at >= 0:
            content = _braced_after(text, at + len(cmd))
            if content is not None:
                if best is None or at > best[0]:
                    best = (at, content)
                break
            at = text.rfind(cmd, 0, at)
    return best[1].strip() if best else None


def _braced_after(text: str, i: int) -> str | None:
    n = len(text)
    if i < n and text[i] == " ":  # \boxed 5
        m = re.match(r" +([^\s$]+)", text[i:])
        return m.group(1) if m else None
    if i >= n or text[i] != "{":
        return None
    depth, start = 0, i + 1
    for j in range(i, n):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:j]
    return None  # unbalanced: truncated text


def _clean_line(s: str) -> str | None:
    """First line, with markdown emphasis, math delimiters and a closing period removed."""
    s = s.strip().splitlines()[0].strip() if s.strip() else ""
    boxed = extract_boxed(s)
    if boxed is not None:
        return boxed
    previous = None
    while previous != s:
        previous = s
        s = s.strip().strip("*").rstrip(".").strip()
        s = re.sub(r"^\$+|\$+$", "", s)
        s = re.sub(r"^\\[(\[]|\\[)\]]$", "", s)
    return s or None


def _after_last(pattern: re.Pattern[str], text: str) -> str | None:
    """The first non-empty line after the last match ("**Final Answer**\n\n$42$" gives 42)."""
    m = list(pattern.finditer(text))
    if not m:
        return None
    rest = _LEAD.sub("", text[m[-1].end():], count=1)
    return _clean_line(rest)


def extract_answer(text: str, methods: tuple[str, ...] | list[str] = METHODS) -> tuple[str | None, str | None]:
    """The final answer in ``text`` and the method that found it, trying ``methods`` in order."""
    tail = text[-_TAIL_CHARS:]
    for method in methods:
        if method == "boxed":
            found = extract_boxed(tail) or (extract_boxed(text) if len(text) > _TAIL_CHARS else None)
        elif method in ("final_answer", "answer_is"):
            found = _after_last(_FINAL if method == "final_answer" else _ANSWER_IS, tail)
        elif method == "last_number":
            m = _NUMBER.findall(tail)
            found = m[-1].replace(",", "").replace(" ", "") if m else None
        else:
            raise ValueError(f"unknown extraction method {method!r}; use {', '.join(METHODS)}")
        if found:
            return found, method
    return None, None


def normalise_answer(a: str | None) -> str:
    """A light canonical form for comparing answers: no $, spaces, \\left/\\right, \\dfrac, trailing dot."""
    if a is None:
        return ""
    s = a.strip().strip("$").strip()
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\ ", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if INTEGER.match(s):
        s = s.replace(",", "")
    return s


def as_number(s: str) -> Fraction | None:
    """A canonical answer's value when it is an integer, decimal or fraction, else None."""
    try:
        if INTEGER.match(s) or DECIMAL.match(s):
            return Fraction(s.replace(",", ""))
        m = FRACTION.match(s) or SLASH_FRACTION.match(s)
        if m:
            v = Fraction(int(m.group(2)), int(m.group(3)))
            return -v if m.group(1) else v
    except (ValueError, ZeroDivisionError):
        return None
    return None


def same_answer(a: str | None, b: str | None) -> bool:
    """Simple equivalence: equal canonical strings, or equal as numbers (ints, decimals, fractions)."""
    na, nb = normalise_answer(a), normalise_answer(b)
    if not na or not nb:
        return False
    if na == nb:
        return True
    x, y = as_number(na), as_number(nb)
    return x is not None and x == y
