"""Read + exact-dedup + write N traces of ~K KB (Sky-T1 JSONL), curate against a plain-script baseline.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--kb", type=int, default=20)
    args = ap.parse_args()
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
