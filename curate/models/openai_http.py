"""``openai`` backend: any OpenAI-compatible endpoint (``vllm serve``, SGLang, a hosted API).

One HTTP request per prompt (``n`` samples in it), ``concurrency`` in flight on a thread pool.
Retries with exponential backoff and jitter (honouring ``Retry-After``) on 429, 5xx, timeouts,
refused connections and malformed bodies; other 4xx (e.g. a prompt over the context) fail the
prompt at once with the server's message. ``max_requests`` caps the HTTP requests this backend
sends in its life, retries included: past it, prompts come back as errors ("request budget
exhausted") and are not cached, so a re-run with a larger budget resumes where this one stopped.
Plain stdlib (urllib), so the backend needs no extra package.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from curate.models.base import Backend, Completion, SamplingParams, failed
from curate.models.cache import GenerationCache

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


class OpenAIBackend(Backend):
    """OpenAI-compatible ``/v1/completions`` (or ``/v1/chat/completions`` with ``chat: true``) client."""

    kind = "openai"

    def __init__(self, model: str, cache: GenerationCache | None = None, *,
                 base_url: str = "http://127.0.0.1:8000/v1", api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", chat: bool = False, concurrency: int = 8,
                 max_retries: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 timeout_s: float = 120.0, max_requests: int | None = None,
                 extra_body: dict[str, Any] | None = None) -> None:
        super().__init__(model, cache)
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or os.environ.get(api_key_env) or "EMPTY"
        self.chat = chat
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.max_requests = max_requests
        self.extra_body = dict(extra_body or {})
        self._lock = threading.Lock()

    # --- one request ---------------------------------------------------------------------------
    def _take_budget(self) -> bool:
        with self._lock:
            if self.max_requests is not None and self.stats.requests >= self.max_requests:
                return False
            self.stats.requests += 1
            return True

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.chat else 'completions'}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}

    def body(self, prompt: str, params: SamplingParams) -> dict[str, Any]:
        """The JSON request of one prompt (``n`` samples)."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p,
                                "n": params.n, "seed": params.seed, **self.extra_body}
        if params.stop:
            body["stop"] = list(params.stop)
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code in RETRY_STATUS:
                after = e.headers.get("Retry-After") if e.headers else None
                raise _Retryable(f"HTTP {e.code}: {detail}", _seconds(after)) from None
            raise _Fatal(f"HTTP {e.code}: {detail}") from None
        except TimeoutError:
            raise _Retryable(f"timeout after {self.timeout_s:g}s") from None
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise _Retryable(f"timeout after {self.timeout_s:g}s") from None
            raise _Retryable(f"connection failed: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Retryable(f"malformed response body: {raw[:80]!r}") from None

    def parse(self, data: dict[str, Any], params: SamplingParams) -> list[Completion]:
        """The completions of a response body; a malformed one raises (retryable)."""
        return parse_response(data, params.n, self.chat)

    def _one(self, prompt: str, params: SamplingParams) -> list[Completion]:
        body = self.body(prompt, params)
        last = "no request sent"
        for attempt in range(self.max_retries + 1):
            if not self._take_budget():
                return failed(f"request budget exhausted ({self.max_requests} requests); last error: {last}", params.n)
            try:
                return self.parse(self._post(body), params)
            except _Fatal as e:
                return failed(str(e), params.n)
            except _Retryable as e:
                last = str(e)
                if attempt == self.max_retries:
                    break
                with self._lock:
                    self.stats.retries += 1
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
                time.sleep(max(delay, min(e.retry_after or 0.0, self.max_backoff_s)))
        return failed(f"gave up after {self.max_retries + 1} attempts: {last}", params.n)

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._one(p, params) for p in prompts]
        with ThreadPoolExecutor(min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_response(data: dict[str, Any], n: int, chat: bool) -> list[Completion]:
    """The ``n`` completions of a (chat) completions response body; a malformed one raises."""
    try:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        texts = [c["message"]["content"] if chat else c["text"] for c in choices]
        finishes = [c.get("finish_reason") or "stop" for c in choices]
    except (KeyError, TypeError, AttributeError) as e:
        raise _Retryable(f"malformed completion: missing {e}") from None
    if len(texts) != n or any(not isinstance(t, str) for t in texts):
        raise _Retryable(f"malformed completion: {len(texts)} choices for n={n}")
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    total = int(usage.get("completion_tokens") or 0)
    # usage counts all n samples together; per-sample counts come from the server when it sends them
    per = [int((c.get("usage") or {}).get("completion_tokens") or 0) for c in choices]
    if not any(per) and total:
        per = [total // n] * n
    return [Completion(t, prompt_tokens, k, "length" if f == "length" else "stop")
            for t, k, f in zip(texts, per, finishes, strict=True)]
