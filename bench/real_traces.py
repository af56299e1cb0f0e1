"""The real traces in ../shared/data/traces with the benchmark item each one answers, and the light
rewrites a contaminated problem gets (reformatted LaTeX, a changed number, "Find" -> "Determine").

Shared by tests/test_decontam.py and bench/bench_decontam.py: every trace file's `idx` is the row
of the benchmark file it was sampled on, which gives the ground truth for decontamination.
"""

from __future__ import annotations

import glob
import json
import random
import re
from pathlib import Path

import polars as pl

from curate import read

# trace file suffix -> (benchmark, original benchmark file, id field); the trace's `idx` is the row there
TRACE_BENCH = {
    "math500": ("math500", "simplerl_math500_test.jsonl", "unique_id"),
    "minerva": ("minerva", "simplerl_minerva_math_test.jsonl", "idx"),
    "olympiadbench": ("olympiadbench", "simplerl_olympiadbench_test.jsonl", "id"),
    "aime24": ("aime24", "simplerl_aime24_test.jsonl", "id"),
    "amc23": ("amc23", "simplerl_amc23_test.jsonl", "id"),
}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]


def traces_with_items(shared: Path) -> pl.DataFrame:
    """Every real trace, with `want_benchmark` and `want_item` (the item it answers)."""
    frames = []
    for f in sorted(glob.glob(str(shared / "traces" / "*.jsonl"))):
        name, src, key = TRACE_BENCH[f.rsplit("_", 1)[-1].removesuffix(".jsonl")]
        ids = [str(r[key]) for r in jsonl(shared / "benchmarks" / src)]
        for b in read(f).batches(5000):
            df = pl.from_arrow(b.traces)
            idx = df["extra"].map_elements(lambda e: json.loads(e)["idx"], return_dtype=pl.Int64)
            frames.append(df.with_columns(
                pl.lit(name).alias("want_benchmark"),
                idx.map_elements(lambda i, ids=ids: ids[i], return_dtype=pl.String).alias("want_item")))
    return pl.concat(frames)


def rewrite(text: str, how: str, rng: random.Random) -> str:
    """One light rewrite of a benchmark problem: how is latex, number or find."""
    if how == "latex":
        return re.sub(r"\s*([=+\-<>])\s*", r" \1 ", text).replace("\\frac", "\\dfrac").replace("$", "$ ")
    if how == "number":
        nums = list(re.finditer(r"\d+", text))
        if not nums:
            return text + " "
        m = rng.choice(nums)
        return text[: m.start()] + str(int(m.group()) + 7) + text[m.end():]
    pattern = r"\b(Find|Compute|Calculate|What is)\b"
    return re.sub(pattern, "Determine", text, count=1) if re.search(pattern, text) else "Determine: " + text
