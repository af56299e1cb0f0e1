"""The units of work an engine runs: read one input split, apply a step to one part, write one shard.

Every stage folder holds one Parquet part per batch, written atomically with its counts in the
file metadata; an engine only decides *where* these functions run (a loop here, Ray workers on a
cluster), so the files, and so the dataset, come out the same.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import PipelineError
from curate.globalpass import PlannedApply
from curate.io.read import Source
from curate.io.write import (
    COMPRESSION,
    METADATA_KEY,
    WORK_COMPRESSION,
    replacing,
    write_parquet_atomic,
)
from curate.schema import SCHEMA_VERSION
from curate.step import REJECT_REASON, Step


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


def read_split(source: Source, s: int, folder: Path, schema: pa.Schema, batch_size: int) -> dict[str, int]:
    """Read input split ``s`` into parts ``part-SSSSS-KKKKK.parquet`` (and their read rejects);
    parts already written by a killed run are kept."""
    rows = 0
    t0 = time.perf_counter()
    for k, batch in enumerate(source.batches(batch_size)):
        part = folder / f"part-{s:05d}-{k:05d}.parquet"
        if not part.exists():
            if batch.rejects.num_rows:
                write_parquet_atomic(batch.rejects, folder / f"rejects-{s:05d}-{k:05d}.parquet")
            stats = {"rows_in": batch.rows, "rejected": batch.rejects.num_rows, "seconds": time.perf_counter() - t0}
            write_parquet_atomic(batch.traces.cast(schema), part, {"part": stats}, WORK_COMPRESSION)
        rows += batch.rows
        t0 = time.perf_counter()
    return {"rows": rows}


def apply_part(step: Step, i: int, task: PartTask, out_schema: pa.Schema, reject_schema: pa.Schema,
               planned: PlannedApply | None = None) -> dict[str, int]:
    """Run ``step`` on one part and write its kept rows (with counts) and its rejects, atomically."""
    batch = pl.read_parquet(task.src)
    t0 = time.perf_counter()
    if planned is not None and task.plan is not None:
        result = planned(step, batch, task.offset, Path(task.plan))
    else:
        result = step.apply(batch, task.offset)
    seconds = time.perf_counter() - t0
    kept, rejected = result.kept, result.rejected
    n_rej = 0 if rejected is None else rejected.height
    expected = step.output_rows(batch.height)
    if kept.height + n_rej != expected:
        raise PipelineError(
            f"step {i} '{step.name}' returned {kept.height} kept + {n_rej} rejected rows "
            f"for a batch of {batch.height} (expected {expected} in all): rows would be lost"
        )
    if n_rej:
        write_parquet_atomic(conform_rejects(rejected, reject_schema, step), task.rejects)
    stats: dict[str, Any] = {"rows_in": batch.height, "rejected": n_rej, "seconds": seconds}
    if expected != batch.height:
        stats["rows_out"] = expected
    if result.stats:
        stats["stats"] = result.stats
    write_parquet_atomic(conform(kept, out_schema, step), Path(task.dest), {"part": stats}, WORK_COMPRESSION)
    return {"rows": batch.height}


def write_shard(parts: list[tuple[str, int]], start: int, stop: int, dest: Path, schema: pa.Schema,
                metadata: dict[str, Any]) -> dict[str, int]:
    """Write rows [start, stop) of the parts (path, rows) in order as one published shard, atomically."""
    md = dict(schema.metadata or {})
    md[METADATA_KEY] = json.dumps({"schema_version": SCHEMA_VERSION, **metadata}, default=str).encode()
    schema = schema.with_metadata(md)
    dest.parent.mkdir(parents=True, exist_ok=True)
    at = 0
    with replacing(dest) as tmp, pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as writer:
        for path, rows in parts:
            lo, hi = max(start - at, 0), min(stop - at, rows)
            at += rows
            if hi <= lo:
                continue
            table = pq.ParquetFile(path).read().cast(schema)
            writer.write_table(table.slice(lo, hi - lo))
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
