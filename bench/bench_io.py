"""Read + exact-dedup + write N traces of ~K KB (Sky-T1 JSONL), curate against a plain-script baseline.

``--read``: the read stage of JSONL (issue 19): 100k real-length problems (LIMO layout) and 10k
real-length traces (harness layout), the read stage alone and a whole ``curate run --no-card`` of
a one-step recipe (``exact_dedup``), this checkout against another (``--against``, e.g. a checkout
of the commit before), interleaved, CPU seconds (user+sys) and wall:

    python bench/bench_io.py --read --against ../main --reps 3

The corpus is generated from real long-CoT text (the traces in ../shared/data/traces, or the sample
shipped in curate/data/samples): each row stitches paragraphs of real responses to the target size,
and 5% of rows repeat an earlier row with changed whitespace, so dedup has work to do.
Each contender runs in its own process; peak RSS is that process's ru_maxrss.

    python bench/bench_io.py --rows 100000 --kb 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work"


def real_paragraphs() -> list[str]:
    shared = ROOT.parent / "shared" / "data" / "traces"
    files = sorted(shared.glob("*.jsonl")) if shared.exists() else sorted((ROOT / "curate/data/samples").glob("*.jsonl"))
    paras: list[str] = []
    for f in files:
        for line in f.read_text().splitlines():
            text = json.loads(line)["code"][0]
            for marker in ("<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>"):
                text = text.replace(marker, "")
            paras += [p for p in text.split("\n\n") if len(p) > 40]
    return paras


def generate(path: Path, rows: int, kb: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    paras = real_paragraphs()
    target = kb * 1024
    made: list[str] = []
    with open(path, "w") as f:
        for i in range(rows):
            if made and rng.random() < 0.05:  # a copy under its own id, whitespace changed
                dup = json.loads(made[rng.randrange(len(made))])
                dup["id"] = f"row-{i}"
                turn = dup["conversations"][1]
                turn["value"] = turn["value"].replace("\n\n", "\n\n ", 1)
                f.write(json.dumps(dup, ensure_ascii=False) + "\n")
                continue
            body, size = [], 0
            while size < target:
                p = paras[rng.randrange(len(paras))]
                body.append(p)
                size += len(p) + 2
            cut = max(1, len(body) * 4 // 5)
            response = ("<|begin_of_thought|>\n\n" + "\n\n".join(body[:cut]) + "\n\n<|end_of_thought|>\n\n"
                        "<|begin_of_solution|>\n\n" + "\n\n".join(body[cut:]) + "\n\n<|end_of_solution|>")
            rec = {"id": f"row-{i}", "system": "Reason step by step.",
                   "conversations": [{"from": "user", "value": f"Problem {i}: " + paras[rng.randrange(len(paras))]},
                                     {"from": "assistant", "value": response}]}
            line = json.dumps(rec, ensure_ascii=False)
            if len(made) < 2000:
                made.append(line)
            f.write(line + "\n")


CURATE = """
import sys
from curate import Pipeline, read
from curate.ops import ExactDedup
r = Pipeline([ExactDedup()], batch_size=1024).run(read(sys.argv[1]), out=sys.argv[2], progress=False)
print(r.rows)
"""

BASELINE = """
# What a one-off script does: parse every line, split markers, hash normalised text, keep rows in
# memory, write one Parquet file at the end.
import hashlib, json, re, sys
import pyarrow as pa, pyarrow.parquet as pq
seen, rows = set(), []
ws = re.compile(r"\\s+")
for line in open(sys.argv[1], encoding="utf-8"):
    rec = json.loads(line)
    problem = rec["conversations"][0]["value"]
    text = rec["conversations"][1]["value"]
    a = text.find("<|begin_of_thought|>"); b = text.find("<|end_of_thought|>")
    thinking = text[a + 20:b].strip()
    solution = text[b + 18:].replace("<|begin_of_solution|>", "").replace("<|end_of_solution|>", "").strip()
    key = hashlib.sha1(ws.sub(" ", (problem + thinking + solution).lower()).strip().encode()).digest()
    if key in seen:
        continue
    seen.add(key)
    rows.append({"id": rec["id"], "problem": problem, "thinking": thinking, "solution": solution})
pq.write_table(pa.Table.from_pylist(rows), sys.argv[2] + ".parquet", compression="zstd")
print(len(rows))
"""


def measure(code: str, data: Path, out: Path) -> dict:
    """Run one contender in a child process; wall time and that child's own peak RSS (wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(data), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout = proc.stdout.read()
    if status:
        raise SystemExit(proc.stderr.read())
    return {"wall_s": wall, "rows_out": int(stdout.strip().splitlines()[-1]), "peak_rss_mib": usage.ru_maxrss / 1024}


def read_inputs(folder: Path, problems: int, traces: int, seed: int = 0) -> dict[str, tuple[Path, str]]:
    """JSONL inputs of real-length text: problems in LIMO's layout (the real training problems, a
    quarter of the words replaced, so rows differ) and traces in the eval harness's layout."""
    shared = ROOT.parent / "shared" / "data"
    rng = random.Random(seed)
    probs = [r for f in sorted((shared / "problems").glob("*.json")) for r in json.loads(f.read_text())]
    vocab = [w for p in probs[:3000] for w in p["problem"].split(" ") if w.isalpha()]

    def perturb(text: str) -> str:
        return " ".join(rng.choice(vocab) if rng.random() < 0.25 else w for w in text.split(" "))

    out = {"problems": (folder / f"problems_{problems}.jsonl", "limo"), "traces": (folder / f"traces_{traces}.jsonl", "harness")}
    if not out["problems"][0].exists():
        with open(out["problems"][0], "w", encoding="utf-8") as f:
            for i in range(problems):
                p = rng.choice(probs)
                f.write(json.dumps({"id": f"p{i}", "question": perturb(p["problem"]), "answer": str(p["answer"]),
                                    "solution": f"The answer is $\\boxed{{{p['answer']}}}$."}) + "\n")
    if not out["traces"][0].exists():
        real = [json.loads(line) for t in sorted((shared / "traces").glob("*.jsonl")) for line in t.open(encoding="utf-8")]
        with open(out["traces"][0], "w", encoding="utf-8") as f:
            for i in range(traces):
                r = rng.choice(real)
                f.write(json.dumps({"idx": i, "question": perturb(r["question"]) if rng.random() < 0.5 else r["question"],
                                    "gt": r["gt"], "code": [r["code"][0]]}) + "\n")
    return out


READ_STAGE = """
import sys, time
import polars, pyarrow  # imported by any run: not the read stage's cost
from curate import read
t0, w0 = time.process_time(), time.perf_counter()
rows = sum(b.rows for b in read(sys.argv[1], format=sys.argv[2]).batches(1024))
print(rows, time.process_time() - t0, time.perf_counter() - w0, "pandas" in sys.modules)
"""


PARSE_ONLY = """
import io, sys, time
import orjson, polars as pl, pyarrow.json as pj
data = open(sys.argv[1], "rb").read()
lines = data.splitlines()
parsers = {"orjson, line by line (curate)": lambda: [orjson.loads(line) for line in lines],
           "pyarrow.json.read_json": lambda: pj.read_json(io.BytesIO(data)),
           "polars.read_ndjson": lambda: pl.read_ndjson(io.BytesIO(data))}
for name, parse in parsers.items():
    t0 = time.process_time()
    parse()
    print(f"{name}: {time.process_time() - t0:.3f}")
"""


def _child(cmd: list[str], checkout: Path, cwd: Path) -> tuple[float, float, str]:
    """Wall and CPU (user+sys, /usr/bin/time) seconds of one process, and its last output line."""
    times = cwd / "time.txt"
    env = {**os.environ, "PYTHONPATH": str(checkout), "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S", "-o", str(times), *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    user, system = map(float, times.read_text().split()[-2:])
    return wall, user + system, (proc.stdout.strip().splitlines() or [""])[-1]


def read_bench(checkouts: list[Path], problems: int, traces: int, reps: int) -> None:
    """The read stage and a whole one-step run, each checkout in turn, ``reps`` rounds."""
    from statistics import median

    WORK.mkdir(parents=True, exist_ok=True)
    inputs = read_inputs(WORK, problems, traces)
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for name, (data, fmt) in inputs.items():
        recipe = WORK / f"read_{name}.yaml"
        recipe.write_text(f"name: read_{name}\ninput: {{path: {data.name}, format: {fmt}}}\n"
                          f"steps:\n  - exact_dedup: {{mode: problem}}\noutput: {{path: out_read_{name}}}\n")
        for _ in range(reps):
            for checkout in checkouts:
                _, _, line = _child([sys.executable, "-c", READ_STAGE, str(data), fmt], checkout, WORK)
                rows, cpu, wall, pandas = line.split()
                results.setdefault((name, str(checkout), "read stage"), []).append((float(wall), float(cpu)))
                wall, cpu, _ = _child([sys.executable, "-m", "curate.cli", "run", recipe.name, "--no-card",
                                       "--overwrite", "-q"], checkout, WORK)
                results.setdefault((name, str(checkout), "curate run --no-card"), []).append((wall, cpu))
                print(f"{name} {checkout}: read stage {results[(name, str(checkout), 'read stage')][-1]}, "
                      f"pandas loaded by the read: {pandas}; whole run wall {wall:.2f} s, CPU {cpu:.2f} s", flush=True)
    print("\n| input | what | checkout | wall s (median) | CPU s (median) | runs (wall / CPU) |")
    print("|---|---|---|---|---|---|")
    for (name, checkout, what), runs in results.items():
        n = problems if name == "problems" else traces
        print(f"| {n:,} {name} | {what} | {checkout} | {median(r[0] for r in runs):.2f} | "
              f"{median(r[1] for r in runs):.2f} | {', '.join(f'{w:.2f}/{c:.2f}' for w, c in runs)} |")
    if len(checkouts) == 2:
        print()
        for name in inputs:
            for what in ("read stage", "curate run --no-card"):
                a, b = (results[(name, str(c), what)] for c in checkouts)
                print(f"{name}, {what}: CPU {median(r[1] for r in b) / median(r[1] for r in a):.2f}x, "
                      f"wall {median(r[0] for r in b) / median(r[0] for r in a):.2f}x "
                      f"({checkouts[1]} / {checkouts[0]})")
    print("\nParsing alone, CPU s (threads included), this checkout's interpreter:")
    for name, (data, _) in inputs.items():
        out = subprocess.run([sys.executable, "-c", PARSE_ONLY, str(data)], capture_output=True, text=True, check=True)
        print(f"- {name}: " + "; ".join(out.stdout.strip().splitlines()))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--kb", type=int, default=20)
    ap.add_argument("--read", action="store_true", help="the JSONL read stage and a whole one-step run")
    ap.add_argument("--against", type=Path, help="--read: another checkout to compare with")
    ap.add_argument("--problems", type=int, default=100_000, help="--read: rows of the LIMO-layout input")
    ap.add_argument("--traces", type=int, default=10_000, help="--read: rows of the harness-layout input")
    ap.add_argument("--reps", type=int, default=3, help="--read: rounds")
    args = ap.parse_args()
    if args.read:
        read_bench([ROOT, *([args.against.resolve()] if args.against else [])], args.problems, args.traces, args.reps)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"traces_{args.rows}x{args.kb}kb.jsonl"
    if not data.exists():
        t0 = time.perf_counter()
        generate(data, args.rows, args.kb)
        print(f"generated {data} ({data.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f}s")
    size_mib = data.stat().st_size / 2**20
    import shutil

    for name in ("curate_out", "baseline_out"):
        shutil.rmtree(WORK / name, ignore_errors=True)
    cur = measure(CURATE, data, WORK / "curate_out")
    base = measure(BASELINE, data, WORK / "baseline_out")
    print(json.dumps({"rows": args.rows, "kb": args.kb, "corpus_mib": round(size_mib), "curate": cur, "baseline": base}))
    print("| contender | wall s | rows/s (input) | peak RSS MiB | peak RSS / corpus |")
    print("|---|---|---|---|---|")
    for name, r in (("curate read+exact_dedup+write", cur), ("plain script (in-memory)", base)):
        print(f"| {name} | {r['wall_s']:.1f} | {args.rows / r['wall_s']:,.0f} | {r['peak_rss_mib']:,.0f} | "
              f"{r['peak_rss_mib'] / size_mib:.2f} |")
    print(f"throughput ratio curate/baseline: {base['wall_s'] / cur['wall_s']:.2f}x; "
          f"peak memory ratio curate/baseline: {cur['peak_rss_mib'] / base['peak_rss_mib']:.2f}")


if __name__ == "__main__":
    main()
