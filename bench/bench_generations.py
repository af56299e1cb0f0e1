"""Agreement of `curate eval --generations` with the harness's own verdicts on real eval outputs.

Scores each file of ``../shared/data/traces`` (SkyThought@corrupt Qwen2.5-Math harness outputs of
the paper's students, each response carrying the harness's ``score``) against the bundled
benchmarks' answers and prints one Markdown row per file: problems matched, our pass@1, the
harness's, the share of responses both judge alike, and seconds.

    python -m bench.bench_generations [TRACES_DIR]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from curate.train.generations import score_generations

REPO = Path(__file__).resolve().parent.parent
DEFAULT = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data")) / "traces"


def main(folder: Path = DEFAULT) -> None:
    print("| file | benchmark | matched / items | curate pass@1 | harness pass@1 | agreement | s |")
    print("|---|---|---|---|---|---|---|")
    agree = total = 0
    for path in sorted(folder.glob("*.jsonl")):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            scores = score_generations([path], tmp)
        secs = time.perf_counter() - t0
        for name, s in scores.items():
            n = s["problems"] * s["samples"]
            agree += round(s["agreement"] * n)
            total += n
            print(f"| {path.name} | {name} | {s['problems']} / {s['of']} | {100 * s['accuracy']:.1f} | "
                  f"{100 * s['harness_accuracy']:.1f} | {100 * s['agreement']:.1f}% | {secs:.0f} |")
    print(f"\nall: {agree} of {total} responses judged alike ({100 * agree / max(total, 1):.1f}%)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
