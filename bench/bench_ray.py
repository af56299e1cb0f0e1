"""The ray engine against the local engine on the same recipe and 100k real-length traces.

    python bench/bench_ray.py                 # 100k rows, ~3 minutes on 2 cores
    python bench/bench_ray.py --rows 20000    # smaller

The corpus: problems from ../shared/data/problems made distinct by swapping a quarter of their
words (bench/bench_minhash.py's corpus, 5% planted near-duplicates), each given the thinking and
solution of a real trace from ../shared/data/traces (cycled, so texts are real-length). The recipe:
exact_dedup -> extract_answer -> minhash_dedup -> sample: row-local steps and every
global pass split into units of work. Each engine runs in its own process; memory is the peak of the summed RSS
of that process and all its descendants (the Ray head, raylet and workers), sampled every 0.2 s.
Both engines must write the same rows (checked). Then, from the ray run, the measured bytes per
row of the MinHash pass's intermediate files, the basis of the 10M-row estimate in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_minhash import corpus  # noqa: E402

SHARED = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data"))
RECIPE = [
    {"exact_dedup": {"mode": "problem_response"}},
    {"extract_answer": {}},
    {"minhash_dedup": {"mode": "problem"}},
    {"sample": {"fraction": 0.5, "seed": 0, "stratify_by": "source"}},
]


def make_input(rows: int, folder: Path) -> Path:
    """``rows`` traces in 8 Parquet files of the trace schema (8 files: the read is split by file)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.parquet"))) == 8:
        return folder
    from curate import read

    real = read(SHARED / "traces").to_polars()
    problems = corpus(rows, folder.parent)  # its cache beside the input, not in it
    idx = [k % real.height for k in range(rows)]
    frame = real[idx].with_columns(pl.Series("problem", problems), pl.Series("id", [f"r{k}" for k in range(rows)]))
    for f in range(8):
        frame[f * rows // 8: (f + 1) * rows // 8].write_parquet(folder / f"part-{f}.parquet")
    return folder


class PeakTreeRSS:
    """Peak of the summed RSS of this process and its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.2) -> None:
        import psutil

        self.me, self.peak, self._stop, self.every = psutil.Process(), 0, False, every
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop:
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def stop(self) -> int:
        self._stop = True
        self.thread.join()
        return self.peak


def child(engine: str, src: Path, out: Path) -> None:
    """One engine's run (in its own process): wall time, start-up, peak tree RSS, MinHash scratch sizes."""
    import pyarrow.parquet as pq

    from curate import Pipeline
    from curate.engines import get_engine
    from curate.globalpass import PassContext
    from curate.step import build_step

    scratch: dict[str, list[int]] = {}
    finish = PassContext.finish

    def measured(ctx: PassContext, state: dict, names: list[str]) -> None:  # sizes before the cleanup
        for name in names:  # the ray engine's scratch: files (.npy arrays, .parquet frames)
            folder = ctx.folder
            files = [f for f in (folder / name).rglob("*") if f.suffix in (".npy", ".parquet")] if (folder / name).exists() else []
            scratch[f"{folder.parent.name}/{name}"] = [
                sum(f.stat().st_size for f in files),
                sum(pq.ParquetFile(f).metadata.num_rows if f.suffix == ".parquet" else np.load(f, mmap_mode="r").shape[-1]
                    for f in files)]
        finish(ctx, state, names)

    PassContext.finish = measured  # type: ignore[method-assign]
    rss = PeakTreeRSS()
    t0 = time.perf_counter()
    runner = get_engine(engine, None) if engine == "local" else get_engine("ray")
    startup = time.perf_counter() - t0
    steps = [build_step(name, params) for entry in RECIPE for name, params in entry.items()]
    result = Pipeline(steps, batch_size=4096).run(src, out, engine=runner, progress=False, card=False, overwrite=True)
    wall = time.perf_counter() - t0
    runner.close()
    print(json.dumps({"wall_s": wall, "startup_s": startup, "peak_tree_rss_mib": rss.stop() / 2**20,
                      "rows": result.rows, "funnel": result.funnel.drop("seconds").rows(), "scratch": scratch}))


def band_task_memory(bands: Path) -> None:
    """Peak memory of one MinHash band task on all the band keys of a run taken as ONE band
    (20 x the rows: a band of a 20x larger corpus), above the process's RSS before it reads."""
    import psutil

    from curate.ops.dedup.minhash import bucket_pairs, unique_pairs

    files = sorted(bands.rglob("*.npy"))
    base = psutil.Process().memory_info().rss
    rss = PeakTreeRSS(every=0.005)
    arrays = [np.load(f) for f in files]  # per part: positions, then the 20 bands' keys
    pos = np.concatenate([np.tile(a[0], len(a) - 1) for a in arrays]).astype(np.int64)
    key = np.concatenate([a[1:].ravel() for a in arrays])
    order = np.lexsort((pos, key))  # what band_task does, on 20 bands' records at once
    pairs = unique_pairs(bucket_pairs(key[order], pos[order]))
    peak = rss.stop()
    print(json.dumps({"records": len(key), "pairs": int(len(pairs)), "peak_above_base_kib": (peak - base) // 1024,
                      "base_kib": base // 1024}))


def measure_band_task(src: Path, work: Path) -> dict:
    """Run the MinHash pass unit by unit (scratch in files, as on Ray), keep its per-part band
    arrays, measure a band task in a fresh process."""
    import shutil

    from curate import Pipeline
    from curate.engines import LocalEngine
    from curate.globalpass import PassContext
    from curate.step import build_step

    kept = work / "bands"
    finish = PassContext.finish

    def keep_bands(ctx: PassContext, state: dict, names: list[str]) -> None:
        if (ctx.folder / "bands").exists() and "stats" in state:
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(ctx.folder / "bands", kept)
        finish(ctx, state, names)

    PassContext.finish = keep_bands  # type: ignore[method-assign]
    Pipeline([build_step("minhash_dedup", {})], batch_size=4096).run(
        src, work / "out-bands", engine=LocalEngine(scratch="files"), progress=False, card=False, overwrite=True)
    PassContext.finish = finish  # type: ignore[method-assign]
    done = subprocess.run([sys.executable, __file__, "--band-task", str(kept)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/curate-bench-ray"))
    ap.add_argument("--child", nargs=3, metavar=("ENGINE", "SRC", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--band-task", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.band_task:
        band_task_memory(args.band_task)
        return
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    src = make_input(args.rows, args.work / f"input-{args.rows}")
    size = sum(f.stat().st_size for f in src.glob("*.parquet")) / 2**20
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {args.rows:,} rows, input {size:,.0f} MiB Parquet")
    runs = {}
    for engine in ("local", "ray"):
        done = subprocess.run([sys.executable, __file__, "--child", engine, str(src), str(args.work / f"out-{engine}")],
                              capture_output=True, text=True, check=True)
        runs[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    local, ray = runs["local"], runs["ray"]
    same = pl.read_parquet(args.work / "out-local" / "data").equals(pl.read_parquet(args.work / "out-ray" / "data"))
    assert same and local["funnel"] == ray["funnel"], "the engines disagree"
    print("\n| engine | wall s | start-up s | rows/s | rows/s after start-up | peak RSS (process tree) MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        print(f"| {name} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | {args.rows / r['wall_s']:,.0f} | "
              f"{args.rows / (r['wall_s'] - r['startup_s']):,.0f} | {r['peak_tree_rss_mib']:,.0f} |")
    print(f"\nray/local: wall {ray['wall_s'] / local['wall_s']:.2f}x, after start-up "
          f"{(ray['wall_s'] - ray['startup_s']) / (local['wall_s'] - local['startup_s']):.2f}x, "
          f"peak memory {ray['peak_tree_rss_mib'] / local['peak_tree_rss_mib']:.2f}x; same rows: {same}")
    print("funnel (step, rows in, kept, rejected):", ray["funnel"])
    rows_in = {f[1]: f[2] for f in ray["funnel"]}
    print("\nintermediates of the global passes (files on disk, bytes per input row of the step):")
    for name, (nbytes, records) in sorted(ray["scratch"].items()):
        n = rows_in[name.split("/")[0].split("-", 2)[2]]
        print(f"  {name}: {nbytes / n:,.1f} B/row ({nbytes / 2**20:,.1f} MiB, {records:,} records, over {n:,} rows)")
    band = measure_band_task(src, args.work)
    per = band["peak_above_base_kib"] * 1024 / band["records"]
    print(f"\none MinHash band task on {band['records']:,} records (all 20 bands' keys as one band): peak "
          f"{band['peak_above_base_kib'] / 1024:,.0f} MiB above its start, {per:,.0f} B per record; "
          f"a band of 10M rows: ~{per * 10e6 / 2**30:,.1f} GiB")


if __name__ == "__main__":
    main()
