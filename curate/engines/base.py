"""What an engine is: a way to run one function over a list of work items, and a global pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from curate.engines.parts import PartTask, PlannedApply
from curate.step import Step

# fn(state, item) -> {"rows": n, ...}: the unit an engine distributes (state: e.g. the step it runs)
WorkFn = Callable[[Any, Any], dict[str, Any]]


class Engine:
    """Runs the pipeline's units of work. Subclasses decide where; the files written are the same."""

    name = ""
    distributed_fits = False  # run global passes as units of work (curate.engines.distributed)
    buckets: int | None = None  # hash buckets of a shuffle (None: sized from the data)

    def map(self, fn: WorkFn, items: list[Any], *, state: Any = None, workers: dict[str, float] | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Call ``fn(state, item)`` for every item (in any order); ``workers`` asks for long-lived
        workers holding ``state`` (a model, a verifier pool) with these resources each."""
        raise NotImplementedError

    def fit(self, step: Step, parts: list[Path], counts: list[int], folder: Path,
            frames: Callable[[], Iterator[pl.DataFrame]],
            progress: Callable[[int], Any] | None = None) -> PlannedApply | None:
        """A global step's pass over the whole stage input. Returns None when the step's own
        ``apply`` is then used, or a planned apply that reads the per-part plans written to ``folder``
        (``progress`` is told the rows each unit of its first pass over the parts covered)."""
        from curate.engines.distributed import distributed_fit

        fitter = distributed_fit(step) if self.distributed_fits else None
        if fitter is None:  # the step's own pass, streaming every part through this process
            step.fit(frames())
            return None
        return fitter(self, step, parts, counts, folder, progress)

    def generate_ahead(self, step: Step, tasks: list[PartTask], gen: Path,
                       bar: Callable[[str, int | None], Any]) -> bool:
        """Make the generations ``step`` will ask for on these parts in one batch job, under ``gen``
        (``curate.engines.llm``); True when the apply must then run under ``llm.given``. Here: no,
        a step generates as it applies."""
        return False

    def gpus(self) -> float:
        """GPUs the engine can give to workers (a step on ``device: auto`` asks for one when any)."""
        return 0.0

    def close(self) -> None:
        """Release what the engine started."""


class LocalEngine(Engine):
    """Everything in this process, in order (steps parallelise inside, e.g. verify's worker pool)."""

    name = "local"

    def __init__(self, *, distributed_fits: bool = False, buckets: int | None = None):
        """``distributed_fits`` runs global passes the way the ray engine splits them (bounded
        memory per unit, files under the stage's ``_fit/``), here one unit after another."""
        self.distributed_fits = distributed_fits
        self.buckets = buckets

    def map(self, fn: WorkFn, items: list[Any], *, state: Any = None, workers: dict[str, float] | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        results = []
        for item in items:
            result = fn(state, item)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results
