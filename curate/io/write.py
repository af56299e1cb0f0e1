"""Atomic Parquet writes and the HF-hub shard layout (``data/[config/]train-00000-of-00004.parquet``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"curate"
COMPRESSION = "zstd"  # published shards: small on the hub
WORK_COMPRESSION = "lz4"  # intermediate stage parts: 2-3x faster to read back than zstd, written once


def temp_path(path: Path) -> Path:
    """A hidden name beside ``path`` for writing it; unique per process, so two writers of one
    part (a worker of a killed run still finishing, and its resumed run) never share a file."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary name to write ``path`` to; rename it into place when the block ends, or
    delete it when the block fails (a full disk, an error), so no partial file stays behind."""
    tmp = temp_path(path)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: Path, metadata: dict[str, Any] | None = None,
                         compression: str = COMPRESSION) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata is not None:
        md = dict(table.schema.metadata or {})
        md[METADATA_KEY] = json.dumps(metadata, default=str).encode()
        table = table.replace_schema_metadata(md)
    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression=compression)


def write_json_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")


def read_metadata(path: Path) -> dict[str, Any]:
    md = pq.read_schema(path).metadata or {}
    raw = md.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def shard_names(n: int, split: str = "train", config: str | None = None) -> list[str]:
    prefix = f"data/{config}/" if config else "data/"
    return [f"{prefix}{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def concat_parquet(paths: list[Path], dest: Path, schema: pa.Schema) -> int:
    """Stream several Parquet files of one schema into one file, atomically; returns rows written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with replacing(dest) as tmp, pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as w:
        for p in paths:
            t = pq.ParquetFile(p).read().cast(schema)
            rows += t.num_rows
            if t.num_rows:
                w.write_table(t)
    return rows


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
