"""Summaries of a dataset folder: counts, columns, length statistics, the funnel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from curate.errors import InputError


def summarize(folder: str | Path) -> dict[str, Any]:
    """Key figures of a dataset folder written by a pipeline, as plain data."""
    root = Path(folder)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise InputError(f"{root}: no manifest.json: not a finished curate dataset folder")
    manifest = json.loads(manifest_path.read_text())
    files = [root / f for f in manifest["output"]["files"]]
    schema = pq.read_schema(files[0]) if files else None
    frame = pl.scan_parquet(files).select(
        pl.col("domain"), pl.col("source"),
        pl.col("problem").str.len_chars().alias("problem_chars"),
        pl.col("thinking").fill_null("").str.len_chars().alias("thinking_chars"),
        pl.col("solution").fill_null("").str.len_chars().alias("solution_chars"),
        pl.col("thinking_closed"),
    ).collect() if files else pl.DataFrame()
    lengths = []
    for col in ("problem_chars", "thinking_chars", "solution_chars"):
        s = frame[col] if frame.height else pl.Series([], dtype=pl.Int64)
        lengths.append({
            "column": col, "min": s.min(), "median": s.median(), "mean": s.mean(),
            "p90": s.quantile(0.9) if s.len() else None, "max": s.max(),
        })
    return {
        "rows": manifest["output"]["rows"],
        "files": manifest["output"]["files"],
        "columns": [(f.name, str(f.type)) for f in schema] if schema else [],
        "by_domain": frame.group_by("domain").len().sort("len", descending=True).rows() if frame.height else [],
        "by_source": frame.group_by("source").len().sort("len", descending=True).rows() if frame.height else [],
        "truncated": int((~frame["thinking_closed"].fill_null(True)).sum()) if frame.height else 0,
        "lengths": lengths,
        "funnel": manifest["funnel"],
        "rejects": manifest.get("rejects", []),
        "created": manifest.get("created"),
        "recipe": manifest.get("recipe"),
    }


def render(summary: dict[str, Any]) -> None:
    """Print a summary as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{summary['rows']}[/bold] rows in {len(summary['files'])} shard(s); "
                  f"{summary['truncated']} with an unclosed thinking block; created {summary['created']}")
    funnel = Table(title="Funnel")
    for col in ("step", "name", "rows_in", "kept", "rejected", "seconds"):
        funnel.add_column(col, justify="right" if col not in ("name",) else "left")
    for row in summary["funnel"]:
        funnel.add_row(*(str(row[c]) for c in ("step", "name", "rows_in", "kept", "rejected", "seconds")))
    console.print(funnel)
    lengths = Table(title="Lengths (characters)")
    for col in ("column", "min", "median", "mean", "p90", "max"):
        lengths.add_column(col, justify="right")
    for row in summary["lengths"]:
        lengths.add_row(*(_fmt(row[c]) for c in ("column", "min", "median", "mean", "p90", "max")))
    console.print(lengths)
    mix = Table(title="Mix")
    mix.add_column("by")
    mix.add_column("value")
    mix.add_column("rows", justify="right")
    for by in ("domain", "source"):
        for value, n in summary[f"by_{by}"]:
            mix.add_row(by, str(value), str(n))
    console.print(mix)
    cols = Table(title="Columns")
    cols.add_column("name")
    cols.add_column("type")
    for name, typ in summary["columns"]:
        cols.add_row(name, typ)
    console.print(cols)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "—" if v is None else str(v)
