"""Decontamination: the whole command against the script a user would write, and the real-data checks.

    python bench/bench_decontam.py --whole    # `curate run` vs bench/decontam_peer.py, ~4 minutes
    python bench/bench_decontam.py --step     # the step alone, CPU seconds in process, ~1 minute
    python bench/bench_decontam.py            # in-process throughput and the quality sections
    python bench/bench_decontam.py --rows 20000

0. ``--whole``: whole processes, interleaved (curate, curate --no-card, peer, curate, ...), same
   input files: ``curate run`` of a one-step recipe (read JSONL, decontaminate at its defaults,
   write shards, rejects, manifest, card), the same without the card (so the step's progress shows
   apart from the card's), against open-r1's 8-gram script (bench/decontam_peer.py). Inputs:
   100k real-length problems (real training problems, a quarter of their words replaced) with
   ``fields: [problem]``, and 10k real-length traces (the real traces' responses, half with a
   perturbed problem) with ``fields: [problem, thinking, solution]``. Wall seconds (median), CPU
   seconds (user+sys, median) and peak RSS of each process (``/usr/bin/time``), and the
   decontaminate stage's own seconds from the manifest.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from rapidfuzz import fuzz

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import compile_bytecode, rotated  # noqa: E402
from bench.real_traces import rewrite, traces_with_items  # noqa: E402
from curate.ops import Decontaminate  # noqa: E402
from curate.ops.decontam import benchmarks as bench  # noqa: E402
from curate.text import normalise  # noqa: E402

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


def write_inputs(folder: Path, rows: int, n_traces: int, seed: int = 0) -> dict[str, tuple[Path, str, list[str]]]:
    """The two inputs as JSONL (LIMO layout for problems, harness layout for traces), with their
    recipe, the fields the peer checks, and what curate searches."""
    rng = random.Random(seed)
    probs = [r for f in sorted((SHARED / "problems").glob("*.json")) for r in json.loads(f.read_text())]
    real = [p["problem"] for p in probs]
    vocab = [w for t in real[:3000] for w in t.split(" ") if w.isalpha()]

    def perturb(text: str) -> str:
        return " ".join(rng.choice(vocab) if rng.random() < 0.25 else w for w in text.split(" "))

    with open(folder / "problems.jsonl", "w", encoding="utf-8") as f:
        for i in range(rows):
            p = rng.choice(probs)
            f.write(json.dumps({"id": f"p{i}", "question": perturb(p["problem"]), "answer": str(p["answer"]),
                                "solution": f"The answer is $\\boxed{{{p['answer']}}}$."}) + "\n")
    real_traces = []
    for t in sorted((SHARED / "traces").glob("*.jsonl")):
        for line in t.open(encoding="utf-8"):
            r = json.loads(line)
            code = json.loads(r["code"]) if isinstance(r["code"], str) else r["code"]
            real_traces.append((r["question"], code[0], r["gt"]))
    with open(folder / "traces.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_traces):
            q, response, gt = rng.choice(real_traces)
            f.write(json.dumps({"idx": i, "question": perturb(q) if rng.random() < 0.5 else q, "gt": gt,
                                "code": [response]}) + "\n")
    jobs = {"problems": ("limo", ["problem"], ["question"]),  # peer: the same text, by its JSON keys
            "traces": ("harness", ["problem", "thinking", "solution"], ["question", "code"])}
    out = {}
    for name, (fmt, fields, peer_fields) in jobs.items():
        recipe = folder / f"{name}.yaml"
        recipe.write_text(f"name: decontam_{name}\ninput: {{path: {name}.jsonl, format: {fmt}}}\n"
                          f"steps:\n  - decontaminate: {{fields: [{', '.join(fields)}]}}\n"
                          f"output: {{path: out_{name}}}\n")
        out[name] = (recipe, name, peer_fields)
    return out


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MiB), the last output line and CPU seconds (user+sys) of one whole process."""
    # /usr/bin/time reports the command's own peak RSS and CPU (wait4 here would count this parent's
    # pages, copied into the child between fork and exec)
    rss = cwd / "rss.txt"
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss), *cmd], cwd=cwd, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    peak, user, system = rss.read_text().split()[-3:]
    return seconds, int(peak) / 1024, proc.stdout.strip().splitlines()[-1], float(user) + float(system)


def whole(rows: int, n_traces: int, reps: int) -> None:
    """`curate run` (with and without the card) against the peer script, whole processes, interleaved."""
    root = Path(__file__).resolve().parent.parent
    env_python = sys.executable
    compile_bytecode()
    load = os.getloadavg()[0]
    print("## Whole command: `curate run` vs open-r1's 8-gram script\n")
    print("Median wall seconds of each contender and, in brackets, its median CPU seconds (user+sys);")
    print("peer / curate is the ratio of wall seconds (> 1: curate is faster).\n")
    print("| input | fields | curate s [CPU] | curate --no-card s [CPU] | peer s [CPU] | peer / curate "
          "| peer / curate --no-card | decontaminate step s (manifest) | curate peak MiB | peer peak MiB "
          "| flagged curate / peer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="curate-bench-decontam-") as tmp:
        folder = Path(tmp)
        jobs = write_inputs(folder, rows, n_traces)
        for name, (recipe, stem, peer_fields) in jobs.items():
            cmds = {"curate": [env_python, "-m", "curate.cli", "run", str(recipe), "--overwrite"],
                    "no_card": [env_python, "-m", "curate.cli", "run", str(recipe), "--overwrite", "--no-card",
                                "--out", f"nocard_{stem}"],
                    "peer": [env_python, str(root / "bench" / "decontam_peer.py"),
                             f"{stem}.jsonl", f"peer_{stem}.jsonl", "--fields", *peer_fields]}
            runs: dict[str, list[tuple[float, float, str, float]]] = {k: [] for k in cmds}
            step_s = []
            for r in range(reps):
                for key in rotated(list(cmds), r):
                    runs[key].append(timed(cmds[key], folder))
                    if key == "no_card":
                        step_s.append(_stage(folder / f"nocard_{stem}")["decontaminate"]["seconds"])
            wall = {k: sorted(r[0] for r in v)[reps // 2] for k, v in runs.items()}
            cpu = {k: sorted(r[3] for r in v)[reps // 2] for k, v in runs.items()}
            peak = {k: max(r[1] for r in v) for k, v in runs.items()}
            stage = _stage(folder / f"out_{stem}")
            flagged = stage["decontaminate"]["rejected"]
            peer_flagged = runs["peer"][-1][2].rsplit(" ", 1)[-1]
            n = rows if name == "problems" else n_traces
            print(f"| {n:,} {name} | {'problem' if name == 'problems' else 'problem, thinking, solution'} | "
                  f"{wall['curate']:.1f} [{cpu['curate']:.1f}] | {wall['no_card']:.1f} [{cpu['no_card']:.1f}] | "
                  f"{wall['peer']:.1f} [{cpu['peer']:.1f}] | {wall['peer'] / wall['curate']:.2f} | "
                  f"{wall['peer'] / wall['no_card']:.2f} | {sorted(step_s)[reps // 2]:.1f} | "
                  f"{peak['curate']:.0f} | {peak['peer']:.0f} | {flagged} / {peer_flagged} |")
            print(f"<!-- {name}: " + "; ".join(f"{k} {[(round(r[0], 1), round(r[3], 1)) for r in v]} (wall, CPU)"
                                              for k, v in runs.items())
                  + f"; last curate run: read {stage['read']['seconds']:.1f} s, decontaminate "
                  f"{stage['decontaminate']['seconds']:.1f} s -->")
    print(f"\nload average (1 min) at the start: {load:.1f}, at the end: {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} cores)\n")


def step_alone(rows: int, n_traces: int, reps: int) -> None:
    """The step alone, in this process, on the parts ``curate run`` feeds it (its read stage's
    1,024-row parts): CPU seconds (``process_time``: all threads, little moved by other processes)
    of building the index (``prepare`` and a first one-row part) and of applying the step to every
    part, best of ``reps``, and where they go (CPU seconds in the kernel's parts, last rep)."""
    import collections
    import glob

    from curate.ops.decontam import grams, match

    print("## The step alone: CPU seconds in process, on the read stage's parts\n")
    print("| input | fields | parts | index build CPU s | apply CPU s (all parts) | total | "
          "tokenise | ngram | exact | fuzzy | flagged |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    spent: dict[str, float] = collections.defaultdict(float)

    def timed_method(owner: type, attr: str, label: str) -> None:
        inner = getattr(owner, attr)

        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.process_time()
            try:
                return inner(*a, **k)
            finally:
                spent[label] += time.process_time() - t0
        setattr(owner, attr, wrapper)

    for owner, attr, label in ((grams.Tokens, "__init__", "tokenise"), (match.BenchmarkIndex, "ngram", "ngram"),
                               (match.BenchmarkIndex, "exact", "exact"), (match.BenchmarkIndex, "fuzzy", "fuzzy")):
        timed_method(owner, attr, label)
    with tempfile.TemporaryDirectory(prefix="curate-bench-decontam-") as tmp:
        folder = Path(tmp)
        jobs = write_inputs(folder, rows, n_traces)
        for name, (recipe, stem, _) in jobs.items():
            subprocess.run([sys.executable, "-m", "curate.cli", "run", str(recipe), "--no-card", "-q"], cwd=folder,
                           check=True, capture_output=True)
            paths = sorted(glob.glob(str(folder / f"out_{stem}" / ".curate-cache" / "stage-00-read" / "part-*.parquet")))
            parts = [pl.read_parquet(p) for p in paths]
            fields = ["problem"] if name == "problems" else ["problem", "thinking", "solution"]
            best = (float("inf"), float("inf"))
            for _ in range(reps):
                spent.clear()
                t0 = time.process_time()
                step = Decontaminate(fields=fields)
                step.prepare()
                step.apply(parts[0].head(1), 0)  # the matchers build their indexes on first use
                t1 = time.process_time()
                spent.clear()
                flagged = sum(r.rejected.height for r in (step.apply(p, 0) for p in parts) if r.rejected is not None)
                t2 = time.process_time()
                if t2 - t0 < sum(best):
                    best = (t1 - t0, t2 - t1)
            print(f"| {rows if name == 'problems' else n_traces:,} {name} | {', '.join(fields)} | {len(parts)} | "
                  f"{best[0]:.2f} | {best[1]:.2f} | {sum(best):.2f} | {spent['tokenise']:.2f} | "
                  f"{spent['ngram']:.2f} | {spent['exact']:.2f} | {spent['fuzzy']:.2f} | {flagged} |")
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); the first rep "
          "also pays one-off costs (pyarrow.compute's first call, ~0.13 s)\n")


def _stage(out: Path) -> dict[str, dict]:
    """The manifest's funnel of a finished run, by step name."""
    return {f["name"]: f for f in json.loads((out / "manifest.json").read_text())["funnel"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--traces", type=int, default=10_000, help="--whole: rows of the traces input")
    ap.add_argument("--reps", type=int, default=3, help="--whole: runs of each contender")
    ap.add_argument("--whole", action="store_true", help="only the whole-command comparison")
    ap.add_argument("--step", action="store_true", help="only the step alone, in process, on curate's read parts")
    args = ap.parse_args()
    if args.step:
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, python {platform.python_version()}\n")
        step_alone(args.rows, args.traces, args.reps)
        return
    if args.whole:
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, python {platform.python_version()}\n")
        whole(args.rows, args.traces, args.reps)
        return
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
