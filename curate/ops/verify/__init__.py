"""Answer verification: math (math-verify), code (sandboxed tests), multiple choice.

``verify_task`` is the one entry point the worker pool runs: it takes a plain dict (picklable,
no polars) with a ``kind`` of ``math``, ``code`` or ``mcq`` and returns the verdict dict
(correct, error, method, gold, pred, pass_rate).
"""

from __future__ import annotations

from typing import Any

KINDS = ("math", "code", "mcq")


def verify_task(task: dict[str, Any]) -> dict[str, Any]:
    """Verdict for one row (runs inside a pool worker, or inline)."""
    kind = task.get("kind")
    if kind == "math":
        from curate.ops.verify.math import verify_math

        return verify_math(task)
    if kind == "mcq":
        from curate.ops.verify.mcq import verify_mcq

        return verify_mcq(task)
    if kind == "code":
        from curate.ops.verify.code import verify_code

        return verify_code(task)
    raise ValueError(f"unknown verification kind {kind!r}; use {', '.join(KINDS)}")


__all__ = ["KINDS", "verify_task"]
