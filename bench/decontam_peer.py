"""The script a user would write instead of ``decontaminate``: open-r1's 8-gram check, whole process.

Follows huggingface/open-r1 ``scripts/decontaminate.py``: lower-case, split on whitespace, the set
of every benchmark problem's word 8-grams, and a row is contaminated when any of its 8-grams is
in that set. Reads JSONL, checks the given fields, writes the clean rows as JSONL.

    python bench/decontam_peer.py IN.jsonl OUT.jsonl --fields question [--n 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "curate" / "data" / "benchmarks"


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def ngrams(text: str, n: int) -> set[str]:
    words = normalize(text).split()
    return {" ".join(words[i: i + n]) for i in range(len(words) - n + 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dest")
    ap.add_argument("--fields", nargs="+", default=["question"])
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    lookup: set[str] = set()
    for f in sorted(BENCH_DIR.glob("*.jsonl")):
        for line in f.open(encoding="utf-8"):
            lookup |= ngrams(json.loads(line)["problem"], args.n)
    kept = flagged = 0
    with open(args.src, encoding="utf-8") as src, open(args.dest, "w", encoding="utf-8") as out:
        for line in src:
            row = json.loads(line)
            if any(g in lookup for k in args.fields for g in ngrams(_field(row, k), args.n)):
                flagged += 1
            else:
                kept += 1
                out.write(line)
    print(f"kept {kept}, flagged {flagged}")


def _field(row: dict, key: str) -> str:
    value = row.get(key)
    return " ".join(value) if isinstance(value, list) else str(value or "")


if __name__ == "__main__":
    main()
