"""Benchmarks (not timed tests): each compares a whole command with the script a user would write."""

from __future__ import annotations

import compileall
from collections.abc import Sequence
from pathlib import Path


def compile_bytecode(*checkouts: Path) -> None:
    """Write each checkout's ``curate`` bytecode (``__pycache__``), as ``pip install`` does.

    Whole-command figures time an installed package. An editable checkout run with
    ``PYTHONDONTWRITEBYTECODE=1`` (the project VM sets it) never writes its ``.pyc`` files, so every
    ``curate`` process would compile ~100 modules from source first (0.1-0.2 s a start) while the
    peer scripts' libraries come compiled.
    """
    for checkout in checkouts or (Path(__file__).resolve().parent.parent,):
        compileall.compile_dir(Path(checkout) / "curate", quiet=1)


def rotated(names: Sequence[str], rep: int) -> list[str]:
    """The contenders' order in repetition ``rep``: each rep starts one later, so none always runs
    right after another (on the project VM a process run after the 7 s verify loop took ~0.4 s
    longer, which a fixed order charged to whichever contender came next)."""
    k = rep % len(names)
    return [*names[k:], *names[:k]]
