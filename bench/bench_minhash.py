"""MinHash dedup throughput and peak RSS on real-length problems, against a plain datasketch loop.

    python bench/bench_minhash.py                 # 200k rows, every candidate, ~3 minutes on 2 cores
    python bench/bench_minhash.py --rows 50000    # smaller

The corpus: the 8,449 real training problems of ../shared/data/problems, drawn at random and
each made distinct by replacing a quarter of its words with other words of the corpus (so row
lengths and vocabulary are real), plus 5% planted near-duplicates of earlier rows (the
variants of bench/planted.py). Each candidate runs in its own process, so its peak RSS is its own:

- ``datasketch-loop``: one ``datasketch.MinHash`` per row (default sha1 hash, ``update_batch``),
  ``MinHashLSH.query`` then ``insert`` — the plain loop of the issue (on the first --loop-rows rows);
- ``datasketch-bulk``: ``MinHash.bulk`` + ``LeanMinHash`` into the same LSH (first --loop-rows rows);
- ``rensa``: ``RMinHash.digest_matrix_from_token_sets`` + ``RMinHashLSH`` (signatures not
  datasketch's: measured for speed only);
- ``curate``: ``minhash_dedup``'s fit (tokenise, sign, band, verify on exact Jaccard, cluster),
  with 1 worker thread and with 2.

Recall is measured on the first --loop-rows rows for every candidate against exact Jaccard
computed by brute force (a row is a true duplicate when an earlier row reaches the threshold);
a false drop is a dropped row that no other row reaches the threshold with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.planted import VARIANTS, exact_jaccard_pairs, plant, score  # noqa: E402
from curate import read  # noqa: E402
from curate.decontam.text import units  # noqa: E402
from curate.ops.minhash import MinHashDedup, shingles  # noqa: E402

SHARED = Path(os.environ.get("CURATE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NUM_PERM, BANDS, ROWS, THRESHOLD, SIZE = 100, 20, 5, 0.72, 3


def corpus(n: int, seed: int = 0) -> list[str]:
    cache = Path(f"/tmp/curate-bench-minhash-{n}-{seed}.parquet")
    if cache.exists():
        return pl.read_parquet(cache)["problem"].to_list()
    rng = random.Random(seed)
    real = [r["problem"] for f in sorted((SHARED / "problems").glob("*.json")) for r in json.loads(f.read_text())]
    vocab = [w for t in real[:3000] for w in t.split(" ") if w.isalpha()]
    names = list(VARIANTS)
    out: list[str] = []
    for k in range(n):
        if out and rng.random() < 0.05:
            out.append(VARIANTS[names[k % len(names)]](rng.choice(out), rng))
            continue
        words = rng.choice(real).split(" ")
        out.append(" ".join(rng.choice(vocab) if rng.random() < 0.25 else w for w in words))
    pl.DataFrame({"problem": out}).write_parquet(cache)
    return out


def _shingle_lists(texts: list[str]) -> list[list[bytes]]:
    return [shingles(units(t), SIZE) for t in texts]


def run_datasketch_loop(texts: list[str]) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, ROWS))
    dup = np.zeros(len(texts), dtype=bool)
    for k, sh in enumerate(_shingle_lists(texts)):
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch(sh)
        if lsh.query(m):
            dup[k] = True
        else:
            lsh.insert(k, m)
    return dup


def run_datasketch_bulk(texts: list[str]) -> np.ndarray:
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, ROWS))
    dup = np.zeros(len(texts), dtype=bool)
    for k, m in enumerate(MinHash.bulk(_shingle_lists(texts), num_perm=NUM_PERM)):
        lean = LeanMinHash(m)
        if lsh.query(lean):
            dup[k] = True
        else:
            lsh.insert(k, lean)
    return dup


def run_rensa(texts: list[str]) -> np.ndarray:
    from rensa import RMinHash, RMinHashLSH

    sets = [[s.decode() for s in sh] for sh in _shingle_lists(texts)]
    matrix = RMinHash.digest_matrix_from_token_sets(sets, NUM_PERM, 1)
    lsh = RMinHashLSH(THRESHOLD, NUM_PERM, BANDS)
    flags = lsh.insert_matrix_and_query_duplicate_flags(matrix)
    return np.asarray(flags, dtype=bool)


def run_curate(texts: list[str], workers: int) -> np.ndarray:
    step = MinHashDedup(workers=workers)
    frame = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "problem": texts,
                          "thinking": [""] * len(texts), "solution": [""] * len(texts)})
    step.fit(iter(frame.iter_slices(50_000)))
    assert step._rep is not None
    return step._rep != np.arange(len(texts))


CANDIDATES = {
    "datasketch-loop": run_datasketch_loop,
    "datasketch-bulk": run_datasketch_bulk,
    "rensa": run_rensa,
    "curate-1-thread": lambda t: run_curate(t, 1),
    "curate-2-threads": lambda t: run_curate(t, 2),
}


def child(name: str, rows: int) -> None:
    texts = corpus(rows)
    t0 = time.perf_counter()
    dup = CANDIDATES[name](texts)
    seconds = time.perf_counter() - t0
    np.save(f"/tmp/curate-bench-minhash-{name}.npy", dup)
    print(json.dumps({"name": name, "rows": len(texts), "seconds": seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def truth(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows with an earlier row at exact Jaccard >= THRESHOLD, rows with any such row), by brute force."""
    pairs, jac = exact_jaccard_pairs(texts, SIZE)
    true = pairs[jac >= THRESHOLD]
    earlier = np.zeros(len(texts), dtype=bool)
    earlier[true[:, 1]] = True
    anyone = np.zeros(len(texts), dtype=bool)
    anyone[true.ravel()] = True
    return earlier, anyone


def planted_report() -> None:
    """The planted-duplicate check of tests/test_minhash.py, printed: defaults vs exact Jaccard."""
    originals: list[str] = []
    for f in sorted((SHARED / "traces").glob("*.jsonl")):
        for b in read(str(f)).batches(5000):
            originals += b.traces.column("problem").to_pylist()
    originals = list(dict.fromkeys(originals))
    texts, planted = plant(originals, 800, seed=3)
    step = MinHashDedup()
    frame = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "problem": texts,
                          "thinking": [""] * len(texts), "solution": [""] * len(texts)})
    step.fit(iter([frame]))
    assert step._rep is not None
    pairs, jac = exact_jaccard_pairs(texts, step.size, step.shingle)
    print(f"planted: {len(originals)} distinct real trace problems + {len(planted)} near-duplicates; "
          f"defaults {step.shingle} {step.size}-shingles, {step.bands}x{step.rows}, threshold {step.threshold}")
    print(json.dumps(score(step._rep, pairs, jac, step.threshold)))
    n0 = len(originals)
    for variant in VARIANTS:
        ks = [k for k, (_, v) in enumerate(planted) if v == variant]
        caught = sum(step._rep[n0 + k] == step._rep[planted[k][0]] for k in ks)
        above = sum(1 for k in ks if _jac(pairs, jac, planted[k][0], n0 + k) >= step.threshold)
        print(f"| {variant} | {len(ks)} | {above} | {caught} ({caught / len(ks):.1%}) |")


def _jac(pairs: np.ndarray, jac: np.ndarray, i: int, j: int) -> float:
    hit = np.flatnonzero((pairs[:, 0] == min(i, j)) & (pairs[:, 1] == max(i, j)))
    return float(jac[hit[0]]) if len(hit) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--loop-rows", type=int, default=30_000)
    ap.add_argument("--only", choices=list(CANDIDATES))
    ap.add_argument("--child-rows", type=int)
    ap.add_argument("--planted", action="store_true", help="only the planted-duplicate report")
    args = ap.parse_args()
    if args.planted:
        planted_report()
        return
    if args.only:
        child(args.only, args.child_rows or args.rows)
        return
    corpus(args.rows)
    corpus(args.loop_rows)
    results = []
    for name in CANDIDATES:
        rows = args.loop_rows if name.startswith("datasketch") else args.rows
        out = subprocess.run([sys.executable, __file__, "--only", name, "--child-rows", str(rows)],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            results.append({"name": name, "error": out.stderr.strip().splitlines()[-1]})
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    small = corpus(args.loop_rows)
    want, twin = truth(small)
    for r in results:
        if "error" in r:
            continue
        r["rows_per_s"] = r["rows"] / r["seconds"]
        if r["rows"] == args.loop_rows:
            dup = np.load(f"/tmp/curate-bench-minhash-{r['name']}.npy")
        else:  # recall on the same first rows: rerun on the small corpus in-process
            dup = run_curate(small, 2) if r["name"].startswith("curate") else CANDIDATES[r["name"]](small)
        r["recall"] = float((dup & want).sum() / max(want.sum(), 1))
        r["false_drops"] = int((dup & ~twin).sum())  # dropped with no row at Jaccard >= threshold
    base = next((r["rows_per_s"] for r in results if r["name"] == "datasketch-loop" and "rows_per_s" in r), None)
    print(f"machine: {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}; "
          f"corpus {args.rows} rows (loops on the first {args.loop_rows}); true duplicates in those: {int(want.sum())}")
    print("| candidate | rows | seconds | rows/s | x loop | peak RSS MB | recall | false drops |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | error: {r['error']} | | | | | | |")
            continue
        speed = f"{r['rows_per_s'] / base:.1f}" if base else ""
        print(f"| {r['name']} | {r['rows']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {speed} | "
              f"{r['peak_rss_mb']:.0f} | {r['recall']:.3f} | {r['false_drops']} |")


if __name__ == "__main__":
    main()
