"""The units of work an engine runs: read one input split, apply a step to one part, write one shard.

Every stage folder holds one Parquet part per batch, written atomically with its counts in the
file metadata; an engine only decides *where* these functions run (a loop here, Ray workers on a
cluster), so the files, and so the dataset, come out the same.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.cpus import available_cpus, in_order
from curate.errors import PipelineError
from curate.globalpass import PlannedApply
from curate.io.read import ReadBatch, Source
from curate.io.write import (
    COMPRESSION,
    METADATA_KEY,
    WORK_COMPRESSION,
    WriteBehind,
    read_ahead,
    replacing,
    write_parquet_atomic,
)
from curate.schema import SCHEMA_VERSION
from curate.step import REJECT_REASON, Step, StepResult


@dataclass(frozen=True)
class PartTask:
    """Apply a step to input part ``src`` (rows ``offset``.. of the stage), writing ``dest``."""

    k: int
    src: str
    dest: str
    offset: int
    plan: str | None = None  # a global pass's per-part result, read by the step's planned apply

    @property
    def rejects(self) -> Path:
        return Path(self.dest).with_name(f"rejects-{self.k:05d}.parquet")


# Parts sized by content when a pipeline sets no ``batch_size``: the reader assembles READ_BATCH_ROWS
# rows at a time and consecutive batches are joined until a part holds PART_MAX_ROWS rows or about
# PART_MAX_BYTES of Arrow data. Each part costs a file and a task in every stage (~5 ms a stage
# here), so 100k short problems (~390 B a row) make 10 parts instead of 98. Rows of over ~4 KB are
# not joined (1,024 rows a part, as with the fixed size): a stage holds a few parts at once (read
# ahead, on threads, written behind) and peak memory follows the part size (32 MiB parts: +300 MiB
# on 5 KB traces, measured). A pipeline with a step that keeps a model or a worker pool keeps
# 1,024-row parts (``Pipeline.part_rows``): a part is what a killed run redoes.
READ_BATCH_ROWS = 1024
PART_MAX_ROWS = 16_384
PART_MAX_BYTES = 4 << 20
AUTO_PARTS = f"auto:{READ_BATCH_ROWS}:{PART_MAX_ROWS}:{PART_MAX_BYTES}"  # fingerprints the rule


def read_split(source: Source, s: int, folder: Path, schema: pa.Schema, batch_size: int | None,
               on_part: Callable[[Path, pa.Table], None] | None = None) -> dict[str, int]:
    """Read input split ``s`` into parts ``part-SSSSS-KKKKK.parquet`` (and their read rejects) of
    ``batch_size`` rows each, or sized by content when it is None; parts already written by a
    killed run are kept. ``on_part`` gets each part's path and table as soon as it is read."""
    rows = 0
    t0 = time.perf_counter()
    batches = (source.batches(batch_size) if batch_size else
               joined(source.batches(READ_BATCH_ROWS), schema, PART_MAX_ROWS, PART_MAX_BYTES))
    with WriteBehind() as writer:  # part k is written while batch k + 1 is read
        for k, batch in enumerate(batches):
            part = folder / f"part-{s:05d}-{k:05d}.parquet"
            traces = batch.traces.cast(schema)
            if not part.exists():
                rejects = folder / f"rejects-{s:05d}-{k:05d}.parquet" if batch.rejects.num_rows else None
                stats = {"rows_in": batch.rows, "rejected": batch.rejects.num_rows,
                         "seconds": time.perf_counter() - t0}
                writer.submit(_write_read_part, traces, part, stats, batch.rejects, rejects)
            if on_part is not None:
                on_part(part, traces)
            rows += batch.rows
            t0 = time.perf_counter()
    return {"rows": rows}


class PartStream:
    """A stage's parts handed to the next stage as they are made: ``produce(put)`` runs on a
    thread (the read stage) and calls ``put(path, table)`` for each part, in order; iterating
    gets them, at most ``ahead`` waiting, and raises the producer's error. The producer still
    writes every part, so a killed run resumes as from separate stages."""

    _END = object()

    def __init__(self, produce: Callable[[Callable[[Path, pa.Table], None]], None], ahead: int = 2):
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(produce,), name="curate-stream", daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[Callable[[Path, pa.Table], None]], None]) -> None:
        try:
            produce(self._put)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer's thread
            self._error = e
        finally:
            self._offer(self._END)

    def _put(self, path: Path, table: pa.Table) -> None:
        if not self._offer((path, table)):
            raise _Stopped

    def _offer(self, item: Any) -> bool:
        """Queue ``item`` unless the consumer has stopped listening (False then)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[Path, pa.Table]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def finish(self) -> None:
        """Wait for the producer to end; raise its error."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop listening: the producer stops at its next part; wait for it."""
        self._stop.set()
        self._thread.join()


class _Stopped(Exception):
    """The consumer of a ``PartStream`` stopped: its producer ends quietly."""


def joined(batches: Iterator[ReadBatch], schema: pa.Schema, max_rows: int, max_bytes: int) -> Iterator[ReadBatch]:
    """Consecutive read batches joined into one batch per part: until it accounts for ``max_rows``
    candidate rows or holds ``max_bytes`` of Arrow data, whichever comes first."""
    held: list[ReadBatch] = []
    rows = size = 0
    for batch in batches:
        held.append(batch)
        rows += batch.rows
        size += batch.traces.nbytes + batch.rejects.nbytes
        if rows >= max_rows or size >= max_bytes:
            yield _join(held, schema)
            held, rows, size = [], 0, 0
    if held:
        yield _join(held, schema)


def _join(batches: list[ReadBatch], schema: pa.Schema) -> ReadBatch:
    if len(batches) == 1:
        return batches[0]
    return ReadBatch(pa.concat_tables([b.traces.cast(schema) for b in batches]),
                     pa.concat_tables([b.rejects for b in batches], promote_options="permissive"),
                     sum(b.rows for b in batches))


def _write_read_part(traces: pa.Table, part: Path, stats: dict[str, Any], rejects: pa.Table,
                     rejects_path: Path | None) -> None:
    """A read part's rejects, then the part itself (its existence says both are written)."""
    if rejects_path is not None:
        write_parquet_atomic(rejects, rejects_path, None, WORK_COMPRESSION)
    write_parquet_atomic(traces, part, {"part": stats}, WORK_COMPRESSION)


def apply_part(step: Step, i: int, task: PartTask, out_schema: pa.Schema, reject_schema: pa.Schema,
               planned: PlannedApply | None = None) -> dict[str, int]:
    """Run ``step`` on one part and write its kept rows (with counts) and its rejects, atomically."""
    batch = pl.read_parquet(task.src)
    t0 = time.perf_counter()
    result = _apply(step, batch, task, planned)
    return _write_result(step, i, task, batch, result, time.perf_counter() - t0, out_schema, reject_schema)


def apply_parts(step: Step, i: int, inputs: Iterable[tuple[PartTask, pa.Table]], out_schema: pa.Schema,
                reject_schema: pa.Schema, on_result: Callable[[dict[str, int]], Any] | None = None,
                threads: int = 1, planned: PlannedApply | None = None) -> None:
    """``apply_part`` for consecutive parts (each task with its input table: ``read_parts``, or
    a ``PartStream``'s) in this process, through ``step.apply_parts`` (or the planned apply of a
    global step): a step with a worker pool keeps it busy across parts, and a ``thread_safe``
    step's parts are applied ``threads`` at a time. Each part is written, in order, as soon as
    its result comes, so a killed run resumes from there."""
    held: deque[tuple[PartTask, pl.DataFrame]] = deque()  # given to the step, not yet written
    waited = [0.0]  # seconds spent waiting for input parts (a streamed read): not the step's time

    def parts() -> Iterator[tuple[pl.DataFrame, PartTask]]:
        source = iter(inputs)
        while True:
            w0 = time.perf_counter()
            task, table = next(source, (None, None))
            waited[0] += time.perf_counter() - w0
            if task is None:
                return
            batch = pl.from_arrow(table)
            held.append((task, batch))
            yield batch, task

    given = parts()
    if planned is not None or (threads > 1 and step.thread_safe):
        apply = partial(_apply, step, planned=planned)  # planned: no apply_parts
        results = in_order(lambda part: apply(*part), given, threads if step.thread_safe else 1)
    else:
        results = step.apply_parts((batch, task.offset) for batch, task in given)
    # part k is written while part k + 1 is applied; but a step that calls a model writes part k
    # before asking for the next: killed in between, a written-behind part would be paid for twice
    behind = step.model_settings() is None
    with WriteBehind() as writer:
        # a part's seconds: from the previous part's result to its own, less the wait for input
        t0, waited[0] = time.perf_counter(), 0.0
        for result in results:
            if not held:
                raise PipelineError(f"step {i} '{step.name}': apply_parts returned more results than parts")
            task, batch = held.popleft()
            seconds = max(0.0, time.perf_counter() - t0 - waited[0])
            info = _write_result(step, i, task, batch, result, seconds, out_schema, reject_schema,
                                 writer if behind else None)
            if on_result is not None:
                on_result(info)
            t0, waited[0] = time.perf_counter(), 0.0
        missing = held[0][0] if held else next(given, (None, None))[1]
        if missing is not None:
            raise PipelineError(f"step {i} '{step.name}': apply_parts stopped before part {missing.k}")


def read_parts(tasks: list[PartTask]) -> Iterator[tuple[PartTask, pa.Table]]:
    """Each task with its input part, read on a helper thread one part ahead."""
    return zip(tasks, read_ahead(t.src for t in tasks), strict=True)


def _apply(step: Step, batch: pl.DataFrame, task: PartTask, planned: PlannedApply | None = None) -> StepResult:
    """One part's result: the planned apply of a global step that wrote a plan, else ``apply``."""
    if planned is not None and task.plan is not None:
        return planned(step, batch, task.offset, Path(task.plan))
    return step.apply(batch, task.offset)


def local_threads() -> int:
    """Threads a thread-safe step's parts are applied on by default: the CPUs this process may
    use, at most 4 (each holds a part in memory)."""
    return min(available_cpus(), 4)


def _write_result(step: Step, i: int, task: PartTask, batch: pl.DataFrame, result: StepResult, seconds: float,
                  out_schema: pa.Schema, reject_schema: pa.Schema, writer: WriteBehind | None = None) -> dict[str, int]:
    """Check a part's result (no row lost) and write its kept rows, with counts, and its rejects
    (on ``writer``'s thread when given: the caller goes on while the part is encoded)."""
    kept, rejected = result.kept, result.rejected
    n_rej = 0 if rejected is None else rejected.height
    expected = step.output_rows(batch.height)
    if kept.height + n_rej != expected:
        raise PipelineError(
            f"step {i} '{step.name}' returned {kept.height} kept + {n_rej} rejected rows "
            f"for a batch of {batch.height} (expected {expected} in all): rows would be lost"
        )
    stats: dict[str, Any] = {"rows_in": batch.height, "rejected": n_rej, "seconds": seconds}
    if expected != batch.height:
        stats["rows_out"] = expected
    if result.stats:
        stats["stats"] = result.stats
    kept_table = conform(kept, out_schema, step)  # a step's wrong column type is its error, raised here
    rejects_table = conform_rejects(rejected, reject_schema, step) if n_rej else None

    def write() -> None:  # the rejects first: a part on disk means its rejects are too
        if rejects_table is not None:
            write_parquet_atomic(rejects_table, task.rejects, None, WORK_COMPRESSION)
        write_parquet_atomic(kept_table, Path(task.dest), {"part": stats}, WORK_COMPRESSION)

    if writer is None:
        write()
    else:
        writer.submit(write)
    return {"rows": batch.height}


def write_shard(parts: list[tuple[str, int]], start: int, stop: int, dest: Path, schema: pa.Schema,
                metadata: dict[str, Any]) -> dict[str, int]:
    """Write rows [start, stop) of the parts (path, rows) in order as one published shard, atomically."""
    md = dict(schema.metadata or {})
    md[METADATA_KEY] = json.dumps({"schema_version": SCHEMA_VERSION, **metadata}, default=str).encode()
    schema = schema.with_metadata(md)
    dest.parent.mkdir(parents=True, exist_ok=True)
    at, slices = 0, []
    for path, rows in parts:
        lo, hi = max(start - at, 0), min(stop - at, rows)
        at += rows
        if hi > lo:
            slices.append((path, lo, hi))
    with replacing(dest) as tmp, pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as writer:
        for (_, lo, hi), table in zip(slices, read_ahead(p for p, _, _ in slices), strict=True):
            writer.write_table(table.cast(schema).slice(lo, hi - lo))
    return {"rows": stop - start}


def reject_schema(out_schema: pa.Schema, step: Step) -> pa.Schema:
    fields = [pa.field("reject_step", pa.string()), pa.field(REJECT_REASON, pa.string())]
    fields += [pa.field(k, v) for k, v in step.reject_columns.items()]
    fields += [f for f in out_schema if f.name not in step.reject_columns]
    return pa.schema(fields)


def _to_schema(frame: pl.DataFrame, schema: pa.Schema, step: Step, what: str, fill: set[str]) -> pa.Table:
    table = frame.to_arrow()
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            try:
                cols.append(col.cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise PipelineError(f"step '{step.name}': column {f.name} of its {what} is {col.type}, "
                                    f"not {f.type}: {e}") from None
        elif f.name in fill:
            cols.append(pa.nulls(table.num_rows, f.type))
        else:
            raise PipelineError(f"step '{step.name}' did not produce column {f.name!r} in its {what}")
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise PipelineError(f"step '{step.name}' added undeclared column(s) {', '.join(sorted(extra))} "
                            f"to its {what}; declare them in `writes`")
    return pa.Table.from_arrays(cols, schema=schema)


def conform(kept: pl.DataFrame, schema: pa.Schema, step: Step) -> pa.Table:
    return _to_schema(kept, schema, step, "kept rows", set())


def conform_rejects(rejected: pl.DataFrame, schema: pa.Schema, step: Step) -> pa.Table:
    if REJECT_REASON not in rejected.columns:
        raise PipelineError(f"step '{step.name}' rejected rows without a {REJECT_REASON} column")
    rejected = rejected.with_columns(pl.lit(step.name).alias("reject_step"))
    fill = set(step.writes) | set(step.reject_columns)
    return _to_schema(rejected, schema, step, "rejected rows", fill)
