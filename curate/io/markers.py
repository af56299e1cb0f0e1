"""Split a teacher response into thinking and solution, whatever markers it uses."""

from __future__ import annotations

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
    Text without markers is all solution.
    """
    if SKY_BEGIN_THOUGHT in text or SKY_END_THOUGHT in text:
        return _split_sky(text)
    if THINK_OPEN in text or THINK_CLOSE in text:
        return _split_think(text)
    return SplitResponse("", text.strip(), None, "none")


def _split_sky(text: str) -> SplitResponse:
    start = text.find(SKY_BEGIN_THOUGHT)
    body = text[start + len(SKY_BEGIN_THOUGHT) :] if start >= 0 else text
    end = body.find(SKY_END_THOUGHT)
    if end < 0:
        sol_at = body.find(SKY_BEGIN_SOLUTION)
        if sol_at < 0:
            return SplitResponse(body.strip(), "", False, "sky-t1")
        thinking, rest, closed = body[:sol_at], body[sol_at:], False
    else:
        thinking, rest, closed = body[:end], body[end + len(SKY_END_THOUGHT) :], True
    return SplitResponse(thinking.strip(), _strip_solution_markers(rest), closed, "sky-t1")


def _strip_solution_markers(rest: str) -> str:
    s = rest.find(SKY_BEGIN_SOLUTION)
    if s >= 0:
        rest = rest[s + len(SKY_BEGIN_SOLUTION) :]
    e = rest.rfind(SKY_END_SOLUTION)
    if e >= 0:
        rest = rest[:e]
    return rest.strip()


def _split_think(text: str) -> SplitResponse:
    start = text.find(THINK_OPEN)
    body = text[start + len(THINK_OPEN) :] if start >= 0 else text
    end = body.find(THINK_CLOSE)
    if end < 0:
        return SplitResponse(body.strip(), "", False, "think")
    return SplitResponse(body[:end].strip(), body[end + len(THINK_CLOSE) :].strip(), True, "think")


def join_response(thinking: str, solution: str, style: str = "think") -> str:
    """Inverse of :func:`split_response` for export: wrap thinking in the chosen markers."""
    if style == "think":
        return f"{THINK_OPEN}\n{thinking}\n{THINK_CLOSE}\n\n{solution}"
    if style == "sky-t1":
        return (
            f"{SKY_BEGIN_THOUGHT}\n\n{thinking}\n\n{SKY_END_THOUGHT}\n\n"
            f"{SKY_BEGIN_SOLUTION}\n\n{solution}\n\n{SKY_END_SOLUTION}"
        )
    if style == "none":
        return f"{thinking}\n\n{solution}".strip()
    raise ValueError(f"unknown marker style {style!r}: use 'think', 'sky-t1' or 'none'")
