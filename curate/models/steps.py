"""Shared plumbing of the model-backed steps: settings validation, prompt filling, counted
generation, answers read back, sample verification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from curate.models import Backend, Completion, SamplingParams, check_settings, get_backend

THINK_CLOSE = ("</think>", "<|end_of_thought|>")


def checked_model(settings: dict[str, Any] | None, method: str, needs: bool) -> None:
    if needs and settings is None:
        raise ValueError(f"method {method!r} needs a model: model: {{backend: transformers | openai | vllm, "
                         "name_or_path: ...} (or a recipe-level model: block)")
    if settings is not None:
        check_settings(settings)


def model_resources(settings: dict[str, Any] | None) -> dict[str, float] | None:
    """What one distributed worker holding this model reserves: its GPUs for vLLM and for
    transformers on cuda, one CPU otherwise (None: no model, a stateless task is enough)."""
    if settings is None:
        return None
    if settings["backend"] == "vllm":
        return {"num_gpus": float(settings.get("tensor_parallel_size", 1))}
    if settings["backend"] == "transformers" and str(settings.get("device", "cpu")).startswith("cuda"):
        return {"num_gpus": 1.0}
    return {}


def fill(template: str, **values: str | None) -> str:
    """Substitute ``{name}`` placeholders literally (problems hold braces, so no str.format)."""
    out = template
    for k, v in values.items():
        out = out.replace("{" + k + "}", v or "")
    return out


def split_completion(text: str) -> tuple[str | None, str]:
    """(thinking, solution) of a completion: the text after a closing thinking marker is the solution."""
    for marker in THINK_CLOSE:
        head, sep, tail = text.rpartition(marker)
        if sep:
            return head.replace("<think>", "").replace("<|begin_of_thought|>", ""), tail
    return None, text


def verify_samples(verifier: Any, rows: pl.DataFrame, texts: list[list[str]]) -> list[list[bool | None]]:
    """Verdicts of each row's sampled completions, by the ``verify`` step's own checker.

    ``rows`` holds the columns ``verify`` reads; ``texts[i]`` the completions of row i. Each
    completion replaces the row's thinking/solution/answer and goes through ``Verify.run_tasks``.
    """
    idx = [i for i, t in enumerate(texts) for _ in t]
    if not idx:
        return [[] for _ in texts]
    thinking, solution = zip(*(split_completion(s) for t in texts for s in t), strict=True)
    frame = rows[idx].with_columns(
        pl.Series("thinking", list(thinking), dtype=pl.String),
        pl.Series("solution", list(solution), dtype=pl.String),
        pl.lit(None, dtype=pl.String).alias("answer"),
    )
    verdicts = verifier.run_tasks(verifier.tasks(frame))
    out: list[list[bool | None]] = [[] for _ in texts]
    for i, v in zip(idx, verdicts, strict=True):
        out[i].append(v["correct"])
    return out


def backend_counts(backend: Backend, before: tuple[int, int, int]) -> dict[str, int]:
    s = backend.stats
    return {"cache_hits": s.cache_hits - before[0], "generated": s.generated - before[1], "errors": s.errors - before[2]}


def snapshot(backend: Backend) -> tuple[int, int, int]:
    return backend.stats.cache_hits, backend.stats.generated, backend.stats.errors


def generate_counted(settings: dict[str, Any], prompts: list[str],
                     params: SamplingParams) -> tuple[list[list[Completion]], dict[str, int]]:
    """The completions of ``prompts`` from this process's backend, and what they cost (cache hits,
    generated, errors: the step's ``generation`` stats)."""
    backend = get_backend(settings)
    before = snapshot(backend)
    done = backend.generate(prompts, params) if prompts else []
    return done, backend_counts(backend, before)


def read_answers(done: list[list[Completion]], parse: Callable[[str], Any], failed: str,
                 unparsed: str) -> tuple[list[str], list[Any], list[str | None]]:
    """Each prompt's first completion through ``parse``: the raw texts, the parsed values (None where
    the call failed or ``parse`` found nothing) and the reject reasons (None where it parsed)."""
    raw: list[str] = []
    parsed: list[Any] = []
    reasons: list[str | None] = []
    for comps in done:
        c = comps[0]
        value = None if c.error else parse(c.text)
        raw.append(c.text)
        parsed.append(value)
        reasons.append(f"{failed}: {c.error}" if c.error else None if value else unparsed)
    return raw, parsed, reasons
