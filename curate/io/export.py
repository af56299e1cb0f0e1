"""Exporters: a dataset folder to SFT chat `messages`, or back to the Sky-T1 layout."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import InputError
from curate.io.markers import join_response
from curate.prompts import SKY_T1_SYSTEM

_TURN = pa.struct([("role", pa.string()), ("content", pa.large_string())])
MESSAGES_SCHEMA = pa.schema([("id", pa.string()), ("messages", pa.list_(_TURN))])
SKY_T1_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("system", pa.large_string()),
    ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.large_string())]))),
])
_COLUMNS = ("id", "problem", "thinking", "solution", "thinking_closed")


def _dataset_files(dataset: str | os.PathLike, config: str | None) -> list[Path]:
    root = Path(dataset)
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset folder")
    manifest = root / "manifest.json"
    if manifest.exists():
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            files = [root / f for f in doc["output"]["files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{manifest}: not a curate manifest ({e!r})") from None
        configs = list(doc.get("configs") or {})
        if configs and config is None:  # never mix variants silently
            raise InputError(f"{root} has configs {', '.join(configs)}; name one (config= / --config)")
        if config:
            if configs and config not in configs:
                raise InputError(f"{root}: no config {config!r}; configs: {', '.join(configs)}")
            files = [f for f in files if f.parent.name == config]
    else:
        folder = root / "data" / config if config else root / "data"
        files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        raise InputError(f"{root}: no dataset shards found (expected data/*.parquet or a manifest.json)")
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: listed in the manifest but missing")
        names = pq.read_schema(f).names
        missing = [c for c in _COLUMNS if c not in names]
        if missing:
            raise InputError(f"{f}: not a curate shard (no column {', '.join(missing)})")
    return files


def _rows(files: list[Path]) -> Iterator[dict[str, Any]]:
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=512, columns=list(_COLUMNS)):
            yield from batch.to_pylist()


def export(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: Literal["messages", "sky-t1"] = "messages",
    style: Literal["think", "sky-t1", "none"] | None = None,
    system_prompt: str | None = None,
    config: str | None = None,
) -> int:
    """Write a dataset folder's traces as chat rows to ``out`` (.jsonl or .parquet); returns rows.

    ``to="messages"``: ``{"id", "messages": [system?, user, assistant]}`` with the thinking wrapped
    in ``<think>`` tags (``style="think"``, default) or Sky-T1 markers. ``to="sky-t1"``:
    ``{"system", "conversations": [{"from": "user"}, {"from": "assistant"}]}`` with Sky-T1 markers and,
    unless ``system_prompt`` is given, Sky-T1's own system prompt (:data:`curate.prompts.SKY_T1_SYSTEM`).
    Truncated traces (``thinking_closed`` false) keep their open thinking block, so reading the
    export back gives the same problem, thinking, solution and flag.
    """
    if to not in ("messages", "sky-t1"):
        raise ValueError(f"to must be 'messages' or 'sky-t1', not {to!r}")
    style = style or ("think" if to == "messages" else "sky-t1")
    if style not in ("think", "sky-t1", "none"):
        raise ValueError(f"style must be 'think', 'sky-t1' or 'none', not {style!r}")
    out = Path(out)
    if out.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"{out}: export writes .jsonl or .parquet")
    files = _dataset_files(dataset, config)

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        response = join_response(row["thinking"] or "", row["solution"] or "", style, row["thinking_closed"])
        if to == "messages":
            msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
            msgs += [{"role": "user", "content": row["problem"]}, {"role": "assistant", "content": response}]
            return {"id": row["id"], "messages": msgs}
        return {"id": row["id"], "system": system_prompt or SKY_T1_SYSTEM,
                "conversations": [{"from": "user", "value": row["problem"]},
                                  {"from": "assistant", "value": response}]}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    n = 0
    try:
        if out.suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for row in _rows(files):
                    f.write(json.dumps(convert(row), ensure_ascii=False) + "\n")
                    n += 1
        else:
            schema = MESSAGES_SCHEMA if to == "messages" else SKY_T1_SCHEMA
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                chunk: list[dict[str, Any]] = []
                for row in _rows(files):
                    chunk.append(convert(row))
                    if len(chunk) == 512:
                        writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                        n += len(chunk)
                        chunk = []
                if chunk:
                    writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                    n += len(chunk)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n
