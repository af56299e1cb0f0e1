"""Peak RSS of a quickstart-like recipe at growing corpus sizes: what grows with the rows, and why.

The recipe is pipelines/quickstart.yaml's chain (exact_dedup problem_response -> extract_answer ->
filter -> sample 50 stratified by source) over a Sky-T1 JSONL corpus stitched from the real
long-CoT traces (bench/bench_io.py's generator: 5% whitespace-changed copies). Each size runs
``curate run`` as its own process; peak RSS is that process's own (``wait4``, spawned from this
stdlib-only parent, so nothing of the parent is counted). The manifest gives the stage seconds.

    python bench/bench_quickstart_memory.py --rows 10000 50000 200000 --kb 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_io import generate  # noqa: E402  (stdlib only)

RECIPE = """name: quickstart_memory
input: {path: traces.jsonl, format: sky-t1}
steps:
  - exact_dedup: {mode: problem_response}
  - extract_answer: {}
  - filter: {min_thinking_chars: 200, require_closed_thinking: true, require_answer: false}
  - sample: {n: 50, seed: 0, stratify_by: source}
output: {path: out}
"""


def run(folder: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", "recipe.yaml", "--overwrite"], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(out[-3000:])
    manifest = json.loads((folder / "out" / "manifest.json").read_text())
    return {"wall_s": time.perf_counter() - t0, "peak_rss_mib": usage.ru_maxrss / 1024,
            "funnel": [(f["name"], f.get("rows_in"), f.get("rejected"), f.get("seconds")) for f in manifest["funnel"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--kb", type=int, default=4, help="response size of each generated row")
    args = ap.parse_args()
    print("| rows | corpus MiB | wall s | peak RSS MiB | stage seconds |")
    print("|---|---|---|---|---|")
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="curate-bench-quickstart-") as tmp:
            folder = Path(tmp)
            generate(folder / "traces.jsonl", rows, args.kb)
            (folder / "recipe.yaml").write_text(RECIPE)
            mib = (folder / "traces.jsonl").stat().st_size / 2**20
            r = run(folder)
            stages = ", ".join(f"{n} {s:.1f}" for n, _, _, s in r["funnel"] if s is not None)
            print(f"| {rows:,} | {mib:,.0f} | {r['wall_s']:.1f} | {r['peak_rss_mib']:,.0f} | {stages} |", flush=True)
            results.append((rows, r["peak_rss_mib"]))
    if len(results) > 1:
        (r0, m0), (r1, m1) = results[0], results[-1]
        print(f"\ngrowth: {(m1 - m0) * 1024 / (r1 - r0):.2f} KiB of peak RSS per extra row "
              f"({r0:,} -> {r1:,} rows); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
