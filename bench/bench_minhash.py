"""MinHash dedup against the loops a user would write instead: whole commands, fit in process, memory.

    python bench/bench_minhash.py --whole --rows 100000     # whole processes: curate run vs the plain loops
    python bench/bench_minhash.py --rows 200000             # in process: minhash_dedup's pass vs the loops
    python bench/bench_minhash.py --heavy 10000 50000 100000 200000  # 99% near-duplicate traces: growth
    python bench/bench_minhash.py --planted                 # planted copies and false merges
    python bench/bench_minhash.py --pass-cpu 100000 --before /tmp/before  # the pass's CPU s vs another checkout

Every file goes to a fresh temporary folder (``--workdir`` to keep one), so two runs never share paths.

The corpus: the 8,449 real training problems of ../shared/data/problems, drawn at random and
each made distinct by replacing a quarter of its words with other words of the corpus (so row
lengths and vocabulary are real), plus 5% planted near-duplicates of earlier rows (the
variants of bench/planted.py). Candidates, each in its own process (peak RSS is its own):

- ``datasketch-loop``: per row ``datasketch.MinHash`` (default sha1 hash, ``update_batch``) of the
  3-word shingles, ``MinHashLSH.query``, then ``insert`` when nothing matched (keep the first);
- ``datasketch-bulk``: ``MinHash.bulk`` + ``LeanMinHash`` into the same LSH;
- ``rensa-loop``: the same loop with ``rensa.RMinHash`` / ``RMinHashLSH`` (query, then insert);
- ``curate``: ``minhash_dedup`` (in process: ``curate.globalpass.run_here``, its pass and apply
  over parts of 50,000 rows; whole: ``curate run`` of a
  one-step recipe, with and without the dataset card).

All use 3-word shingles, 100 permutations, 20 bands x 5 rows, threshold 0.72. Recall is over the
first --loop-rows rows (every candidate keeps the first, so a row's fate depends on earlier rows
only) against exact Jaccard by brute force: a row is a true duplicate when an earlier row
reaches 0.72; a false drop is a dropped row that no other row reaches 0.72 with.
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
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

# the checkout to measure: this one, or --pass-cpu's --before (its curate, this bench)
sys.path.insert(0, os.environ.get("CURATE_BENCH_CHECKOUT", str(Path(__file__).resolve().parent.parent)))
from bench import compile_bytecode, rotated  # noqa: E402
from bench.planted import VARIANTS, exact_jaccard_pairs, held_out, kept_rows, merges, plant, score  # noqa: E402
from curate import read  # noqa: E402
from curate.globalpass import run_here  # noqa: E402
from curate.ops.dedup.minhash import MinHashDedup, shingles  # noqa: E402
from curate.text import units  # noqa: E402

SHARED = Path(os.environ.get("CURATE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NUM_PERM, BANDS, ROWS, THRESHOLD, SIZE = 100, 20, 5, 0.72, 3


def corpus(n: int, work: Path, seed: int = 0) -> list[str]:
    """``n`` real-length problems, 5% of them planted near-duplicates of earlier rows (cached in ``work``)."""
    cache = work / f"corpus-{n}-{seed}.parquet"
    if cache.exists():
        return pl.read_parquet(cache)["problem"].to_list()
    rng = random.Random(seed)
    real = [r["problem"] for f in sorted((SHARED / "problems").glob("*.json")) for r in json.loads(f.read_text())]
    vocab = [w for t in real[:3000] for w in t.split(" ") if w.isalpha()]
    names = list(VARIANTS)
    out: list[str] = []
    origin: list[int] = []  # the row a planted copy was made from (-1: not a copy)
    for k in range(n):
        if out and rng.random() < 0.05:
            src = rng.randrange(len(out))  # what rng.choice(out) draws
            out.append(VARIANTS[names[k % len(names)]](out[src], rng))
            origin.append(src)
            continue
        words = rng.choice(real).split(" ")
        out.append(" ".join(rng.choice(vocab) if rng.random() < 0.25 else w for w in words))
        origin.append(-1)
    pl.DataFrame({"problem": out, "origin": origin}).write_parquet(cache)
    return out


def planted_pairs(n: int, work: Path) -> np.ndarray:
    """(source, copy) of the corpus's planted copies whose exact Jaccard reaches the threshold."""
    origin = pl.read_parquet(work / f"corpus-{n}-0.parquet")["origin"].to_numpy()
    texts = corpus(n, work)
    copies = np.flatnonzero(origin >= 0)
    close = []
    for c in copies.tolist():
        a, b = set(shingles(units(texts[origin[c]]), SIZE)), set(shingles(units(texts[c]), SIZE))
        if a and len(a & b) / len(a | b) >= THRESHOLD:
            close.append((origin[c], c))
    return np.array(close, dtype=np.int64).reshape(-1, 2)


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


def run_rensa_loop(texts: list[str]) -> np.ndarray:
    """The rensa loop a user writes: per document, query the kept rows, then insert (keep the first)."""
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(THRESHOLD, NUM_PERM, BANDS)
    dup = np.zeros(len(texts), dtype=bool)
    for k, sh in enumerate(_shingle_lists(texts)):
        m = RMinHash(NUM_PERM, 1)
        m.update([s.decode() for s in sh])
        if lsh.query(m):
            dup[k] = True
        else:
            lsh.insert(k, m)
    return dup


def run_curate(texts: list[str], workers: int, **params: bool) -> np.ndarray:
    step = MinHashDedup(workers=workers, **params)
    frame = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "problem": texts,
                          "thinking": [""] * len(texts), "solution": [""] * len(texts)})
    with tempfile.TemporaryDirectory(dir=os.environ.get("CURATE_BENCH_TMP")) as folder:
        result = run_here(step, list(frame.iter_slices(50_000)), Path(folder))
    dropped = np.zeros(len(texts), dtype=bool)
    if result.rejected is not None:
        dropped[result.rejected["id"].cast(pl.Int64).to_numpy()] = True
    return dropped


CANDIDATES = {
    "datasketch-loop": run_datasketch_loop,
    "datasketch-bulk": run_datasketch_bulk,
    "rensa-loop": run_rensa_loop,
    "curate-1-thread": lambda t: run_curate(t, 1),
    "curate-2-threads": lambda t: run_curate(t, 2),
    # the loops' definition of a duplicate (Jaccard alone): numbers may differ, [asy] code counts
    "curate-2-threads-jaccard-only": lambda t: run_curate(t, 2, same_numbers=False, ignore_asy=False),
}


def child(name: str, rows: int, work: Path) -> None:
    texts = corpus(rows, work)
    t0 = time.perf_counter()
    dup = CANDIDATES[name](texts)
    seconds = time.perf_counter() - t0
    np.save(work / f"dup-{name}-{rows}.npy", dup)
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


def quality(dup: np.ndarray, want: np.ndarray, twin: np.ndarray) -> dict[str, float]:
    """Recall of the true duplicates among the first len(want) rows, and drops with no twin."""
    dup = dup[: len(want)]
    return {"recall": float((dup & want).sum() / max(want.sum(), 1)), "false_drops": int((dup & ~twin).sum()),
            "dropped": int(dup.sum())}


def in_process(args: argparse.Namespace, work: Path) -> None:
    corpus(args.rows, work)
    small = corpus(args.loop_rows, work)
    results = []
    for name in CANDIDATES:
        rows = args.loop_rows if name.startswith("datasketch") else args.rows
        out = subprocess.run([sys.executable, __file__, "--only", name, "--child-rows", str(rows),
                              "--workdir", str(work)], capture_output=True, text=True, check=False)
        if out.returncode:
            results.append({"name": name, "error": out.stderr.strip().splitlines()[-1]})
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    want, twin = truth(small)
    for r in results:
        if "error" in r:
            continue
        r["rows_per_s"] = r["rows"] / r["seconds"]
        r.update(quality(np.load(work / f"dup-{r['name']}-{r['rows']}.npy"), want, twin))
    base = next((r["rows_per_s"] for r in results if r["name"] == "datasketch-loop" and "rows_per_s" in r), None)
    print(f"machine: {platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, python "
          f"{platform.python_version()}; corpus {args.rows} rows (datasketch on the first {args.loop_rows}); "
          f"true duplicates in those: {int(want.sum())}")
    print("| candidate (in process) | rows | seconds | rows/s | x loop | peak RSS MB | recall | false drops |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | error: {r['error']} | | | | | | |")
            continue
        speed = f"{r['rows_per_s'] / base:.1f}" if base else ""
        print(f"| {r['name']} | {r['rows']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {speed} | "
              f"{r['peak_rss_mb']:.0f} | {r['recall']:.3f} | {r['false_drops']} |")


# --- whole commands ------------------------------------------------------------------------------

PLAIN_LOOP = """
import re, sys, pyarrow as pa, pyarrow.parquet as pq
{imports}
table = pq.read_table(sys.argv[1])
lsh = {lsh}
keep = []
for k, text in enumerate(table.column("problem").to_pylist()):
    words = re.findall(r"\\w+", text.lower())
    grams = [" ".join(words[i:i + 3]) for i in range(max(len(words) - 2, 1))]
    m = {minhash}
    m.{update}
    if not lsh.query(m):
        lsh.insert(k, m)
        keep.append(k)
pq.write_table(table.take(pa.array(keep)), sys.argv[2])
"""
SCRIPTS = {
    "datasketch-loop": PLAIN_LOOP.format(imports="from datasketch import MinHash, MinHashLSH",
                                         lsh="MinHashLSH(threshold=0.72, num_perm=100, params=(20, 5))",
                                         minhash="MinHash(num_perm=100)",
                                         update="update_batch([g.encode() for g in grams])"),
    "rensa-loop": PLAIN_LOOP.format(imports="from rensa import RMinHash, RMinHashLSH",
                                    lsh="RMinHashLSH(0.72, 100, 20)", minhash="RMinHash(100, 1)",
                                    update="update(grams)"),
}
RECIPE = """name: bench-minhash
input: {{path: {data}}}
steps:
  - minhash_dedup: {{{params}}}
output: {{path: {out}}}
"""
JACCARD_ONLY = "same_numbers: false, ignore_asy: false"  # the loops' definition of a duplicate


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024


def whole(args: argparse.Namespace, work: Path) -> None:
    """``curate run`` of a one-step minhash recipe vs the plain loops as scripts, whole processes,
    interleaved ``--repeat`` times; recall measured on each command's own output."""
    texts = corpus(args.rows, work)
    data = work / f"traces-{args.rows}.parquet"
    pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "problem": texts,
                  "thinking": ["Let me think step by step."] * len(texts),
                  "solution": ["The answer is $\\boxed{1}$."] * len(texts)}).write_parquet(data)
    commands: dict[str, list[str]] = {}
    for name, script in SCRIPTS.items():
        if name == "datasketch-loop" and args.rows > args.loop_rows * 4:
            continue
        path = work / f"{name}.py"
        path.write_text(script)
        commands[name] = [sys.executable, str(path), str(data), str(work / f"{name}-out.parquet")]
    curate = [str(Path(sys.executable).parent / "curate")]
    compile_bytecode(Path(sys.path[0]))
    for card, params in ((True, ""), (False, ""), (False, JACCARD_ONLY)):
        name = "curate run" + ("" if card else " --no-card") + (" (Jaccard only)" if params else "")
        out = work / f"out-{int(card)}-{int(bool(params))}"
        recipe = work / f"recipe-{int(card)}-{int(bool(params))}.yaml"
        recipe.write_text(RECIPE.format(data=data, out=out, params=params))
        commands[name] = [*curate, "run", str(recipe), "--overwrite", "--no-progress", *([] if card else ["--no-card"])]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for r in range(args.repeat):
        for name in rotated(list(commands), r):
            runs[name].append(timed(commands[name]))
    n = min(args.rows, args.loop_rows)
    want, twin = truth(texts[:n])
    kept_of = {name: pl.read_parquet(work / f"{name}-out.parquet")["id"] for name in SCRIPTS if name in commands}
    for name, folder in (("curate run --no-card", "out-0-0"), ("curate run --no-card (Jaccard only)", "out-0-1")):
        kept_of[name] = pl.concat([pl.read_parquet(f)["source_id"]  # curate's id is a content hash
                                   for f in sorted((work / folder / "data").glob("*.parquet"))])
    print(f"machine: {platform.node()} {os.cpu_count()} cores (shared: load {os.getloadavg()[0]:.1f}), "
          f"python {platform.python_version()}; {args.rows} rows, {args.repeat} interleaved runs each, median; "
          f"recall on the first {n} rows ({int(want.sum())} true duplicates)")
    base = {k: float(np.median([s for s, _ in v])) for k, v in runs.items()}
    for card in (1, 0):  # the last run's own account of its stages
        m = json.loads((work / f"out-{card}-0" / "manifest.json").read_text())
        stages = ", ".join(f"{f['name']} {f['seconds']:.1f} s" for f in m["funnel"])
        print(f"curate run{'' if card else ' --no-card'}, last run: {stages}; pipeline wall {m['wall_seconds']:.1f} s "
              f"of {runs['curate run' + ('' if card else ' --no-card')][-1][0]:.1f} s for the process")
    planted = planted_pairs(args.rows, work)
    print(f"planted copies at exact Jaccard >= {THRESHOLD} to their source: {len(planted)} of "
          f"{int((pl.read_parquet(work / f'corpus-{args.rows}-0.parquet')['origin'] >= 0).sum())}")
    print("| command (whole process) | seconds (median) | runs | peak RSS MB | x curate run | "
          "planted copies caught | recall (first rows) | false drops | dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    ours = base["curate run"]
    for name, v in runs.items():
        q = ""
        ids = kept_of.get(name)
        if ids is not None:
            kept = np.zeros(args.rows, dtype=bool)
            kept[ids.str.slice(1).cast(pl.Int64).to_numpy()] = True
            m = quality(~kept, want, twin)
            caught = int((~kept[planted[:, 1]]).sum())
            q = f"{caught} ({caught / max(len(planted), 1):.3f}) | {m['recall']:.3f} | {m['false_drops']} | {int((~kept).sum())}"
        else:
            q = "| | |"
        print(f"| {name} | {base[name]:.2f} | {', '.join(f'{s:.1f}' for s, _ in v)} | "
              f"{max(m for _, m in v):.0f} | {base[name] / ours:.2f} | {q} |")


# --- duplicate-heavy traces ------------------------------------------------------------------------


def heavy_traces(n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` real-length traces, 99% of them near-duplicates: 1% distinct traces (real traces with a
    quarter of their words replaced), each copied with 1-3 words changed."""
    rng = random.Random(seed)
    frames = [pl.from_arrow(b.traces) for f in sorted((SHARED / "traces").glob("*.jsonl")) for b in read(str(f)).batches(5000)]
    real = pl.concat(frames).select("problem", "thinking", "solution").rows()
    vocab = [w for p, t, _ in real[:200] for w in (p + " " + t).split(" ")[:400] if w.isalpha()]
    bases = []
    for _ in range(max(1, n // 100)):
        p, t, s = rng.choice(real)
        bases.append((p, " ".join(rng.choice(vocab) if rng.random() < 0.25 else w for w in t.split(" ")), s))
    rows = list(bases)
    while len(rows) < n:
        p, t, s = rng.choice(bases)
        words = t.split(" ")
        for _ in range(rng.randint(1, 3)):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        rows.append((p, " ".join(words), s))
    rng.shuffle(rows)
    return pl.DataFrame(rows, schema=["problem", "thinking", "solution"], orient="row").with_columns(
        pl.format("h{}", pl.int_range(pl.len())).alias("id"))


def _status_mb(field: str) -> float:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field)) / 1024


def _rss_now_mb() -> float:
    return _status_mb("VmRSS:")


def heavy_child(n: int, work: Path) -> None:
    import cProfile
    import pstats

    frame = pl.read_parquet(work / f"heavy-{n}.parquet")
    before = _rss_now_mb()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) from here on is the fit's alone
    step = MinHashDedup(mode="problem_response")
    prof = cProfile.Profile()
    batches = list(frame.iter_slices(1024))  # the pipeline's parts (its default batch size)
    with tempfile.TemporaryDirectory(dir=work) as folder:
        t0 = time.perf_counter()
        result = prof.runcall(run_here, step, batches, Path(folder))
        seconds = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    parts = {fn: round(sum(v[3] for k, v in stats.items() if k[2] == fn), 2)
             for fn in ("plan", "sign", "_candidates", "keep_first", "_shingles")}
    print(json.dumps({"rows": n, "seconds": seconds, **result.stats, "parts": parts, "rss_before_mb": before,
                      "peak_rss_mb": _status_mb("VmHWM:")}))


def heavy(sizes: list[int], work: Path) -> None:
    """``minhash_dedup(mode=problem_response)`` (``run_here``: parts of 1,024 rows written, its pass,
    its apply) on 99%-duplicate traces, one process per size."""
    print("| rows | seconds (pass + apply) | us/row | pass / sign / pairs / keep_first s | RSS with the data loaded MB | "
          "peak RSS MB | own KB/row | candidate pairs | checked | dropped |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        heavy_traces(n).write_parquet(work / f"heavy-{n}.parquet")
        out = subprocess.run([sys.executable, __file__, "--heavy-child", str(n), "--workdir", str(work)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        p = r["parts"]
        print(f"| {n} | {r['seconds']:.1f} | {r['seconds'] / n * 1e6:.0f} | {p['plan']} / {p['sign']} / {p['_candidates']} / "
              f"{p['keep_first']} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{(r['peak_rss_mb'] - r['rss_before_mb']) * 1024 / n:.1f} | {r['candidate_pairs']:,} | "
              f"{r['checked_pairs']:,} | {r['dropped']:,} |", flush=True)


def rss(sizes: list[int], work: Path) -> None:
    """Peak RSS of ``curate run`` (one-step minhash recipe, no card) at each size, whole process."""
    print("| rows | seconds | peak RSS MB | KB/row |")
    print("|---|---|---|---|")
    curate = str(Path(sys.executable).parent / "curate")
    for n in sizes:
        texts = corpus(n, work)
        data = work / f"traces-{n}.parquet"
        pl.DataFrame({"id": [f"r{i}" for i in range(n)], "problem": texts, "thinking": ["Let me think."] * n,
                      "solution": ["The answer is 1."] * n}).write_parquet(data)
        recipe = work / f"rss-{n}.yaml"
        recipe.write_text(RECIPE.format(data=data, out=work / f"rss-out-{n}", params=""))
        seconds, mb = timed([curate, "run", str(recipe), "--overwrite", "--no-progress", "--no-card"])
        print(f"| {n} | {seconds:.1f} | {mb:.0f} | {mb * 1024 / n:.2f} |", flush=True)


# --- planted duplicates ------------------------------------------------------------------------------


def planted_report() -> None:
    """Planted copies of the real trace problems (tests/test_minhash.py), and the held-out set of
    1,500 distinct training problems + 300 copies: copies caught and distinct problems merged."""
    originals: list[str] = []
    for f in sorted((SHARED / "traces").glob("*.jsonl")):
        for b in read(str(f)).batches(5000):
            originals += b.traces.column("problem").to_pylist()
    originals = list(dict.fromkeys(originals))
    texts, planted = plant(originals, 800, seed=3)
    step = MinHashDedup()
    frame = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "problem": texts,
                          "thinking": [""] * len(texts), "solution": [""] * len(texts)})
    rep = kept_rows(step, frame)
    pairs, jac = exact_jaccard_pairs(texts, step.size, step.shingle)
    print(f"planted: {len(originals)} distinct real trace problems + {len(planted)} near-duplicates; "
          f"defaults {step.shingle} {step.size}-shingles, {step.bands}x{step.rows}, threshold {step.threshold}")
    print(json.dumps(score(rep, pairs, jac, step.threshold)))
    n0 = len(originals)
    print("| variant | planted | at exact Jaccard >= 0.72 | caught | caught of those at >= 0.72 |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        ks = [k for k, (_, v) in enumerate(planted) if v == variant]
        caught = [rep[n0 + k] == rep[planted[k][0]] for k in ks]
        above = [_jac(pairs, jac, planted[k][0], n0 + k) >= step.threshold for k in ks]
        print(f"| {variant} | {len(ks)} | {sum(above)} | {sum(caught)} ({np.mean(caught):.1%}) | "
              f"{sum(c and a for c, a in zip(caught, above))} |")
    records = [r for f in sorted((SHARED / "problems").glob("*.json")) for r in json.loads(f.read_text())]
    answers: dict[str, set[str]] = {}
    for r in records:
        answers.setdefault(r["problem"], set()).add(str(r["answer"]).replace(" ", ""))
    print("\nheld out: 1,500 distinct training problems + 300 planted copies, per seed")
    print("| seed | settings | copies caught | rows dropped | false merges (another original) | "
          "of which a different answer |")
    print("|---|---|---|---|---|---|")
    settings = {"defaults": {}, "with [asy]": {"ignore_asy": False},
                "without same_numbers": {"same_numbers": False},
                "neither": {"ignore_asy": False, "same_numbers": False}}
    for seed in (0, 1, 2):
        texts, origin = held_out([r["problem"] for r in records], seed=seed)
        frame = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "problem": texts,
                              "thinking": [""] * len(texts), "solution": [""] * len(texts)})
        for label, kw in settings.items():
            step = MinHashDedup(**kw)
            rep = kept_rows(step, frame)
            m = merges(rep, origin)
            wrong = [k for k in np.flatnonzero(rep != np.arange(len(texts))) if origin[rep[k]] != origin[k]
                     and not answers[texts[origin[k]]] & answers[texts[origin[rep[k]]]]]
            print(f"| {seed} | {label} | {m['copies_caught']}/{m['copies']} | {m['dropped']} | "
                  f"{m['false_merges']} | {len(wrong)} |")


def pass_cpu_child(n: int, work: Path) -> None:
    """CPU seconds (user + sys, all threads) of ``minhash_dedup``'s pass (``plan``) and apply on
    ``n`` corpus rows in parts of 1,024 rows (a pipeline's default batch size), in process
    (``run_here``; the part writes it starts with are not counted)."""
    texts = corpus(n, work)
    frame = pl.DataFrame({"id": [str(i) for i in range(n)], "problem": texts,
                          "thinking": [""] * n, "solution": [""] * n})
    spent = {"plan": 0.0, "apply": 0.0}
    plan, apply = MinHashDedup.plan, MinHashDedup.apply_plan

    def timed_call(name: str, fn: Any, *a: Any) -> Any:
        t0 = time.process_time()
        try:
            return fn(*a)
        finally:
            spent[name] += time.process_time() - t0

    step = MinHashDedup()
    step.plan = lambda ctx: (timed_call("plan", plan, step, ctx), lambda s, *a: timed_call("apply", apply, s, *a))[1]
    with tempfile.TemporaryDirectory(dir=work) as folder:
        t0 = time.perf_counter()
        result = run_here(step, list(frame.iter_slices(1024)), Path(folder))
        seconds = time.perf_counter() - t0
    print(json.dumps({"rows": n, **spent, "wall_with_part_writes": seconds, "dropped": result.stats["dropped"]}))


def pass_cpu(args: argparse.Namespace, work: Path) -> None:
    """The pass + apply CPU of this checkout and of ``--before`` (another checkout, e.g. ``git
    worktree add /tmp/before <commit>``), one process each, interleaved ``--repeat`` times."""
    corpus(args.pass_cpu, work)
    trees = {"after": str(Path(__file__).resolve().parent.parent)}
    if args.before:
        trees = {"before": str(args.before.resolve()), **trees}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for _ in range(args.repeat):
        for name, tree in trees.items():
            out = subprocess.run([sys.executable, __file__, "--pass-cpu-child", str(args.pass_cpu), "--workdir", str(work)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": tree, "CURATE_BENCH_CHECKOUT": tree})
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"machine: {platform.node()} {os.cpu_count()} cores (load {os.getloadavg()[0]:.1f}); {args.pass_cpu} rows "
          f"in parts of 1,024; {args.repeat} interleaved runs, median")
    print("| checkout | pass CPU s | apply CPU s | pass + apply CPU s | runs (pass + apply) | dropped |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        total = [r["plan"] + r["apply"] for r in rs]
        print(f"| {name} | {np.median([r['plan'] for r in rs]):.2f} | {np.median([r['apply'] for r in rs]):.2f} | "
              f"{np.median(total):.2f} | {', '.join(f'{t:.2f}' for t in total)} | {rs[0]['dropped']} |")


def _jac(pairs: np.ndarray, jac: np.ndarray, i: int, j: int) -> float:
    hit = np.flatnonzero((pairs[:, 0] == min(i, j)) & (pairs[:, 1] == max(i, j)))
    return float(jac[hit[0]]) if len(hit) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--loop-rows", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=3, help="--whole: interleaved runs per command")
    ap.add_argument("--workdir", type=Path, help="keep files here (default: a fresh temporary folder)")
    ap.add_argument("--only", choices=list(CANDIDATES))
    ap.add_argument("--child-rows", type=int)
    ap.add_argument("--whole", action="store_true", help="whole processes: curate run vs the plain loops")
    ap.add_argument("--heavy", type=int, nargs="+", metavar="ROWS", help="99%% near-duplicate traces at these sizes")
    ap.add_argument("--heavy-child", type=int)
    ap.add_argument("--rss", type=int, nargs="+", metavar="ROWS", help="peak RSS of curate run at these sizes")
    ap.add_argument("--planted", action="store_true", help="only the planted-duplicate report")
    ap.add_argument("--pass-cpu", type=int, metavar="ROWS", help="CPU s of the step's pass + apply (vs --before)")
    ap.add_argument("--pass-cpu-child", type=int)
    ap.add_argument("--before", type=Path, help="--pass-cpu: another checkout to compare with")
    args = ap.parse_args()
    if args.planted:
        planted_report()
        return
    with tempfile.TemporaryDirectory(prefix="curate-bench-minhash-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.only:
            child(args.only, args.child_rows or args.rows, work)
        elif args.heavy_child:
            heavy_child(args.heavy_child, work)
        elif args.pass_cpu_child:
            pass_cpu_child(args.pass_cpu_child, work)
        elif args.pass_cpu:
            pass_cpu(args, work)
        elif args.heavy:
            heavy(args.heavy, work)
        elif args.rss:
            rss(args.rss, work)
        elif args.whole:
            whole(args, work)
        else:
            in_process(args, work)


if __name__ == "__main__":
    main()
