"""Answer verification: math (math-verify), code (sandboxed tests), multiple choice.

``verify_task`` is the one entry point the worker pool runs: it takes a plain dict (picklable,
no polars) with a ``kind`` of ``math``, ``code`` or ``mcq`` and returns the verdict dict
(correct, error, method, gold, pred, pass_rate).
"""

from __future__ import annotations

from typing import Any

KINDS = ("math", "code", "mcq")
PRELOAD = ("curate.ops.verify.math", "curate.ops.verify.code")  # what the pool's zygote imports


def pool_size(workers: int | None) -> int:
    """Checker processes for the step's ``workers``: as given, or one per core when unset (0: the
    rows are checked inline, with no pool)."""
    from curate.ops.verify.pool import default_workers

    return default_workers() if workers is None else workers


def start_early(params: dict[str, Any]) -> None:
    """``verify``'s early start (``curate.ops.EARLY_START``): launch its worker pool's zygote before
    the run's own imports, unless the step will have no pool."""
    if pool_size(params.get("workers")) == 0:
        return
    from curate.ops.verify.pool import start_early as launch

    launch(verify_task, PRELOAD)


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


__all__ = ["KINDS", "PRELOAD", "pool_size", "start_early", "verify_task"]
