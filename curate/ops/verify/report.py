"""Accuracy per source after a ``verify`` step: correct / incorrect / unverifiable counts.

The funnel counts rows per step; this splits the verify step's verdicts by ``source`` (kept rows
and the verify step's rejects together, so it works for keep: correct, all and incorrect).
``python -m curate.ops.verify.report OUT`` prints it for a finished dataset folder. ``source_accuracy``
is the one computation of accuracy per source: the run summary, this report and the card use it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from curate.card.section import CardContext, CardSection
    from curate.pipeline import RunResult

VERDICTS = ("correct", "incorrect", "unverifiable")


def source_accuracy(by_source: Mapping[str | None, Mapping[str, int]]) -> pl.DataFrame:
    """Per source (sorted, an unknown one first) from verdict counts ``{source: {correct,
    incorrect, unverifiable}}`` (a verify step's ``by_source`` stats): rows, the three counts,
    ``accuracy`` = correct / (correct + incorrect) and ``correct_share`` = correct / rows."""
    sources = sorted(by_source, key=lambda s: (s is not None, s or ""))
    frame = pl.DataFrame({"source": pl.Series(sources, dtype=pl.String),
                          **{v: pl.Series([by_source[s].get(v, 0) for s in sources], dtype=pl.UInt32)
                             for v in VERDICTS}})
    c, i, u = pl.col("correct"), pl.col("incorrect"), pl.col("unverifiable")
    return frame.select("source", (c + i + u).alias("rows"), *VERDICTS,
                        (c / (c + i)).alias("accuracy"), (c / (c + i + u)).alias("correct_share"))


def verdict_counts(frame: pl.DataFrame, unknown: str | None = "(unknown)") -> dict[str | None, dict[str, int]]:
    """``{source: {correct, incorrect, unverifiable}}`` from rows' ``verify_correct`` (true / false /
    null); a null source counts under ``unknown``."""
    v = pl.col("verify_correct")
    counts = frame.group_by(pl.col("source").fill_null(unknown) if unknown is not None else "source").agg(
        (v == True).sum().alias("correct"),  # noqa: E712
        (v == False).sum().alias("incorrect"),  # noqa: E712
        v.is_null().sum().alias("unverifiable"),
    )
    return {r["source"]: {k: r[k] for k in VERDICTS} for r in counts.iter_rows(named=True)}


def accuracy_by_source(frame: pl.DataFrame) -> pl.DataFrame:
    """rows, correct, incorrect, unverifiable and accuracy (correct / verified) per source."""
    return (source_accuracy(verdict_counts(frame)).drop("correct_share")
            .with_columns(pl.col("accuracy").round(4)))


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


def card_section(ctx: CardContext) -> CardSection:
    """``verify``'s part of the dataset card: accuracy per source (correct / all rows the step saw)
    from each verify stage's stats, else from the kept rows' ``verify_correct``; the tag
    ``verified``; what was and was not checked, as a limitation."""
    from curate.card.section import CardSection, table

    rows = _verification(ctx)
    section = CardSection(key="verification", figures=rows, order=10)
    if rows:
        section.markdown = [
            "## Verification", "", "Answers checked against the reference answers (`verify`); accuracy is "
            "correct / all rows the step saw.", "",
            table(["where", "source", "rows", "correct", "incorrect", "unverifiable", "accuracy"],
                  [[r["where"], r["source"], r["rows"], r["correct"], r["incorrect"], r["unverifiable"],
                    _percent(r["accuracy"])] for r in rows]), ""]
        section.tables = [("Verification", ["where", "source", "rows", "correct", "accuracy"],
                           [[r["where"], r["source"], r["rows"], r["correct"], _percent(r["accuracy"])]
                            for r in rows])]
    if ctx.stages(configs=False):
        section.tags = ["verified"]
        unverifiable = sum(r["unverifiable"] for r in rows)
        section.limitations = [f"Verification is automatic (math-verify / tests); {unverifiable:,} rows were "
                               "unverifiable and a checker can be wrong on unusual answer formats."]
    else:
        section.limitations = ["Final answers were not checked against reference answers in the base rows"
                               + (f" (only some variants ran `{ctx.step}`)." if ctx.stages() else ".")]
    return section


def _verification(ctx: CardContext) -> list[dict[str, Any]]:
    """Per stage and source: rows, verdict counts and correct / rows; else the kept rows'."""
    rows = []
    for stage in ctx.stages():
        by_source = stage.stats.get("by_source", {})
        for r in source_accuracy(by_source).iter_rows(named=True) if by_source else ():
            rows.append({"where": stage.where, **_counts(r)})
    if rows:
        return rows
    frame = ctx.rows()
    if "verify_correct" not in frame.columns or not frame.height:
        return []
    return [{"where": "kept rows", **_counts(r)}
            for r in source_accuracy(verdict_counts(frame, unknown=None)).iter_rows(named=True)]


def _counts(r: dict[str, Any]) -> dict[str, Any]:
    return {"source": r["source"], "rows": r["rows"], **{v: r[v] for v in VERDICTS},
            "accuracy": r["correct_share"] if r["rows"] else None}


def _percent(share: float | None) -> str | None:
    return f"{share:.1%}" if share is not None else None


def main(argv: list[str] | None = None) -> int:
    import json

    from curate.pipeline import MANIFEST, RunResult

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
