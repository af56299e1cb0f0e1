"""Split a teacher response into thinking and solution, whatever markers it uses."""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import NamedTuple

SKY_BEGIN_THOUGHT = "<|begin_of_thought|>"
SKY_END_THOUGHT = "<|end_of_thought|>"
SKY_BEGIN_SOLUTION = "<|begin_of_solution|>"
SKY_END_SOLUTION = "<|end_of_solution|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class SplitResponse(NamedTuple):
    thinking: str
    solution: str
    closed: bool | None  # None: the response had no thinking block at all
    style: str  # "sky-t1", "think" or "none"


def split_response(text: str) -> SplitResponse:
    """Separate the reasoning from the final solution and strip the markers.

    Sky-T1 / OpenThoughts markers and R1 ``<think>`` tags are recognised (R1 output often lacks
    the opening tag, which lives in the chat template). A thinking block that never closes is a
    truncated trace: everything after the opening marker is thinking and ``closed`` is False.
    Text without markers (QwQ-style teachers write none: the whole response is the reasoning) is
    split by :func:`split_plain`: the final answer paragraph is the solution, the rest the thinking,
    and ``closed`` is None (no marker tells whether it was cut). No text is dropped: anything before
    the opening marker stays at the head of the thinking, anything between or after the solution
    markers stays in the solution, and stray repeated markers are removed.
    """
    if SKY_BEGIN_THOUGHT in text or SKY_END_THOUGHT in text:
        return _split_sky(text)
    if THINK_OPEN in text or THINK_CLOSE in text:
        return _split_think(text)
    return split_plain(text)


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_HEADING = re.compile(r"^[\s*#_]*(?:final\s+answer|answer)[\s*#_:.]*$", re.IGNORECASE)
ANSWER_LOOKBACK = 3  # paragraphs from the end where a \boxed answer opens the solution


def split_plain(text: str) -> SplitResponse:
    """A markerless response as reasoning plus its final answer paragraph.

    The solution starts at the last paragraph (blank-line block) holding a ``\\boxed{}`` when it is
    among the last ``ANSWER_LOOKBACK`` paragraphs, else at the last paragraph; a "Final Answer"
    heading just before it goes with it. Everything before is the thinking. A one-paragraph
    response has no reasoning to separate: it is all solution. ``closed`` is None.
    """
    body = text.strip()
    starts = [0] + [m.end() for m in _PARAGRAPH_BREAK.finditer(body) if m.end() < len(body)]
    if len(starts) < 2:
        return SplitResponse("", body, None, "none")
    k = len(starts) - 1
    boxed = _last_boxed_paragraph(body, starts)
    if boxed is not None and boxed >= len(starts) - ANSWER_LOOKBACK:
        k = boxed
    if k > 0 and _ANSWER_HEADING.match(body[starts[k - 1]:starts[k]].strip()):
        k -= 1
    return SplitResponse(body[:starts[k]].strip(), body[starts[k]:].strip(), None, "none")


def _last_boxed_paragraph(body: str, starts: list[int]) -> int | None:
    """The last paragraph holding a whole ``\\boxed{`` (a match inside its bounds), or None: one
    scan of the text, not a search per paragraph (a match that runs across a paragraph break
    counts for neither, as a search bounded to each paragraph finds)."""
    last = None
    for m in _BOXED.finditer(body):
        i = bisect_right(starts, m.start()) - 1
        if i + 1 == len(starts) or m.end() <= starts[i + 1]:
            last = i
    return last


def _clean(text: str, markers: tuple[str, ...]) -> str:
    for m in markers:
        if m in text:
            text = text.replace(m, "")
    return text.strip()


_SKY_MARKERS = (SKY_BEGIN_THOUGHT, SKY_END_THOUGHT, SKY_BEGIN_SOLUTION, SKY_END_SOLUTION)
_THINK_MARKERS = (THINK_OPEN, THINK_CLOSE)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in (q.strip() for q in parts) if p)


def _split_sky(text: str) -> SplitResponse:
    return _split_marked(text, SKY_BEGIN_THOUGHT, SKY_END_THOUGHT, SKY_BEGIN_SOLUTION, _SKY_MARKERS, "sky-t1")


def _split_think(text: str) -> SplitResponse:
    return _split_marked(text, THINK_OPEN, THINK_CLOSE, None, _THINK_MARKERS, "think")


def _split_marked(text: str, begin: str, end: str, solution: str | None, markers: tuple[str, ...],
                  style: str) -> SplitResponse:
    """Thinking between ``begin`` (optional) and ``end``; what precedes ``begin`` heads the
    thinking. Without ``end`` the block is unclosed: with a ``solution`` marker the solution
    starts there, else everything is thinking. Positions are found in ``text`` itself and each
    part sliced once (responses run to 100 KB: copies of the whole body were most of the cost)."""
    start = text.find(begin)
    head, at = (text[:start], start + len(begin)) if start >= 0 else ("", 0)
    stop = text.find(end, at)
    if stop >= 0:
        thinking, rest, closed = text[at:stop], text[stop + len(end):], True
    else:
        sol_at = -1 if solution is None else text.find(solution, at)
        if sol_at < 0:
            return SplitResponse(_clean(_join(head, text[at:]), markers), "", False, style)
        thinking, rest, closed = text[at:sol_at], text[sol_at:], False
    return SplitResponse(_clean(_join(head, thinking), markers), _clean(rest, markers), closed, style)


def join_response(thinking: str, solution: str, style: str = "think", closed: bool | None = True) -> str:
    """Inverse of :func:`split_response` for export: wrap thinking in the chosen markers.

    A truncated trace (``closed=False``) is written without the closing marker, as the teacher
    left it, so that reading the export back gives the same thinking, solution and flag.
    """
    truncated = closed is False
    if style == "think":
        if truncated:
            return _join(f"{THINK_OPEN}\n{thinking}", solution)
        return f"{THINK_OPEN}\n{thinking}\n{THINK_CLOSE}\n\n{solution}"
    if style == "sky-t1":
        solution_block = f"{SKY_BEGIN_SOLUTION}\n\n{solution}\n\n{SKY_END_SOLUTION}"
        if truncated:
            return f"{SKY_BEGIN_THOUGHT}\n\n{thinking}" + (f"\n\n{solution_block}" if solution else "")
        return f"{SKY_BEGIN_THOUGHT}\n\n{thinking}\n\n{SKY_END_THOUGHT}\n\n{solution_block}"
    if style == "none":
        return _join(thinking, solution)
    raise ValueError(f"unknown marker style {style!r}: use 'think', 'sky-t1' or 'none'")
