"""Generation backends behind one interface, with an on-disk completion cache.

``get_backend(settings)`` builds a backend from a plain dict, the shape a recipe's ``model:``
block and a step's ``model`` parameter share::

    {backend: transformers | openai | vllm, name_or_path: MODEL, cache: PATH | false, ...settings}

(``ray_data_llm: true`` sends an openai model's requests through Ray Data's HTTP processor on
the ray engine, as a vllm model's always go through its vLLM processor: ``curate.engines.llm``.)

Remaining keys go to the backend (``TransformersBackend``, ``OpenAIBackend``, ``VLLMBackend``).
One instance is kept per settings per process, so a model loads once for every step using it.
``backend.generate(prompts, SamplingParams(n=8, temperature=0.7, seed=0))`` returns, for each
prompt, ``n`` ``Completion`` objects (text, prompt/completion token counts, finish reason, error).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from curate.models.base import Backend, Completion, GenerationStats, SamplingParams, failed
from curate.models.cache import GenerationCache, cache_key, default_cache_path

BACKENDS = ("transformers", "openai", "vllm")
_INSTANCES: dict[str, Backend] = {}
_LOCK = threading.Lock()


def check_settings(settings: Any) -> dict[str, Any]:
    """Validate a model settings dict without building anything (steps call it in __post_init__)."""
    if not isinstance(settings, dict):
        raise ValueError(f"model settings must be a mapping like {{backend: transformers, name_or_path: ...}}, got {settings!r}")
    backend = settings.get("backend")
    if backend not in BACKENDS:
        raise ValueError(f"model.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not settings.get("name_or_path"):
        raise ValueError("model.name_or_path is required (a Hugging Face name, a local folder, or the served model name)")
    return settings


def model_label(settings: dict[str, Any]) -> str:
    return f"{settings['backend']}:{settings['name_or_path']}"


def get_backend(settings: dict[str, Any]) -> Backend:
    """The backend for these settings, built once per process."""
    check_settings(settings)
    key = json.dumps(settings, sort_keys=True, default=str)
    with _LOCK:
        if key in _INSTANCES:
            return _INSTANCES[key]
        opts = dict(settings)
        kind = opts.pop("backend")
        model = opts.pop("name_or_path")
        where = opts.pop("cache", None)
        opts.pop("ray_data_llm", None)  # read by the ray engine (curate.engines.llm), not the backend
        cache = None if where is False else GenerationCache(where or default_cache_path())
        if kind == "transformers":
            from curate.models.hf import TransformersBackend as cls
        elif kind == "openai":
            from curate.models.openai_http import OpenAIBackend as cls  # type: ignore[assignment]
        else:
            from curate.models.vllm_backend import VLLMBackend as cls  # type: ignore[assignment]
        try:
            backend = cls(model, cache, **opts)
        except TypeError as e:
            raise ValueError(f"model settings for backend {kind}: {e}") from None
        _INSTANCES[key] = backend
        return backend


def clear_backends() -> None:
    """Close and forget every built backend (tests, long-lived services)."""
    with _LOCK:
        for b in _INSTANCES.values():
            b.close()
        _INSTANCES.clear()


__all__ = ["BACKENDS", "Backend", "Completion", "GenerationCache", "GenerationStats", "SamplingParams",
           "cache_key", "check_settings", "clear_backends", "default_cache_path", "failed", "get_backend",
           "model_label"]
