"""The benchmark test sets bundled for decontamination, a loader for user files, and the builder.

Bundled sets live in ``curate/data/benchmarks/`` as JSONL, one ``{"id", "problem", "answer"}``
per test item (provenance in that folder's README.md). GPQA-Diamond ships as a fingerprint
only (its authors ask that the questions not be republished in plain text): 64-bit hashes of
its word n-grams and of its exact-match key, in ``gpqa_diamond.fingerprint.npz``, so it can be
matched by the ``ngram`` and ``exact`` methods but not by ``fuzzy`` or ``embedding``.

``python -m curate.ops.decontam.benchmarks SRC_DIR`` rebuilds the folder from the original files.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import xxhash

from curate.text import TokenBatch

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "benchmarks"
FINGERPRINT_NGRAMS = (8, 13, 32)  # the n-gram sizes GPQA's fingerprint is stored for
_EXACT_STRIP = re.compile(r"[\W\d_]+")

#: name -> (file in DATA_DIR, what it is)
BUNDLED: dict[str, tuple[str, str]] = {
    "math500": ("math500.jsonl", "MATH-500 (test subset of MATH used by PRM800K)"),
    "aime24": ("aime24.jsonl", "AIME 2024 I and II"),
    "aime25": ("aime25.jsonl", "AIME 2025 I and II"),
    "amc23": ("amc23.jsonl", "AMC 2023 (12A/12B, as used by Qwen2.5-Math eval)"),
    "gsm8k": ("gsm8k.jsonl", "GSM8K test"),
    "minerva": ("minerva_math.jsonl", "Minerva Math (OCWCourses) test"),
    "olympiadbench": ("olympiadbench.jsonl", "OlympiadBench (English, text-only math, OE_TO_maths_en_COMP)"),
    "gpqa": ("gpqa_diamond.fingerprint.npz", "GPQA-Diamond questions, fingerprint form only (hashed n-grams)"),
}


def exact_key(text: str) -> str:
    """Light-R1's exact-match key: lower-cased text with non-word characters and digits removed."""
    return _EXACT_STRIP.sub("", text.lower())


def exact_key_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(exact_key(text).encode("utf-8", "surrogatepass"))


@dataclass
class Benchmark:
    """One benchmark's test items: ids always; problem text unless it ships as a fingerprint."""

    name: str
    ids: list[str]
    problems: list[str] | None  # None for fingerprint-only sets (GPQA)
    answers: list[str | None] = field(default_factory=list)
    # fingerprint-only sets: token count, exact-key hash and {n: (gram hashes, item index)}
    n_tokens: np.ndarray | None = None
    exact_hashes: np.ndarray | None = None
    grams: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_text(self) -> bool:
        return self.problems is not None


def available() -> list[str]:
    """Names ``decontaminate`` accepts in ``benchmarks``."""
    return list(BUNDLED)


@cache
def load(name: str) -> Benchmark:
    """A bundled benchmark by name (cached: the files are read once per process)."""
    if name not in BUNDLED:
        raise ValueError(f"unknown benchmark {name!r}; bundled: {', '.join(BUNDLED)}")
    path = DATA_DIR / BUNDLED[name][0]
    if path.suffix == ".npz":
        return _load_fingerprint(name, path)
    return _load_jsonl(name, path)


def _load_jsonl(name: str, path: Path) -> Benchmark:
    ids, problems, answers = [], [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            ids.append(str(rec["id"]))
            problems.append(rec["problem"])
            answers.append(rec.get("answer"))
    return Benchmark(name, ids, problems, answers)


def _load_fingerprint(name: str, path: Path) -> Benchmark:
    with np.load(path, allow_pickle=False) as z:
        grams = {n: (z[f"grams_{n}"], z[f"items_{n}"]) for n in FINGERPRINT_NGRAMS if f"grams_{n}" in z}
        return Benchmark(name, [str(i) for i in z["ids"]], None, [], z["n_tokens"], z["exact"], grams)


def load_user_file(path: str | Path) -> Benchmark:
    """A user's test set: JSONL or a JSON list with `problem` (or `question`/`prompt`) and optional
    `id`; the benchmark is named after the file's stem."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"benchmark file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    records = json.loads(text) if p.suffix == ".json" else [json.loads(x) for x in text.split("\n") if x.strip()]
    ids, problems, answers = [], [], []
    for k, rec in enumerate(records):
        problem = next((rec[key] for key in ("problem", "question", "prompt") if isinstance(rec.get(key), str)), None)
        if problem is None:
            raise ValueError(f"{p}: record {k} has no problem/question/prompt text")
        ids.append(str(rec.get("id", rec.get("idx", rec.get("unique_id", k)))))
        problems.append(problem)
        answers.append(None if rec.get("answer") is None else str(rec["answer"]))
    return Benchmark(p.stem, ids, problems, answers)


# --- building the bundled folder from the original files -----------------------------------------


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (braces balanced), for sets whose answer is in the solution."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _num(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]


def convert(src: Path) -> dict[str, list[dict]]:
    """The bundled text sets' records from the original files in ``src`` (see README.md)."""
    out: dict[str, list[dict]] = {}
    out["math500"] = [{"id": r["unique_id"], "problem": r["problem"], "answer": r["answer"]}
                      for r in _jsonl(src / "simplerl_math500_test.jsonl")]
    out["aime24"] = [{"id": str(r["id"]), "problem": r["problem"], "answer": _num(r["answer"])}
                     for r in _jsonl(src / "simplerl_aime24_test.jsonl")]
    out["aime25"] = [{"id": str(r["id"]), "problem": r["problem"],
                      "answer": ", ".join(_num(a) for a in (r["answer"] if isinstance(r["answer"], list) else [r["answer"]]))}
                     for r in json.loads((src / "lightr1_aime25_test.json").read_text(encoding="utf-8"))]
    out["amc23"] = [{"id": str(r["id"]), "problem": r["problem"], "answer": _num(r["answer"])}
                    for r in _jsonl(src / "simplerl_amc23_test.jsonl")]
    out["gsm8k"] = [{"id": str(r["idx"]), "problem": r["question"], "answer": r["answer"].rsplit("####", 1)[-1].strip()}
                    for r in _jsonl(src / "simplerl_gsm8k_test.jsonl")]
    out["minerva"] = [{"id": str(r["idx"]), "problem": r["problem"], "answer": _last_boxed(r["solution"])}
                      for r in _jsonl(src / "simplerl_minerva_math_test.jsonl")]
    out["olympiadbench"] = [{"id": str(r["id"]),
                             "problem": (f"{r['context']}\n{r['question']}" if r.get("context") else r["question"]),
                             "answer": ", ".join(r["final_answer"] or [])}
                            for r in _jsonl(src / "simplerl_olympiadbench_test.jsonl")]
    return out


def fingerprint(ids: list[str], problems: list[str], ngrams: tuple[int, ...] = FINGERPRINT_NGRAMS) -> dict[str, np.ndarray]:
    """Arrays that let ``ngram`` and ``exact`` match a set without shipping its text."""
    batch = TokenBatch(problems)
    arrays: dict[str, np.ndarray] = {
        "ids": np.array(ids, dtype=np.str_),
        "n_tokens": batch.lengths.astype(np.int32),
        "exact": np.array([exact_key_hash(p) for p in problems], dtype=np.uint64),
    }
    for n in ngrams:
        rows, _, hashes = batch.windows(n)
        pairs = np.unique(np.stack([hashes, rows.astype(np.uint64)], axis=1), axis=0)
        arrays[f"grams_{n}"] = pairs[:, 0].copy()
        arrays[f"items_{n}"] = pairs[:, 1].astype(np.int32)
    return arrays


def build(src: Path, dest: Path = DATA_DIR) -> None:
    """Write the bundled folder from the original files (README.md is kept by hand)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, records in convert(src).items():
        with (dest / BUNDLED[name][0]).open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    gpqa = _jsonl(src / "limo_gpqa_test.jsonl")
    np.savez_compressed(dest / BUNDLED["gpqa"][0],
                        **fingerprint([str(r["id"]) for r in gpqa], [r["question"] for r in gpqa]))


if __name__ == "__main__":  # pragma: no cover
    build(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else DATA_DIR)
