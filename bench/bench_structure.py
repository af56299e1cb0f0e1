"""Segment + profile + every corruption on N real-length traces: rows/s per operator, one process.

The corpus tiles the real long-CoT traces in ../shared/data/traces (MATH-500 to AIME lengths, with
and without thinking markers) to N rows, each with its own id, so per-row RNGs differ. Operators run
in-process on 1024-row polars batches, as the runner feeds them; global operators' fit pass is timed
separately. Also prints the paper's Table 4 shape (keywords per response) on the real traces.

    python bench/bench_structure.py --rows 100000            # the issue's size
    python bench/bench_structure.py --table4                  # keyword table only
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import polars as pl

from curate import read
from curate.ops.corrupt import (
    CorruptDigits,
    CorruptWrongAnswer,
    DeleteSteps,
    InsertSteps,
    RemoveKeywords,
    ShuffleSteps,
)
from curate.ops.structure.keywords import keyword_pattern
from curate.ops.structure.step import Profile, SegmentSteps

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "data" / "traces"
BATCH = 1024


def real_traces() -> pl.DataFrame:
    frames = []
    for f in sorted(TRACES.glob("*.jsonl")):
        frames.append(pl.concat([pl.from_arrow(b.traces) for b in read(f).batches(4096)]))
    return pl.concat(frames)


def corpus(rows: int) -> pl.DataFrame:
    base = real_traces()
    reps = -(-rows // base.height)
    df = pl.concat([base] * reps).head(rows)
    return df.with_columns((pl.col("id") + "-" + pl.int_range(pl.len()).cast(pl.String)).alias("id"))


def batches(df: pl.DataFrame):  # noqa: ANN201
    for i in range(0, df.height, BATCH):
        yield df.slice(i, BATCH)


def bench(df: pl.DataFrame) -> list[dict]:
    ops = [
        SegmentSteps(), Profile(),
        CorruptDigits(ratio=0.7), CorruptDigits(ratio=0.7, unit="digit"),
        RemoveKeywords(ratio=1.0), RemoveKeywords(ratio=1.0, mode="phrase"),
        ShuffleSteps(ratio=0.67), DeleteSteps(ratio=0.67), InsertSteps(ratio=0.67),
        CorruptWrongAnswer(),
    ]
    out = []
    for op in ops:
        label = getattr(op, "kind", lambda o=op: o.name)()
        fit_s = 0.0
        if op.needs_global_pass:
            t0 = time.perf_counter()
            op.fit(batches(df))
            fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept = 0
        for b in batches(df):
            kept += op.apply(b, 0).kept.height
        apply_s = time.perf_counter() - t0
        total = fit_s + apply_s
        out.append({"op": label, "rows": df.height, "kept": kept, "fit_s": round(fit_s, 1),
                    "apply_s": round(apply_s, 1), "rows_per_s": round(df.height / total)})
        print(out[-1], flush=True)
    return out


def table4() -> pl.DataFrame:
    """Keywords per response on the real traces, by file (the paper's Table 4 shape)."""
    frames = []
    wait_alt = keyword_pattern(("wait", "alternatively"))
    for f in sorted(TRACES.glob("*.jsonl")):
        df = pl.concat([pl.from_arrow(b.traces) for b in read(f).batches(4096)])
        p = Profile().apply(df, 0).kept
        resp = [t + "\n\n" + s for t, s in zip(p["thinking"], p["solution"], strict=True)]
        p = p.with_columns(pl.Series("wait_alt", [len(wait_alt.findall(r)) for r in resp]))
        frames.append(p.select(
            pl.lit(f.stem.removeprefix("skythought_")).alias("traces"),
            pl.len().alias("responses"),
            pl.col("profile_keywords").mean().round(1).alias("keywords/resp"),
            pl.col("profile_reflection_keywords").mean().round(1).alias("reflection/resp"),
            pl.col("profile_backtrack_keywords").mean().round(1).alias("backtrack/resp"),
            pl.col("wait_alt").mean().round(1).alias("wait+alternatively/resp"),
            pl.col("profile_keywords_per_1k").mean().round(2).alias("keywords/1k tok"),
            (pl.col("profile_thinking_tokens") + pl.col("profile_solution_tokens")).mean().round(0).alias("tokens/resp"),
            pl.col("profile_steps").mean().round(1).alias("steps (thinking)"),
        ).head(1))
    return pl.concat(frames)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--table4", action="store_true", help="only print the keyword table")
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, polars {pl.__version__}")
    with pl.Config(tbl_rows=20, tbl_cols=20, tbl_width_chars=200, tbl_formatting="MARKDOWN", tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        print(table4())
        if args.table4:
            return
        t0 = time.perf_counter()
        df = corpus(args.rows)
        chars = df.select(pl.col("thinking").str.len_chars().sum() + pl.col("solution").str.len_chars().sum()).item()
        print(f"corpus: {df.height} rows, {chars / df.height / 1000:.1f}k chars/row (thinking+solution), "
              f"built in {time.perf_counter() - t0:.1f}s")
        rows = bench(df)
        # what a re-read of the input would cost each variant, for scale: the corpus as Parquet
        path = ROOT / "bench" / "_work" / f"structure_{args.rows}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path)
        t0 = time.perf_counter()
        n = sum(b.height for b in pl.read_parquet(path).iter_slices(BATCH))
        read_s = time.perf_counter() - t0
        rows.append({"op": "(read the corpus back from Parquet)", "rows": n, "kept": n, "fit_s": 0.0,
                     "apply_s": round(read_s, 1), "rows_per_s": round(n / read_s)})
        path.unlink()
        print(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
