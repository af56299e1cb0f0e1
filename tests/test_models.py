"""Generation backends: transformers on a tiny model built here, openai against a loopback server, the cache."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curate.models import GenerationCache, SamplingParams, cache_key, clear_backends, get_backend
from curate.models.hf import TransformersBackend
from curate.models.openai_http import OpenAIBackend
from curate.models.serve import make_server, start_in_thread


@pytest.fixture(scope="session")
def problems(shared_data: Path) -> list[str]:
    rows = [json.loads(line) for line in (shared_data / "benchmarks" / "simplerl_math500_test.jsonl").open()]
    return [r["problem"] for r in rows[:6] if len(r["problem"]) < 600]


@pytest.fixture()
def served(tiny_model: Path):
    """A loopback OpenAI-compatible server over the tiny model; ``hooks`` lets a test inject faults."""
    hooks: list = []
    seen: list[dict] = []

    def hook(path: str, body: dict):
        seen.append(body)
        for h in hooks:
            answer = h(path, body)
            if answer is not None:
                return answer
        return None

    backend = TransformersBackend(str(tiny_model), None)
    server = make_server(backend, hook=hook)
    url = start_in_thread(server)
    yield url, hooks, seen
    server.shutdown()
    server.server_close()


def test_transformers_generates_counts_and_reproduces(tiny_model: Path, problems: list[str], tmp_path: Path) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.9, n=3, seed=7)
    a = TransformersBackend(str(tiny_model), GenerationCache(tmp_path / "c.sqlite"))
    out = a.generate(problems, params)
    assert len(out) == len(problems) and all(len(c) == 3 for c in out)
    for comps in out:
        for c in comps:
            assert c.ok and 1 <= c.completion_tokens <= 12 and c.prompt_tokens > 5
            assert c.finish_reason in ("stop", "length")
    assert len({c.text for c in out[0]}) > 1  # sampling gives different samples per prompt
    b = TransformersBackend(str(tiny_model), None)  # no cache: regenerates with the same seed
    assert [[c.text for c in cs] for cs in b.generate(problems, params)] == [[c.text for c in cs] for cs in out]
    other = b.generate(problems, SamplingParams(max_tokens=12, temperature=0.9, n=3, seed=8))
    assert [c.text for c in other[0]] != [c.text for c in out[0]]


def test_cache_hit_costs_no_generation_and_survives_reopen(tiny_model: Path, problems: list[str], tmp_path: Path) -> None:
    path = tmp_path / "gen.sqlite"
    params = SamplingParams(max_tokens=8, n=2)
    first = TransformersBackend(str(tiny_model), GenerationCache(path))
    made = first.generate(problems[:3], params)
    assert first.stats.generated == 3 and first.stats.cache_hits == 0
    again = TransformersBackend(str(tiny_model), GenerationCache(path))  # a resumed run, new process state
    calls: list[int] = []
    real = again._generate
    again._generate = lambda ps, p: calls.append(len(ps)) or real(ps, p)  # type: ignore[method-assign]
    got = again.generate(problems[:4], params)
    assert calls == [1]  # only the new prompt is generated
    assert [[c.text for c in cs] for cs in got[:3]] == [[c.text for c in cs] for cs in made]
    assert again.stats.cache_hits == 3 and len(GenerationCache(path)) == 4
    # other params (or seed) are another key
    assert cache_key("m", "p", params.as_dict()) != cache_key("m", "p", SamplingParams(max_tokens=8, n=2, seed=1).as_dict())


def test_prompt_over_context_is_an_error_not_cached(tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    row = json.loads((shared_data / "traces" / "skythought_corrupt07_32b_amc23.jsonl").open().readline())
    long_prompt = row["code"][0]  # a real long-CoT trace: thousands of tokens, context is 512
    cache = GenerationCache(tmp_path / "c.sqlite")
    b = TransformersBackend(str(tiny_model), cache)
    out = b.generate([long_prompt, "What is 2+3?"], SamplingParams(max_tokens=4))
    assert out[0][0].error and out[0][0].error.startswith("prompt too long") and out[0][0].finish_reason == "error"
    assert out[1][0].ok
    assert len(cache) == 1 and b.stats.errors == 1


def test_get_backend_builds_once_and_validates(tiny_model: Path, tmp_path: Path) -> None:
    settings = {"backend": "transformers", "name_or_path": str(tiny_model), "cache": str(tmp_path / "c.sqlite")}
    try:
        assert get_backend(settings) is get_backend(dict(settings))
    finally:
        clear_backends()
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend({"backend": "llamacpp", "name_or_path": "x"})
    with pytest.raises(ValueError, match="unexpected keyword"):
        get_backend({**settings, "temperatur": 1})


def test_openai_backend_matches_local_generation(served, tiny_model: Path, problems: list[str]) -> None:
    url, _, seen = served
    params = SamplingParams(max_tokens=10, temperature=0.0, n=2)
    remote = OpenAIBackend(str(tiny_model), None, base_url=url, concurrency=3)
    local = TransformersBackend(str(tiny_model), None, batch_size=1)
    got, want = remote.generate(problems, params), local.generate(problems, params)
    assert [[c.text for c in cs] for cs in got] == [[c.text for c in cs] for cs in want]
    assert [cs[0].completion_tokens for cs in got] == [cs[0].completion_tokens for cs in want]
    assert remote.stats.requests == len(problems) == len(seen) and seen[0]["n"] == 2 and seen[0]["seed"] == 0


def test_openai_retries_429_5xx_malformed_and_timeouts(served, tiny_model: Path, problems: list[str]) -> None:
    url, hooks, seen = served
    script = [(429, {"error": "slow down"}, {"Retry-After": "0"}), (503, {"error": "overloaded"}, {}),
              (200, b"{not json", {}), (200, {"choices": [{"index": 0}]}, {}), "stall"]
    lock = threading.Lock()

    def faults(path: str, body: dict):
        with lock:
            step = script.pop(0) if script else None
        if step == "stall":
            time.sleep(1.0)  # the client gives up after 0.3 s and retries
            return None
        return step

    hooks.append(faults)
    b = OpenAIBackend(str(tiny_model), None, base_url=url, concurrency=1, backoff_s=0.01, timeout_s=0.3, max_retries=6)
    out = b.generate(problems[:1], SamplingParams(max_tokens=6))
    assert out[0][0].ok and out[0][0].completion_tokens > 0
    assert b.stats.retries == 5 and b.stats.requests == 6 and not script


def test_openai_budget_down_server_and_fatal_4xx(served, tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    url, hooks, seen = served
    hooks.append(lambda path, body: (503, {"error": "down"}, {}))
    cache = GenerationCache(tmp_path / "c.sqlite")
    b = OpenAIBackend(str(tiny_model), cache, base_url=url, backoff_s=0.001, max_requests=3, concurrency=2)
    out = b.generate(["a", "b"], SamplingParams(max_tokens=4))
    assert b.stats.requests == 3 == len(seen)
    assert all(cs[0].error and "request budget exhausted" in cs[0].error for cs in out)
    assert len(cache) == 0  # failures are not cached: a re-run retries them
    hooks.clear()
    # a prompt over the served model's context: HTTP 400, no retry
    long_prompt = json.loads((shared_data / "traces" / "skythought_corrupt07_32b_amc23.jsonl").open().readline())["code"][0]
    fresh = OpenAIBackend(str(tiny_model), None, base_url=url, backoff_s=0.001)
    err = fresh.generate([long_prompt], SamplingParams(max_tokens=4))[0][0].error
    assert err.startswith("HTTP 400") and "prompt too long" in err and fresh.stats.requests == 1
    # nothing listening: connection errors are retried, then reported
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = OpenAIBackend("m", None, base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_s=0.001)
    err = dead.generate(["x"], SamplingParams())[0][0].error
    assert err.startswith("gave up after 3 attempts: connection failed") and dead.stats.requests == 3


def test_openai_runs_requests_concurrently(served, tiny_model: Path) -> None:
    url, hooks, _ = served
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def slow(path: str, body: dict):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.2)
        with lock:
            state["now"] -= 1
        return (200, {"choices": [{"index": 0, "text": body["prompt"][::-1], "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 1, "completion_tokens": 3}}, {})

    hooks.append(slow)
    b = OpenAIBackend("m", None, base_url=url, concurrency=4)
    t0 = time.perf_counter()
    out = b.generate([f"p{i}" for i in range(8)], SamplingParams())
    assert [cs[0].text for cs in out] == [f"p{i}"[::-1] for i in range(8)]
    assert state["peak"] == 4 and time.perf_counter() - t0 < 1.2


def test_chat_template_is_applied(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    chat_dir = tmp_path / "chat"
    shutil.copytree(tiny_model, chat_dir)
    tok = AutoTokenizer.from_pretrained(chat_dir)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(chat_dir)
    question = "What is 2+3?"
    chat = TransformersBackend(str(chat_dir), None)  # chat: auto picks the template up
    plain = TransformersBackend(str(chat_dir), None, chat=False)
    assert chat.chat and not plain.chat
    c, p = chat.generate([question], SamplingParams(max_tokens=3))[0][0], plain.generate([question], SamplingParams(max_tokens=3))[0][0]
    templated = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    assert c.prompt_tokens == len(tok(templated, add_special_tokens=False)["input_ids"]) > p.prompt_tokens + 5


def _open_and_write(path: str, start: object, errors: object) -> None:
    from curate.models import Completion

    try:
        start.wait()  # type: ignore[attr-defined]
        cache = GenerationCache(path)
        cache.put_many("m", {f"{os.getpid()}": [Completion("x", 1, 1)]})
    except Exception as e:  # noqa: BLE001 - reported to the parent
        errors.put(repr(e))  # type: ignore[attr-defined]


def test_many_processes_open_a_new_cache_at_once(tmp_path: Path) -> None:
    """The ray engine's workers open one new cache file at the same moment: none of them fails with
    "database is locked" (switching a new file to WAL mode is not covered by SQLite's busy wait)."""
    ctx = multiprocessing.get_context("fork")
    for trial in range(20):
        path = str(tmp_path / f"c{trial}.sqlite")
        start, errors = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_and_write, args=(path, start, errors)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert errors.empty(), errors.get()
        assert len(GenerationCache(path)) == 6


def test_without_torch_this_file_skips_instead_of_erroring(tmp_path: Path) -> None:
    """Where torch is not installed (here: hidden by a sitecustomize), the tiny-model tests skip."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # import torch fails\n")
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-rs",
                          "-k", "not without_torch"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and not re.search(r"^(FAILED|ERROR)", run.stdout, re.M), run.stdout[-3000:]
    assert len(re.findall(r"^SKIPPED \[1\] .*the tiny model needs torch", run.stdout, re.M)) >= 9, run.stdout[-3000:]

