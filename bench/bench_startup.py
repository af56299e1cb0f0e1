"""Start-up of the whole command (issue 19, point 4): `curate --help`, a no-op recipe without and
with the dataset card, each in a fresh process, interleaved, wall and CPU seconds (user + sys).

    python bench/bench_startup.py --rounds 5                     # this checkout
    python bench/bench_startup.py --rounds 5 --compare /path/to/before --compare /path/to/other   # same rounds

The recipe: 5 JSONL rows, ``steps: [{filter: {}}]``, written to a temporary folder. Each round
also times ``write_card`` alone, in a fresh interpreter that has first loaded what the run loads
(the pipeline, the operators, pyarrow, polars, rich), on a copy of the no-op's output folder.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench import compile_bytecode  # noqa: E402

ROWS = [{"problem": f"What is {i}+1?", "thinking": "think " * 20, "solution": f"\\boxed{{{i + 1}}}"}
        for i in range(5)]
CARD_ONLY = ("import shutil, time\nimport curate.pipeline, curate.ops, pyarrow, polars, rich.console\n"
             "curate.ops.registry(); shutil.rmtree('card', ignore_errors=True); shutil.copytree('base', 'card')\n"
             "t = time.process_time()\nfrom curate.card import write_card\nwrite_card('card')\n"
             "print(time.process_time() - t)")
COMMANDS = {"--help": ["--help"], "no-op --no-card": ["run", "r.yaml", "--out", "out", "--no-card"],
            "no-op with card": ["run", "r.yaml", "--out", "out"]}


def timed(tree: Path, argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of ``python -m curate.cli argv`` with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(["rm", "-rf", str(cwd / "out")], check=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{tree}: curate {' '.join(argv)} failed")
    return wall, usage.ru_utime + usage.ru_stime


def card_cpu(tree: Path, cwd: Path) -> float:
    """CPU seconds of ``write_card`` on the no-op's folder (``cwd/base``), after the run's imports."""
    out = subprocess.run([sys.executable, "-c", CARD_ONLY], cwd=cwd, env={**os.environ, "PYTHONPATH": str(tree)},
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compare", type=Path, action="append", default=[],
                    help="another checkout of curate, timed in the same rounds (repeatable)")
    args = ap.parse_args()
    trees = {"this": REPO, **{str(p): p.resolve() for p in args.compare}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        (work / "r.yaml").write_text("input: in.jsonl\nsteps:\n  - filter: {}\n")
        compile_bytecode(*trees.values())  # as an install does (PYTHONDONTWRITEBYTECODE=1 never writes them)
        for tree in trees.values():  # warm the page cache and .pyc files once, not timed
            for argv in COMMANDS.values():
                timed(tree, argv, work)
        timed(REPO, [*COMMANDS["no-op --no-card"][:2], "--out", "base", "--no-card"], work)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        card: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, argv in COMMANDS.items():
                for label, tree in trees.items():
                    times.setdefault((label, name), []).append(timed(tree, argv, work))
            for label, tree in trees.items():
                card.setdefault(label, []).append(card_cpu(tree, work))
    load = os.getloadavg()[0]
    print(f"{args.rounds} interleaved rounds, load average {load:.1f} at the end, {os.cpu_count()} CPUs")
    print("| command | tree | wall s median (min-max) | CPU s median (min-max) |")
    print("|---|---|---|---|")
    for (label, name), runs in times.items():
        wall, cpu = zip(*runs)
        print(f"| `{name}` | {label} | {statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}) | "
              f"{statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) |")
    for label, runs in card.items():
        print(f"| `write_card` alone (in process) | {label} | | {statistics.median(runs):.2f} "
              f"({min(runs):.2f}-{max(runs):.2f}) |")
    for label in list(trees)[1:]:
        for name in COMMANDS:
            ratio = statistics.median(c for _, c in times[(label, name)]) / statistics.median(
                c for _, c in times[("this", name)])
            print(f"`{name}`: {label} / this, median CPU = {ratio:.2f}x")


if __name__ == "__main__":
    main()
