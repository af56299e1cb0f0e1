"""Stage round trips of a short recipe: whole ``curate run --no-card`` of two checkouts, interleaved.

    python bench/bench_stages.py --before /path/to/other/checkout --rows 100000 --repeat 5
    python bench/bench_stages.py --before CHECKOUT --recipes verify decontam_problems decontam_traces

The last form is the before/after of the other benches' whole commands (``bench_verify.py
--whole``'s verify recipe on the labelled rows, ``bench_decontam.py --whole``'s two inputs).

Two one-step recipes over the same 100k-row Parquet (bench_minhash's corpus: real problems, 5%
planted near-duplicates): ``filter: {}`` (a step that keeps every row, so the time is the read
stage, the part round trips and the published shards) and ``minhash_dedup: {}``. Each command
runs in its own process with ``PYTHONPATH`` set to its checkout, alternating checkouts and
recipes; the table gives the median wall and CPU seconds (and the lowest CPU) (user + sys of the process, from
``wait4``) and the ratio to ``--before``. The last run's manifest gives the stage times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import compile_bytecode  # noqa: E402
from bench.bench_minhash import corpus  # noqa: E402

HERE = Path(__file__).resolve().parent.parent
RECIPES = {"filter": "filter: {}", "minhash_dedup": "minhash_dedup: {}", "verify": "verify: {keep: all, workers: 2}",
           "decontam_problems": "decontaminate: {fields: [problem]}",
           "decontam_traces": "decontaminate: {fields: [problem, thinking, solution]}"}


def recipe_input(recipe: str, work: Path, data: Path, rows: int) -> str:
    """The ``input:`` of a recipe: the minhash corpus, or the input the named bench uses."""
    if recipe == "verify":
        from bench.bench_verify import FILES

        folder = work / "verify-in"
        folder.mkdir(exist_ok=True)
        for f in FILES:
            if "minerva" not in f.name and not (folder / f.name).exists():
                (folder / f.name).symlink_to(f)
        return f"{{path: {folder}}}"
    if recipe.startswith("decontam_"):
        from bench.bench_decontam import write_inputs

        if not (work / "problems.jsonl").exists():
            write_inputs(work, rows, 10_000)
        name = recipe.removeprefix("decontam_")
        return f"{{path: {work / (name + '.jsonl')}, format: {'limo' if name == 'problems' else 'harness'}}}"
    return f"{{path: {data}}}"


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + sys) of one whole process, run in ``cwd``: ``python -m`` puts
    its working directory first on ``sys.path``, so run from a checkout it would import that
    checkout's curate whatever ``PYTHONPATH`` says."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="another checkout to compare with (e.g. the main branch)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    ap.add_argument("--workdir", type=Path, help="keep the files here (default: a fresh temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        texts = corpus(args.rows, work)
        data = work / f"traces-{args.rows}.parquet"
        pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "problem": texts,
                      "thinking": ["Let me think step by step."] * len(texts),
                      "solution": ["The answer is $\\boxed{1}$."] * len(texts)}).write_parquet(data)
        checkouts = {"after": HERE, **({"before": args.before.resolve()} if args.before else {})}
        compile_bytecode(*checkouts.values())
        commands = []
        for recipe in args.recipes:
            step = RECIPES[recipe]
            path = work / f"{recipe}.yaml"
            path.write_text(f"input: {recipe_input(recipe, work, data, args.rows)}\nsteps:\n  - {step}\n")
            for label, repo in checkouts.items():
                out = work / f"out-{recipe}-{label}"
                cmd = [sys.executable, "-m", "curate.cli", "run", str(path), "--out", str(out), "--overwrite",
                       "--no-progress", "--no-card", "-q"]
                commands.append((recipe, label, cmd, {**os.environ, "PYTHONPATH": str(repo)}, out))
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {(r, lab): [] for r, lab, *_ in commands}
        for k in range(args.repeat):
            order = commands[k % len(commands):] + commands[:k % len(commands)]
            for recipe, label, cmd, env, _ in order:
                runs[recipe, label].append(timed(cmd, env, work))
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; {args.rows} rows; "
              f"{args.repeat} interleaved runs each, medians")
        print("| recipe | checkout | wall s | CPU s | CPU s (min) | wall / before | CPU / before | stages (last run) |")
        print("|---|---|---|---|---|---|---|---|")
        for recipe, label, _, _, out in commands:
            wall = statistics.median(w for w, _ in runs[recipe, label])
            cpu = statistics.median(c for _, c in runs[recipe, label])
            ratio = ("", "")
            if "before" in checkouts:
                bw = statistics.median(w for w, _ in runs[recipe, "before"])
                bc = statistics.median(c for _, c in runs[recipe, "before"])
                ratio = (f"{wall / bw:.2f}", f"{cpu / bc:.2f}")
            m = json.loads((out / "manifest.json").read_text())
            stages = ", ".join(f"{f['name']} {f['seconds']:.2f}" for f in m["funnel"])
            low = min(c for _, c in runs[recipe, label])
            print(f"| {recipe} | {label} | {wall:.2f} | {cpu:.2f} | {low:.2f} | {ratio[0]} | {ratio[1]} | "
                  f"{stages}; pipeline {m['wall_seconds']:.2f} |")


if __name__ == "__main__":
    main()
