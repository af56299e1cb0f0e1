"""What an engine is: a way to run one function over a list of work items (global passes included)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from curate.engines.parts import PartTask, local_threads
from curate.globalpass import (
    FileScratch,
    MemoryScratch,
    PassContext,
    PlannedApply,
    Runner,
    Scratch,
    WorkFn,
)
from curate.step import Step


class Engine(Runner):
    """Runs the pipeline's units of work. Subclasses decide where; the files written are the same."""

    name = ""
    buckets: int | None = None  # hash buckets of a shuffle (None: sized from the data)

    def map(self, fn: WorkFn, items: list[Any], *, state: Any = None, workers: dict[str, float] | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Call ``fn(state, item)`` for every item (in any order); ``workers`` asks for long-lived
        workers holding ``state`` (a model, a verifier pool) with these resources each."""
        raise NotImplementedError

    def fit(self, step: Step, parts: list[Path], counts: list[int], folder: Path,
            frames: Callable[[], Iterator[pl.DataFrame]],
            progress: Callable[[int], Any] | None = None) -> PlannedApply | None:
        """A global step's pass over the whole stage input: the step's own ``plan``, its units of
        work run by this engine, scratch and per-part plans under ``folder`` (``progress`` is told
        the rows each unit of its first sweep over the parts covered)."""
        return step.plan(PassContext(self, parts, counts, folder, frames, progress))

    def generate_ahead(self, step: Step, tasks: list[PartTask], gen: Path,
                       bar: Callable[[str, int | None], Any]) -> bool:
        """Make the generations ``step`` will ask for on these parts in one batch job, under ``gen``
        (``curate.engines.llm``); True when the apply must then run under ``llm.given``. Here: no,
        a step generates as it applies."""
        return False

    def gpus(self) -> float:
        """GPUs the engine can give to workers (a step on ``device: auto`` asks for one when any)."""
        return 0.0

    def width(self) -> int:
        """Units of work the engine runs side by side (a pass splits its work into at least as many)."""
        return 1

    def threads_per_unit(self) -> int:
        """Threads one unit of a pass may keep busy in its process (see ``PassContext.threads``)."""
        return 1

    def scratch(self, folder: Path) -> Scratch:
        """Where a global pass's units hand each other data: files under ``folder``, which every
        worker must see."""
        return FileScratch(folder)

    def close(self) -> None:
        """Release what the engine started."""


class LocalEngine(Engine):
    """Everything in this process, in order (steps parallelise inside, e.g. verify's worker pool)."""

    name = "local"

    def __init__(self, *, buckets: int | None = None, scratch: str = "memory", threads: int | None = None):
        """``buckets`` fixes the width of a global pass's hash shuffle (exact dedup); its units of
        work run here one after another, handing each other data in memory (``scratch="files"``:
        as the ray engine does, through files under the stage's ``_fit/``). A ``thread_safe``
        step applies ``threads`` parts at once, and a pass's unit may keep as many threads busy
        (``threads_per_unit``: MinHash signs that many batches at once); default: one per CPU,
        at most 4."""
        if scratch not in ("memory", "files"):
            raise ValueError(f"scratch must be memory or files, not {scratch!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        self.buckets = buckets
        self.scratch_kind = scratch
        self.threads = threads or local_threads()

    def threads_per_unit(self) -> int:
        return self.threads

    def scratch(self, folder: Path) -> Scratch:
        return MemoryScratch() if self.scratch_kind == "memory" else FileScratch(folder)

    def map(self, fn: WorkFn, items: list[Any], *, state: Any = None, workers: dict[str, float] | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        results = []
        for item in items:
            result = fn(state, item)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results
