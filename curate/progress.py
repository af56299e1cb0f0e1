"""Row progress inside a part: a step reports rows as it finishes them, the runner's bar moves.

The runner sets a reporter around the parts it applies in this process; a step that works row by
row (verify's checker pool) calls ``rows_done`` as rows finish. Where no reporter is set (a Ray
worker, a step called directly) the call does nothing and the bar moves once per part.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

_REPORTER: ContextVar[Callable[[int], None] | None] = ContextVar("curate_row_progress", default=None)


def rows_done(n: int = 1) -> None:
    """Tell the running stage's bar that ``n`` more rows of the current part are done."""
    reporter = _REPORTER.get()
    if reporter is not None and n:
        reporter(n)


@contextlib.contextmanager
def reporting(reporter: Callable[[int], None]) -> Iterator[None]:
    """Send ``rows_done`` calls made in this context to ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def bar(**kwargs: Any) -> Any:
    """A tqdm bar: the notebook widget when IPython runs us, the terminal one otherwise (without
    importing ``tqdm.auto``, which loads asyncio and costs a CLI run ~0.15 s of start-up)."""
    if "IPython" in sys.modules:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(**kwargs)
