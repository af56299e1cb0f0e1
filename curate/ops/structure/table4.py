"""Keywords per response by source: the seed paper's Table 4, on any traces curate can read.

    python -m curate.ops.structure.table4 ../shared/data/traces/*.jsonl
    python -m curate.ops.structure.table4 out/my_dataset/data      # a dataset folder's Parquet files

Runs the ``profile`` step (default keyword lists, approximate tokens unless --tokenizer) and
prints the mean keyword counts per response, per 1k tokens, tokens and steps, one row per source.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import polars as pl

from curate.io.read import read
from curate.ops.structure.step import Profile


def table4(paths: Sequence[str], tokenizer: str | None = None) -> pl.DataFrame:
    """One row per source: responses, keywords / reflection / backtracking per response, rates, tokens, steps."""
    profile = Profile(tokenizer=tokenizer)
    frames = []
    for path in paths:
        for batch in read(path).batches(4096):
            df = pl.from_arrow(batch.traces)
            frames.append(profile.apply(df, 0).kept.select("source", *profile.writes))
    if not frames:
        raise SystemExit("no rows read")
    rows = pl.concat(frames)
    return (rows.group_by("source", maintain_order=True).agg(
        pl.len().alias("responses"),
        pl.col("profile_keywords").mean().round(1).alias("keywords/resp"),
        pl.col("profile_reflection_keywords").mean().round(1).alias("reflection/resp"),
        pl.col("profile_backtrack_keywords").mean().round(1).alias("backtrack/resp"),
        pl.col("profile_keywords_per_1k").mean().round(2).alias("keywords/1k tok"),
        (pl.col("profile_thinking_tokens") + pl.col("profile_solution_tokens")).mean().round(0).alias("tokens/resp"),
        pl.col("profile_steps").mean().round(1).alias("steps/resp"),
        pl.col("profile_token_method").first().alias("tokens"),
    ))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="trace files or folders (any format `curate formats` lists)")
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer name or tokenizer.json (default: approximation)")
    args = ap.parse_args(argv)
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=220, tbl_formatting="MARKDOWN",
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, fmt_str_lengths=60):
        print(table4(args.paths, args.tokenizer))


if __name__ == "__main__":
    main()
