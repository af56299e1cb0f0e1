"""The generation interface every backend implements: prompts in, completions with token counts out.

A backend is built from a plain settings dict (what a recipe's ``model:`` block holds) by
``curate.models.get_backend``, which keeps one instance per settings per process, so a model is
loaded once however many steps use it. ``Backend.generate`` looks every prompt up in the on-disk
cache first and sends only the misses to the backend's ``_generate``; errors are never cached, so
a re-run retries them and a killed run resumes with the finished prompts free. Completions made
elsewhere (a distributed engine's batch job, ``curate.engines.llm``) are handed in with ``given``
and then stand in for ``_generate``, so the step that asked reads them exactly as its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from curate.models.cache import GenerationCache, cache_key, params_text


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one generate call; ``n`` samples per prompt, reproducible by ``seed``."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class Completion:
    """One sample. ``finish_reason`` is stop | length | error; ``error`` says why when it failed."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(message: str, n: int, prompt_tokens: int = 0) -> list[Completion]:
    """``n`` error completions carrying one reason (a prompt that could not be served)."""
    return [Completion("", prompt_tokens, 0, "error", message) for _ in range(n)]


def prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """Token ids of a prompt, as a user turn under the tokenizer's chat template when ``chat``.

    The template is rendered to text first and then tokenised: ``apply_chat_template(tokenize=True)``
    returns a list in some transformers versions and a BatchEncoding in others.
    """
    if chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                               add_generation_prompt=True, tokenize=False)
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


@dataclass
class GenerationStats:
    """Counters of one backend instance: cache hits, prompts generated, HTTP requests, failures,
    and the tokens in and out of what it generated (cache hits cost none)."""

    cache_hits: int = 0
    generated: int = 0
    requests: int = 0
    retries: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend:
    """Base class: subclasses set ``kind`` and implement ``_generate`` for cache misses."""

    kind: ClassVar[str] = ""

    def __init__(self, model: str, cache: GenerationCache | None = None) -> None:
        self.model = model
        self.cache = cache
        self.stats = GenerationStats()
        self._given: Mapping[str, list[Completion]] = {}

    @property
    def model_id(self) -> str:
        """What the cache keys on: backend kind and model name."""
        return f"{self.kind}:{self.model}"

    def key(self, prompt: str, params: SamplingParams) -> str:
        """The cache key of one request to this backend."""
        return cache_key(self.model_id, prompt, params_text(params.as_dict()))

    @contextmanager
    def given(self, completions: Mapping[str, list[Completion]]) -> Iterator[None]:
        """Within the block, requests whose key is in ``completions`` take those instead of
        generating (and are cached and counted as generated, as if this backend had made them)."""
        self._given = completions
        try:
            yield
        finally:
            self._given = {}

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order (cached ones cost nothing)."""
        prompts = list(prompts)
        ptext = params_text(params.as_dict())
        keys = [cache_key(self.model_id, p, ptext) for p in prompts]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        self.stats.cache_hits += sum(1 for k in keys if k in found)
        todo: dict[str, str] = {}  # key -> prompt (identical prompts are generated once)
        for k, p in zip(keys, prompts, strict=True):
            if k not in found:
                todo.setdefault(k, p)
        if todo:
            todo_keys = list(todo)
            made = self._made(todo_keys, [todo[k] for k in todo_keys], params)
            if len(made) != len(todo_keys):
                raise RuntimeError(f"{self.kind} backend returned {len(made)} results for {len(todo_keys)} prompts")
            self.stats.generated += len(todo_keys)
            fresh = {}
            for k, comps in zip(todo_keys, made, strict=True):
                self.stats.prompt_tokens += comps[0].prompt_tokens if comps else 0
                self.stats.completion_tokens += sum(c.completion_tokens for c in comps)
                if any(not c.ok for c in comps):
                    self.stats.errors += 1
                else:
                    fresh[k] = comps
                found[k] = comps
            if self.cache is not None and fresh:
                self.cache.put_many(self.model_id, fresh)
        return [found[k] for k in keys]

    def _made(self, keys: list[str], prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """The given completions of these keys, the rest from ``_generate``."""
        rest = [i for i, k in enumerate(keys) if k not in self._given]
        fresh = iter(self._generate([prompts[i] for i in rest], params) if rest else [])
        return [self._given[k] if k in self._given else next(fresh) for k in keys]

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds (threads, GPU memory); the default holds nothing."""
