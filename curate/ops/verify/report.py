"""Accuracy per source after a ``verify`` step: correct / incorrect / unverifiable counts.

The funnel counts rows per step; this splits the verify step's verdicts by ``source`` (kept rows
and the verify step's rejects together, so it works for keep: correct, all and incorrect).
``python -m curate.ops.verify.report OUT`` prints it for a finished dataset folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from curate.pipeline import MANIFEST, RunResult


def accuracy_by_source(frame: pl.DataFrame) -> pl.DataFrame:
    """rows, correct, incorrect, unverifiable and accuracy (correct / verified) per source."""
    v = pl.col("verify_correct")
    return (
        frame.group_by(pl.col("source").fill_null("(unknown)"))
        .agg(
            pl.len().alias("rows"),
            (v == True).sum().alias("correct"),  # noqa: E712
            (v == False).sum().alias("incorrect"),  # noqa: E712
            v.is_null().sum().alias("unverifiable"),
        )
        .with_columns((pl.col("correct") / (pl.col("correct") + pl.col("incorrect"))).round(4).alias("accuracy"))
        .sort("source")
    )


def verify_report(result: RunResult, step: str = "verify") -> pl.DataFrame:
    """Per-source accuracy of a run: its output rows plus the rows ``step`` rejected."""
    cols = ["source", "verify_correct"]
    parts = []
    out = result.to_polars()
    if "verify_correct" in out.columns:
        parts.append(out.select(cols))
    rejects = result.rejects(step)
    if rejects.height and "verify_correct" in rejects.columns:
        parts.append(rejects.select(cols))
    if not parts:
        raise ValueError(f"no verify_correct column in {result.out}: did the recipe run a verify step?")
    return accuracy_by_source(pl.concat(parts, how="vertical_relaxed"))


def main(argv: list[str] | None = None) -> int:
    import json

    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m curate.ops.verify.report DATASET_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    manifest = json.loads((folder / MANIFEST).read_text())
    with pl.Config(tbl_rows=100, tbl_width_chars=120):
        print(verify_report(RunResult(folder, manifest)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
