"""Decontamination: throughput on 100k problems, and the real-data checks with every flagged problem listed.

    python bench/bench_decontam.py            # ~1 minute on 2 cores; prints Markdown
    python bench/bench_decontam.py --rows 20000

1. Throughput: ``decontaminate`` (defaults: ngram 8 + exact + fuzzy, every bundled benchmark)
   over 100k real-length problems (the real training problems, each made distinct by replacing a
   quarter of its words) in 10k-row batches, as a pipeline would; rows/s and peak RSS. Also
   the same on the real traces with ``fields: [problem, thinking, solution]`` (long responses).
2. Every real trace (../shared/data/traces) must be flagged with the benchmark and item it answers.
3. The real training problems (../shared/data/problems): each flagged one is listed with a
   category computed from the texts (see ``category``).
4. Light rewrites of benchmark problems (LaTeX spacing, a changed number, Find->Determine) mixed
   into 2,000 clean training problems: recall and false positives.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import sys
import time
from pathlib import Path

import polars as pl
from rapidfuzz import fuzz

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.real_traces import rewrite, traces_with_items  # noqa: E402
from curate.decontam import benchmarks as bench  # noqa: E402
from curate.decontam.text import normalise  # noqa: E402
from curate.ops import Decontaminate  # noqa: E402

SHARED = Path(os.environ.get("CURATE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
def problems() -> pl.DataFrame:
    rows = []
    for f in sorted((SHARED / "problems").glob("*.json")):
        for k, r in enumerate(json.loads(f.read_text())):
            rows.append({"id": f"{f.stem}:{k}", "problem": r["problem"],
                         "year": str(r.get("year", "")), "number": str(r.get("problem_number", ""))})
    return pl.DataFrame(rows)


def traces() -> pl.DataFrame:
    return traces_with_items(SHARED)


def corpus(n: int, real: list[str], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [w for t in real[:3000] for w in t.split(" ") if w.isalpha()]
    return [" ".join(rng.choice(vocab) if rng.random() < 0.25 else w for w in rng.choice(real).split(" "))
            for _ in range(n)]


def throughput(step: Decontaminate, frame: pl.DataFrame, batch: int = 10_000) -> tuple[float, int]:
    t0 = time.perf_counter()
    step.index  # noqa: B018  (build the index: counted in the time)
    flagged = 0
    for part in frame.iter_slices(batch):
        result = step.apply(part, 0)
        flagged += 0 if result.rejected is None else result.rejected.height
    return time.perf_counter() - t0, flagged


def category(train: str, item: str | None) -> str:
    """Why a training problem matched: computed from the two texts, not written by hand."""
    if item is None:
        return "GPQA fingerprint match"
    a, b = normalise(train), normalise(item)
    if a == b:
        return "A. verbatim: the benchmark reuses this problem"
    if bench.exact_key(train) == bench.exact_key(item):
        return "B. same text once digits/punctuation are stripped (Light-R1's case: same template, other numbers)"
    if fuzz.ratio(a, b) >= 90:
        return "C. near-identical text (Indel ratio >= 0.90): same template, one expression or word changed"
    nodigits_a, nodigits_b = re.sub(r"\d+", "#", a), re.sub(r"\d+", "#", b)
    if fuzz.ratio(nodigits_a, nodigits_b) >= 85:
        return "D. same template once numbers are masked"
    return "E. shares a long setup/boilerplate with a different question (false positive)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    probs = problems()
    trs = traces()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, python {platform.python_version()}\n")

    # 1. throughput
    big = pl.DataFrame({"problem": corpus(args.rows, probs["problem"].to_list())})
    seconds, flagged = throughput(Decontaminate(), big)
    print("## Throughput\n")
    print("| input | rows | fields | seconds (incl. index build) | rows/s | flagged |")
    print("|---|---|---|---|---|---|")
    print(f"| real-length problems, words perturbed | {big.height} | problem | {seconds:.1f} | {big.height / seconds:,.0f} | {flagged} |")
    seconds, flagged = throughput(Decontaminate(fields=["problem", "thinking", "solution"]), trs, 500)
    chars = int(trs.select(pl.col("thinking").str.len_chars().sum() + pl.col("solution").str.len_chars().sum()).item())
    print(f"| real traces ({chars / trs.height:,.0f} response chars each) | {trs.height} | problem, thinking, solution "
          f"| {seconds:.1f} | {trs.height / seconds:,.0f} | {flagged} |")
    print(f"\npeak RSS so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB\n")

    # 2. traces
    step = Decontaminate()
    found = step.matches(trs)
    got = trs.with_row_index("row").join(found.with_columns(pl.col("row").cast(pl.UInt32)), on="row", how="left")
    right = got.filter((pl.col("decontam_benchmark") == pl.col("want_benchmark")) & (pl.col("decontam_item") == pl.col("want_item")))
    print("## Real traces\n")
    print(f"{found.height} of {trs.height} traces flagged; {right.height} with the right benchmark and item.\n")
    print(got.group_by("want_benchmark").agg(pl.len().alias("traces"), pl.col("decontam_benchmark").is_not_null().sum().alias("flagged"),
                                             pl.col("decontam_method").value_counts().alias("methods")).sort("want_benchmark"))

    # 3. training problems
    found = step.matches(probs)
    hit = probs.with_row_index("row").join(found.with_columns(pl.col("row").cast(pl.UInt32)), on="row")
    index = step.index
    cats = []
    for r in hit.iter_rows(named=True):
        b = bench.load(r["decontam_benchmark"])
        item = b.problems[b.ids.index(r["decontam_item"])] if b.has_text else None
        cats.append(category(r["problem"], item))
    hit = hit.with_columns(pl.Series("category", cats))
    print(f"\n## Real training problems: {hit.height} of {probs.height} flagged ({hit.height / probs.height:.2%})\n")
    print(hit.group_by("category").len().sort("len", descending=True))
    print("\n| # | training row | benchmark item | method | score | category | training problem (start) | benchmark problem (start) |")
    print("|---|---|---|---|---|---|---|---|")
    for k, r in enumerate(hit.sort("category", "decontam_benchmark").iter_rows(named=True), 1):
        b = bench.load(r["decontam_benchmark"])
        item = b.problems[b.ids.index(r["decontam_item"])] if b.has_text else "(fingerprint)"
        src = r["id"] + (f" (AIME {r['year']} #{r['number']})" if r["year"] else "")
        clip = lambda t: t[:90].replace("|", "\\|").replace("\n", " ")  # noqa: E731
        print(f"| {k} | {src} | {r['decontam_benchmark']} {r['decontam_item']} | {r['decontam_method']} | "
              f"{r['decontam_score']:.2f} | {r['category']} | {clip(r['problem'])} | {clip(item)} |")
    del index

    # 4. rewrites among clean problems
    rng = random.Random(5)
    items = []
    for name in ("math500", "aime24", "aime25", "amc23", "gsm8k", "minerva", "olympiadbench"):
        b = bench.load(name)
        for k in rng.sample(range(len(b)), min(60, len(b))):
            how = ("latex", "number", "find")[len(items) % 3]
            items.append((name, b.ids[k], how, rewrite(b.problems[k], how, rng)))
    clean = probs.filter(~pl.col("id").is_in(hit["id"].to_list())).sample(2000, seed=2)
    mixed = pl.DataFrame({"problem": [t for *_, t in items] + clean["problem"].to_list()})
    found = step.matches(mixed)
    per = {}
    for r in found.filter(pl.col("row") < len(items)).iter_rows(named=True):
        name, item, how, _ = items[r["row"]]
        per.setdefault(how, []).append((r["decontam_benchmark"], r["decontam_item"]) == (name, item))
    print("\n## Light rewrites of benchmark problems among clean training problems\n")
    print("| rewrite | items | caught with the right item |")
    print("|---|---|---|")
    for how in ("latex", "number", "find"):
        n = sum(1 for i in items if i[2] == how)
        print(f"| {how} | {n} | {sum(per.get(how, []))} ({sum(per.get(how, [])) / n:.1%}) |")
    fp = found.filter(pl.col("row") >= len(items)).height
    print(f"\nfalse positives among {clean.height} clean training problems (ones not flagged in section 3): {fp}")


if __name__ == "__main__":
    main()
