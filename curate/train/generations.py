"""Score generations another harness already made (no GPU): match each to a bundled benchmark
item, grade it with the same grader as a live eval, write the same ``scores.json`` and
``generations.parquet``.

Read layouts (JSONL, JSON list, Parquet), per record:

- Qwen2.5-Math / SkyThought eval output: ``question``, ``code`` (list of responses), ``score``
  (the harness's per-response verdicts, kept as ``harness_correct`` and compared);
- vLLM dumps: ``prompt`` and ``outputs`` (list of ``{"text"}``) or ``generated_text`` / ``text``;
- lighteval details: ``doc`` (``query``) and ``model_response`` (``text`` list), or the older
  ``example`` / ``full_prompt`` and ``predictions``;
- generic: a problem field (``problem``, ``question``, ``prompt``, ...) and a response field
  (``response``, ``completion``, ``output``, ``generation(s)``, ``response(s)``, ...).

Matching, first that hits: the exact problem text; Light-R1's exact key (lower case, letters
only); an ``id`` / ``unique_id`` that is a bundled item's id; a bundled problem whose key is
contained in the record's (a prompt with a chat template or a system prompt around the problem;
the longest such problem wins). When a problem is in more than one benchmark, the one named in
the file name wins. A record that matches nothing, or a problem met twice, is an error naming
file and line: the scores would otherwise be over an unknown subset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.train.eval import mean_accuracy, score, summarise

PROBLEM_KEYS = ("problem", "question", "query", "input", "instruction", "example", "prompt", "full_prompt")
TEXT_KEYS = ("code", "responses", "generations", "outputs", "predictions", "completions", "response",
             "generation", "completion", "generated_text", "output", "model_output", "text")
ID_KEYS = ("id", "unique_id", "problem_id")
HARNESS_KEYS = ("score", "correct", "is_correct")


@dataclass
class Generation:
    """One problem's generations from a file: where from, the problem text, responses, harness verdicts."""

    where: str
    problem: str
    texts: list[str]
    id: str | None = None
    harness: list[bool] | None = None


def _texts(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        out = []
        for v in value:
            if isinstance(v, dict):
                v = v.get("text", v.get("content"))
            if not isinstance(v, str):
                return None
            out.append(v)
        return out
    if isinstance(value, dict):
        return _texts(value.get("text"))
    return None


def _bools(value: Any, n: int) -> list[bool] | None:
    if isinstance(value, (bool, int, float)) and not isinstance(value, str):
        value = [value]
    if isinstance(value, list) and len(value) == n and all(isinstance(v, (bool, int, float)) for v in value):
        return [bool(v) for v in value]
    return None


def parse(rec: dict[str, Any], where: str) -> Generation:
    """One record -> :class:`Generation`; a record without a problem or a response is an error."""
    doc = rec.get("doc") if isinstance(rec.get("doc"), dict) else {}
    problem = next((rec[k] for k in PROBLEM_KEYS if isinstance(rec.get(k), str) and rec[k].strip()), None)
    problem = problem or next((doc[k] for k in PROBLEM_KEYS if isinstance(doc.get(k), str)), None)
    if problem is None:
        raise ValueError(f"{where}: no problem field (one of {', '.join(PROBLEM_KEYS)})")
    texts = _texts(rec.get("model_response")) if "model_response" in rec else None
    for k in TEXT_KEYS:
        if texts is None and k in rec and k not in ("prompt",):
            texts = _texts(rec[k])
    if not texts:
        raise ValueError(f"{where}: no response field (one of {', '.join(TEXT_KEYS)})")
    ident = next((str(rec[k]) for k in ID_KEYS if rec.get(k) is not None), None)
    harness = next((b for k in HARNESS_KEYS if (b := _bools(rec.get(k), len(texts))) is not None), None)
    return Generation(where, problem, texts, ident, harness)


def read_generations(paths: list[str | os.PathLike]) -> list[Generation]:
    """Every record of the files (``.jsonl``, ``.json`` list, ``.parquet``) as generations."""
    out: list[Generation] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            records = enumerate(pq.read_table(path).to_pylist(), 1)
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            data = data.get("data", data.get("results", data)) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of records")
            records = enumerate(data, 1)
        else:
            with path.open(encoding="utf-8") as f:
                lines = [(k, line) for k, line in enumerate(f, 1) if line.strip()]
            records = []
            for k, line in lines:
                try:
                    records.append((k, json.loads(line)))
                except ValueError as e:
                    raise ValueError(f"{path}:{k}: not JSON ({e})") from None
        for k, rec in records:
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{k}: expected a JSON object")
            out.append(parse(rec, f"{path}:{k}"))
    return out


class _Index:
    """Bundled benchmark items by exact text, by exact key and by id."""

    def __init__(self, names: list[str]) -> None:
        from curate.ops.decontam.benchmarks import exact_key, load

        self.benches = {n: load(n) for n in names}
        self.text: dict[str, list[tuple[str, int]]] = {}
        self.key: dict[str, list[tuple[str, int]]] = {}
        self.ids: dict[str, list[tuple[str, int]]] = {}
        for n, b in self.benches.items():
            for i, (pid, prob) in enumerate(zip(b.ids, b.problems or [])):
                self.text.setdefault(prob.strip(), []).append((n, i))
                self.key.setdefault(exact_key(prob), []).append((n, i))
                self.ids.setdefault(pid, []).append((n, i))
        self.by_length = sorted((k for k in self.key if len(k) >= 20), key=len, reverse=True)

    def match(self, g: Generation) -> list[tuple[str, int]]:
        from curate.ops.decontam.benchmarks import exact_key

        key = exact_key(g.problem)
        hits = self.text.get(g.problem.strip()) or self.key.get(key) or (self.ids.get(g.id) if g.id else None)
        if hits:
            return hits
        contained = next((k for k in self.by_length if k in key), None)
        return self.key[contained] if contained else []


def _pick(hits: list[tuple[str, int]], where: str) -> tuple[str, int]:
    """Among several benchmarks holding the problem, the one the file name names."""
    name = Path(where.rsplit(":", 1)[0]).name.lower()
    return next((h for h in hits if h[0] in name), hits[0])


def score_generations(paths: list[str | os.PathLike], out: str | os.PathLike,
                      benchmarks: list[str] | None = None) -> dict[str, Any]:
    """Match, grade and tabulate generations; write ``OUT/scores.json`` and ``OUT/generations.parquet``.

    Scores per benchmark are a live eval's (pass@1 over the matched problems, Wilson interval),
    plus ``of`` (items in the benchmark), and where the files carry their harness's verdicts,
    ``harness_accuracy`` and ``agreement`` (share of responses both graders judge alike).
    """
    import polars as pl

    from curate.ops.decontam.benchmarks import BUNDLED, load

    names = list(benchmarks) if benchmarks else [n for n in BUNDLED if load(n).has_text]
    no_text = [n for n in names if not load(n).has_text]
    if no_text:
        raise ValueError(f"{', '.join(no_text)}: bundled without problem text; generations cannot be matched")
    gens = read_generations(paths)
    index = _Index(names)
    unmatched = [g for g in gens if not index.match(g)]
    if unmatched:
        shown = "; ".join(f"{g.where}: {g.problem[:60]!r}" for g in unmatched[:5])
        raise ValueError(f"{len(unmatched)} of {len(gens)} generations match no item of "
                         f"{', '.join(names)} (by problem text or id): {shown}")
    seen: dict[tuple[str, int], str] = {}
    rows: list[dict[str, Any]] = []
    per: dict[str, dict[str, Any]] = {}
    for g in gens:
        bench, i = _pick(index.match(g), g.where)
        if (bench, i) in seen:
            raise ValueError(f"{g.where}: {bench} item {index.benches[bench].ids[i]} already given at {seen[bench, i]}")
        seen[bench, i] = g.where
        b = index.benches[bench]
        acc = per.setdefault(bench, {"per_problem": [], "samples": 0, "harness": [], "agree": []})
        hits = 0
        for s, text in enumerate(g.texts):
            verdict = score(text, b.answers[i])
            hits += verdict["correct"]
            harness = g.harness[s] if g.harness else None
            if harness is not None:
                acc["harness"].append(harness)
                acc["agree"].append(harness == verdict["correct"])
            rows.append({"benchmark": bench, "id": b.ids[i], "sample": s, "problem": b.problems[i],
                         "reference": b.answers[i], "text": text, **verdict, "harness_correct": harness,
                         "source": g.where})
        acc["per_problem"].append(hits / len(g.texts))
        acc["samples"] = max(acc["samples"], len(g.texts))
    scores: dict[str, Any] = {}
    for bench in [n for n in names if n in per]:
        a = per[bench]
        record = summarise(a["per_problem"], a["samples"], 0, None)
        record["of"] = len(index.benches[bench])
        if a["harness"]:
            record["harness_accuracy"] = sum(a["harness"]) / len(a["harness"])
            record["agreement"] = sum(a["agree"]) / len(a["agree"])
        scores[bench] = record
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(out / "generations.parquet")
    record = {"model": None, "generations": [str(p) for p in paths], "config": {"benchmarks": names},
              "mean_accuracy": mean_accuracy(scores), "scores": scores}
    (out / "scores.json").write_text(json.dumps(record, indent=2, default=str))
    return scores
