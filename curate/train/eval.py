"""Score a model on the bundled math benchmarks: generate, extract the answer, math-verify it.

Prompts are the benchmark problem as a user turn after the system prompt of the run's prompt
template (:mod:`curate.train.template`: the one a ``curate train`` run folder was trained with,
else Sky-T1's), rendered with the model's own chat template here exactly as training renders a
trace's prompt, and sent as plain text, so every backend (``transformers`` on CPU, ``vllm`` on
GPU) sees the same tokens. ``scores.json`` records the template. A LoRA run folder is
merged into its base first (``merge_adapter``) so both backends serve it as a plain model.

Scoring: each completion is split into thinking and solution (``curate.io.markers``), and
``curate.ops.verify.math.verify_math`` checks the solution's answer (falling back to the end of the
thinking) against the reference; an unjudgeable row counts as wrong, with its reason kept.
Accuracy is pass@1 averaged over the ``n`` samples; its 95% Wilson interval is taken over the
number of problems (samples of one problem are not independent). Every generation is written to
``OUT/generations.parquet`` and the table to ``OUT/scores.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from curate.io.markers import split_response
from curate.train.template import SKY_T1, Template, run_template

DEFAULT_BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "gpqa")


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion ``p`` observed over ``n`` trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Merge a peft LoRA folder into its base model and save a plain model + tokenizer at ``out``."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    out = Path(out)
    if (out / "config.json").exists():
        return out
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(out)
    return out


def score(text: str, reference: str | None) -> dict[str, Any]:
    """Verdict for one completion: correct (bool; unjudgeable is False), pred, gold, error, thinking_closed."""
    from curate.ops.verify.math import verify_math

    thinking, solution, closed, _ = split_response(text)
    verdict = verify_math({"reference": reference, "solution": solution, "thinking": thinking, "timeout_s": 5.0})
    return {"correct": verdict["correct"] is True, "pred": verdict.get("pred"), "gold": verdict.get("gold"),
            "error": verdict.get("error"), "thinking_closed": closed}


@dataclass
class EvalConfig:
    """Sampling and prompting; the defaults are the seed's greedy setup (temperature 0, one sample)."""

    benchmarks: tuple[str, ...] = DEFAULT_BENCHMARKS
    backend: str = "transformers"
    max_tokens: int = 32768
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    system_prompt: str | None = None  # overrides the template's system prompt
    template: dict[str, Any] | None = None  # {"style", "system_prompt"}; None: the run's, else Sky-T1's
    limit: int | None = None  # first N problems of each benchmark (smoke tests)
    backend_options: dict[str, Any] | None = None


def _model_folder(model: str, out: Path) -> str:
    path = Path(model)
    if (path / "adapter_config.json").exists():
        return str(merge_adapter(path, out / "merged"))
    if (path / "final" / "adapter_config.json").exists():  # a `curate train` run folder
        return str(merge_adapter(path / "final", out / "merged"))
    if (path / "final" / "config.json").exists():
        return str(path / "final")
    return model


def resolve_template(model: str | None, cfg: EvalConfig) -> Template:
    """The template to prompt with: ``cfg.template``, else the run folder's, else Sky-T1's;
    ``cfg.system_prompt`` replaces its system prompt."""
    if cfg.template:
        t = Template.from_json(cfg.template)
    else:
        t = (run_template(model) if model and Path(model).is_dir() else None) or SKY_T1
    if cfg.system_prompt is not None:
        t = Template(t.style, cfg.system_prompt, "given (system prompt)")
    return t


def summarise(per_problem: list[float], samples: int, out_tokens: int, seconds: float | None) -> dict[str, Any]:
    """One benchmark's figures: pass@1 over problems, its Wilson interval, counts and throughput."""
    acc = sum(per_problem) / max(len(per_problem), 1)
    lo, hi = wilson(acc, len(per_problem))
    record: dict[str, Any] = {"accuracy": acc, "ci95": [lo, hi], "problems": len(per_problem), "samples": samples,
                              "output_tokens": out_tokens}
    if seconds is not None:
        record["output_tokens_per_s"] = out_tokens / max(seconds, 1e-9)
    return record


def mean_accuracy(scores: dict[str, Any]) -> float | None:
    """The unweighted mean of the benchmarks' pass@1 (each benchmark counts once, as the paper's average)."""
    accs = [s["accuracy"] for s in scores.values() if isinstance(s, dict) and "accuracy" in s]
    return sum(accs) / len(accs) if accs else None


def evaluate(model: str, out: str | os.PathLike, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Generate on each benchmark, score, write generations.parquet and scores.json; return the scores."""
    import polars as pl
    from transformers import AutoTokenizer

    from curate.models import SamplingParams, get_backend
    from curate.ops.decontam.benchmarks import load

    cfg = cfg or EvalConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    template = resolve_template(model, cfg)
    path = _model_folder(model, out)
    tokenizer = AutoTokenizer.from_pretrained(path)
    settings = {"backend": cfg.backend, "name_or_path": path, "cache": False, "chat": False,
                **(cfg.backend_options or {})}
    backend = get_backend(settings)
    params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            n=cfg.n, seed=cfg.seed)

    def render(problem: str) -> str:
        return template.prompt(tokenizer, problem)

    rows: list[dict[str, Any]] = []
    scores: dict[str, Any] = {}
    for name in cfg.benchmarks:
        bench = load(name)
        if not bench.has_text:
            scores[name] = {"skipped": f"{name} is bundled as a fingerprint only (no problem text)"}
            continue
        k = len(bench) if cfg.limit is None else min(cfg.limit, len(bench))
        t0 = time.perf_counter()
        results = backend.generate([render(p) for p in bench.problems[:k]], params)
        seconds = time.perf_counter() - t0
        per_problem, out_tokens = [], 0
        for i, comps in enumerate(results):
            hits = 0
            for s, c in enumerate(comps):
                verdict = score(c.text, bench.answers[i]) if c.ok else \
                    {"correct": False, "error": c.error, "pred": None, "gold": None, "thinking_closed": None}
                hits += verdict["correct"]
                out_tokens += c.completion_tokens
                rows.append({"benchmark": name, "id": bench.ids[i], "sample": s, "problem": bench.problems[i],
                             "reference": bench.answers[i], "text": c.text, **verdict,
                             "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                             "completion_tokens": c.completion_tokens})
            per_problem.append(hits / max(len(comps), 1))
        scores[name] = summarise(per_problem, cfg.n, out_tokens, seconds)
    if rows:
        pl.DataFrame(rows, infer_schema_length=None).write_parquet(out / "generations.parquet")
    record = {"model": model, "served": path, "config": {**asdict(cfg), "benchmarks": list(cfg.benchmarks)},
              "template": template.to_json(), "mean_accuracy": mean_accuracy(scores), "scores": scores}
    (out / "scores.json").write_text(json.dumps(record, indent=2, default=str))
    return scores
