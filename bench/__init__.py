"""Benchmarks (not timed tests): each compares a whole command with the script a user would write."""

from __future__ import annotations

import compileall
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
