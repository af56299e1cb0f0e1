"""What a global step's pass is given: the stage's parts, a way to run work over them, a scratch.

A step with ``needs_global_pass`` writes its pass once, in ``Step.plan(ctx)``, as units of work over
the stage's parts (``ctx.map``): the local engine runs them one after another in this process, the
ray engine on its workers; the dataset is the same. What the units hand each other goes to
``ctx.scratch`` (files under the stage's ``_fit/`` on shared storage, or this process's memory on
the local engine). A pass ends with small per-part plans (``ctx.write_plans``) that its planned
apply reads, and with ``ctx.finish``, which marks it done so a killed run does not redo it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from curate.io.write import (
    WORK_COMPRESSION,
    remove_tree,
    replacing,
    write_json_atomic,
    write_parquet_atomic,
)

if TYPE_CHECKING:
    from curate.step import Step, StepResult

# how a global pass hands its result to one part: (step, batch, offset, plan file) -> result
PlannedApply = Callable[["Step", pl.DataFrame, int, Path], "StepResult"]
# fn(state, item) -> {"rows": n, ...}: one unit of work (state: e.g. the step it runs)
WorkFn = Callable[[Any, Any], dict[str, Any]]
Part = tuple[int, str, int]  # (part number, path, offset of its first row in the stage)

PLAN_SCHEMA = pl.Schema({"row": pl.Int64, "duplicate_of": pl.String, "score": pl.Float64})
ROWS_PER_BUCKET = 250_000  # rows one shuffle bucket holds


class Runner:
    """What a pass needs of an engine (``curate.engines.Engine`` is one)."""

    buckets: int | None

    def map(self, fn: WorkFn, items: list[Any], *, state: Any = None, workers: dict[str, float] | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def gpus(self) -> float:
        raise NotImplementedError

    def width(self) -> int:
        raise NotImplementedError

    def threads_per_unit(self) -> int:
        raise NotImplementedError

    def scratch(self, folder: Path) -> Scratch:
        raise NotImplementedError


@dataclass
class PassContext:
    """One global pass over a stage: its parts (``counts`` rows each), the engine, the ``_fit/`` folder."""

    engine: Runner
    parts: list[Path]
    counts: list[int]
    folder: Path
    read_all: Callable[[], Iterator[pl.DataFrame]]
    progress: Callable[[int], Any] | None = None

    def __post_init__(self) -> None:
        self.scratch = self.engine.scratch(self.folder)  # what the pass's units hand each other

    # --- the engine ------------------------------------------------------------------------------
    def map(self, fn: WorkFn, items: list[Any], *, state: Any = None, workers: dict[str, float] | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run ``fn(state, item)`` for every item on the engine (any order; results in item order).
        ``fn`` must be picklable by value (a closure is): a ray engine ships it to its workers."""
        return self.engine.map(fn, items, state=state, workers=workers, on_result=on_result)

    def gpus(self) -> float:
        """GPUs the engine can give to workers."""
        return self.engine.gpus()

    def threads(self) -> int:
        """Threads one unit of work may keep busy in its process: the local engine's ``threads``
        (it runs units one after another), 1 on an engine that runs units side by side."""
        return self.engine.threads_per_unit()

    def buckets(self) -> int:
        """Hash buckets of a shuffle: the engine's ``buckets`` when set, else ~250k rows each, and
        on an engine that runs units side by side at least one per two parts (at most 1024)."""
        if self.engine.buckets:
            return self.engine.buckets
        wide = min(len(self.parts) // 2, 4 * self.engine.width()) if self.engine.width() > 1 else 1
        return max(1, min(1024, max(math.ceil(self.rows / ROWS_PER_BUCKET), wide)))

    def groups(self, units: int, cost: int, per_task: int) -> int:
        """Tasks to split ``units`` of work into (e.g. LSH bands): ``cost`` per unit, ~``per_task`` a
        task, and at least one per worker of the engine; at most ``units``."""
        return max(1, min(units, max(math.ceil(units * cost / per_task), self.engine.width())))

    # --- the stage -------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return sum(self.counts)

    @property
    def starts(self) -> np.ndarray:
        """Global position of each part's first row, and the total at the end."""
        return np.cumsum([0, *self.counts])

    def items(self) -> list[Part]:
        """One (part number, path, offset) per part: the items of a pass over the parts."""
        offsets = self.starts[:-1].tolist()
        return [(k, str(p), o) for k, (p, o) in enumerate(zip(self.parts, offsets, strict=True))]

    def frames(self) -> Iterator[pl.DataFrame]:
        """Every part in order, read in this process (a step's in-memory ``fit``)."""
        return self.read_all()

    def told(self) -> Callable[[dict[str, Any]], None] | None:
        """An ``on_result`` that tells the stage's progress bar the rows each unit covered (pass it
        for the pass's first sweep over the parts)."""
        progress = self.progress
        return None if progress is None else lambda result: progress(result["rows"])

    # --- resume and results ----------------------------------------------------------------------
    def done(self) -> dict[str, Any] | None:
        """What ``finish`` recorded when this pass already ran to its end, else None (and the
        folder is emptied for a fresh pass)."""
        path = self.folder / "done.json"
        if path.exists():
            return json.loads(path.read_text())
        remove_tree(self.folder)
        return None

    def finish(self, state: dict[str, Any], scratch: list[str]) -> None:
        """Mark the pass done with ``state`` (a few numbers: read back by ``done``) and drop its
        intermediate scratch (these names); the plans stay for the apply tasks."""
        write_json_atomic(state, self.folder / "done.json")
        for name in scratch:
            self.scratch.drop(name)
            remove_tree(self.folder / name)

    def plan_file(self, k: int) -> Path:
        return self.folder / f"plan-{k:05d}.parquet"

    def write_plans(self, dups: pl.DataFrame) -> None:
        """Split (pos, duplicate_of, score) rows by part into ``plan-KKKKK.parquet`` (row within the part)."""
        starts = self.starts
        part = np.searchsorted(starts, dups["pos"].to_numpy(), side="right") - 1
        dups = dups.with_columns(pl.Series("part", part), (pl.col("pos") - pl.Series(starts[part])).alias("row"))
        for (k,), frame in dups.group_by("part"):
            write_parquet_atomic(frame.select("row", "duplicate_of", "score").cast(dict(PLAN_SCHEMA)).to_arrow(),
                                 self.plan_file(int(k)))

    def arrays(self, what: str) -> PartArrays:
        """The per-part arrays a pass keeps in its scratch under ``what/KKKKK`` (picklable)."""
        return PartArrays(self.scratch, what, self.starts)

    def inputs(self) -> PartFiles:
        """The stage's input parts, to read some rows' columns back (``PartFiles.load``)."""
        return PartFiles(tuple(map(str, self.parts)), self.starts)


class Scratch:
    """What a pass's units hand each other, by name (``a/b/c``): numpy arrays or polars frames."""

    def put(self, key: str, value: np.ndarray | pl.DataFrame) -> None:
        raise NotImplementedError

    def get(self, key: str) -> Any:
        raise NotImplementedError

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix/``, sorted."""
        raise NotImplementedError

    def drop(self, prefix: str) -> None:
        """Forget every key under ``prefix/``."""
        raise NotImplementedError


@dataclass(frozen=True)
class FileScratch(Scratch):
    """Scratch as files under the pass's folder (every worker of a cluster reads them): arrays as
    .npy (raw memory, several times faster than Parquet columns), frames as Parquet."""

    folder: Path

    def put(self, key: str, value: np.ndarray | pl.DataFrame) -> None:
        if isinstance(value, pl.DataFrame):
            write_parquet_atomic(value.to_arrow(), self.folder / f"{key}.parquet", None, WORK_COMPRESSION)
        else:
            save_array(value, self.folder / f"{key}.npy")

    def get(self, key: str) -> Any:
        path = self.folder / f"{key}.npy"
        return np.load(path) if path.exists() else pl.read_parquet(self.folder / f"{key}.parquet")

    def keys(self, prefix: str) -> list[str]:
        base = self.folder / prefix
        found = [p for p in base.rglob("*") if p.suffix in (".npy", ".parquet")] if base.exists() else []
        return sorted(str(p.relative_to(self.folder).with_suffix("")) for p in found)

    def drop(self, prefix: str) -> None:
        remove_tree(self.folder / prefix)


class MemoryScratch(Scratch):
    """Scratch in this process's memory (the local engine, whose units all run here: a killed
    pass restarts whole, so files would buy nothing)."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    def put(self, key: str, value: np.ndarray | pl.DataFrame) -> None:
        self.items[key] = value

    def get(self, key: str) -> Any:
        return self.items[key]

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.items if k.startswith(prefix + "/"))

    def drop(self, prefix: str) -> None:
        for key in self.keys(prefix):
            del self.items[key]


@dataclass(frozen=True)
class PartArrays:
    """One array per part in a pass's scratch (``what/KKKKK``), row for row with the part."""

    scratch: Scratch
    what: str
    starts: np.ndarray  # global position of each part's first row, and the total at the end

    def key(self, k: int) -> str:
        return f"{self.what}/{k:05d}"

    def put(self, k: int, array: np.ndarray) -> None:
        self.scratch.put(self.key(k), array)

    def array(self, k: int) -> np.ndarray:
        return self.scratch.get(self.key(k))

    def part_of(self, positions: np.ndarray) -> np.ndarray:
        """The part each global row position falls in."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows of the parts' arrays at these global positions (ascending), one array."""
        part = self.part_of(positions)
        return np.concatenate([self.array(k)[positions[part == k] - self.starts[k]] for k in np.unique(part)])


@dataclass(frozen=True)
class PartFiles:
    """The stage's Parquet parts, with the global position of each part's first row."""

    paths: tuple[str, ...]
    starts: np.ndarray  # and the total at the end

    def part_of(self, positions: np.ndarray) -> np.ndarray:
        """The part each global row position falls in."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    def load(self, positions: np.ndarray, columns: list[str]) -> pl.DataFrame:
        """``columns`` of the Parquet parts at these global positions (ascending), in their order;
        only the parts they fall in are read."""
        parts = np.unique(self.part_of(positions))
        if not len(parts):
            return pl.DataFrame({c: [] for c in columns})
        sizes = np.diff(self.starts)[parts]
        first = np.cumsum(sizes) - sizes  # where each part read starts in the table of them all
        table = pl.read_parquet([self.paths[k] for k in parts], columns=columns)
        at = np.searchsorted(self.starts[parts], positions, side="right") - 1
        return table[positions - self.starts[parts][at] + first[at]]


def save_array(array: np.ndarray, path: Path) -> None:
    """A numpy array to ``path`` (.npy), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


DUPLICATES = pl.Schema({"pos": pl.Int64, "duplicate_of": pl.String, "score": pl.Float64})


def no_duplicates() -> pl.DataFrame:
    """An empty (pos, duplicate_of, score) frame: what ``write_plans`` takes."""
    return pl.DataFrame(schema=DUPLICATES)


def read_duplicates(plan: Path, height: int) -> tuple[pl.Series, pl.Series]:
    """A dedup plan for one part of ``height`` rows: each row's kept row id (null when kept) and
    its score (1.0 when none)."""
    dup_of = pl.Series("duplicate_of", [None] * height, dtype=pl.String)
    score = pl.Series("score", np.ones(height))
    if plan.exists():
        p = pl.read_parquet(plan)
        rows = p["row"].to_numpy()
        dup_of = dup_of.scatter(rows, p["duplicate_of"])
        score = score.scatter(rows, p["score"].fill_null(1.0))
    return dup_of, score


@dataclass
class InProcess:
    """A global step run here on a list of batches (``run_here``): what it kept and rejected, in
    input order, and what its pass recorded (e.g. minhash_dedup's candidate and checked pairs)."""

    kept: pl.DataFrame
    rejected: pl.DataFrame | None
    stats: dict[str, Any]


def run_here(step: Step, batches: list[pl.DataFrame], folder: Path) -> InProcess:
    """Run ``step`` (its plan, then its apply) over ``batches`` as the local engine runs a stage,
    with the parts written under ``folder``: for tests and benchmarks that want a step's result
    without a pipeline around it."""
    from curate.engines import LocalEngine

    parts, counts = [], []
    for k, batch in enumerate(batches):
        parts.append(folder / f"part-{k:05d}.parquet")
        batch.write_parquet(parts[-1])
        counts.append(batch.height)
    ctx = PassContext(LocalEngine(), parts, counts, folder / "_fit", lambda: iter(batches))
    planned = step.plan(ctx) if step.needs_global_pass else None
    kept, rejected = [], []
    for k, (batch, offset) in enumerate(zip(batches, ctx.starts[:-1].tolist(), strict=True)):
        result = planned(step, batch, offset, ctx.plan_file(k)) if planned else step.apply(batch, offset)
        kept.append(result.kept)
        if result.rejected is not None:
            rejected.append(result.rejected)
    done = json.loads((ctx.folder / "done.json").read_text()) if (ctx.folder / "done.json").exists() else {}
    return InProcess(pl.concat(kept) if kept else pl.DataFrame(), pl.concat(rejected) if rejected else None,
                     done.get("stats", {}))
