"""The CPUs this process may run on (what the verify pool's workers and the local engine's
threads are counted from), and work spread over them on threads. Stdlib only, so a worker
pool's zygote imports nothing heavy."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cpus() -> int:
    """CPUs in this process's affinity mask (a container's or ``taskset``'s limit), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def in_order(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fn`` of each item, ``threads`` at a time (numpy, polars and Arrow release the GIL), the
    results in item order; ``items`` is read lazily, at most ``threads`` items beyond the one
    whose result is yielded. One thread: on this one, in order."""
    if threads <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(threads) as pool:
        window: deque[Future[R]] = deque()
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) > threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()


def single_threaded_blas() -> None:
    """Ask numpy's OpenBLAS for no helper threads (unless ``OPENBLAS_NUM_THREADS`` is set): they
    spin ~0.1 CPU s after numpy's import, beside the run's own work, and no step's hot path calls
    BLAS (torch, for embeddings and training, has its own threads). Read once, when numpy loads,
    so ``curate run`` calls it first; a library caller's process is left as it is."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
