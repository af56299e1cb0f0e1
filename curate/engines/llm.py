"""Generation ahead of the apply, through Ray Data's LLM processors (``ray.data.llm``).

On the ray engine a step whose model is ``vllm`` (or an OpenAI-compatible server with
``ray_data_llm: true`` in its settings) gets its generations made by one Ray Data batch job per
stage instead of by its workers. Under the stage's ``_gen/``:

1. ``requests/`` and ``given/``: one unit per part asks the step for its ``generation_requests``;
   cache hits and prompts over the model's context go to ``given/part-K``, the rest to
   ``requests/part-K`` (for vLLM one row per sample, seed + j, tokenised as the vllm backend does).
2. ``out/round-A-B/``: rounds of parts, each read with ``ray.data.read_parquet``, run through
   ``vLLMEngineProcessorConfig`` or ``HttpRequestProcessorConfig``, and written with
   ``write_parquet`` partitioned by part. A round is written to a temporary folder and renamed
   when whole, so a killed run redoes only the round in flight.
3. The apply: each part's worker loads its completions and runs the step under
   ``Backend.given``, so the step reads them as its own: the kept rows, rejects, stats and cache
   are the local engine's, and the apply workers load no model (no GPU is reserved for them).

A request the processor could not serve comes back as an error completion with Ray's message
(vLLM: ``should_continue_on_error``; HTTP: the server's error body), which the step rejects with
the reason as it does locally. Ray's HTTP stage raises once its retries are spent: the stage fails
with that error and a re-run resumes from the last whole round.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import PipelineError
from curate.io.write import write_parquet_atomic
from curate.models import get_backend
from curate.models.base import Completion, SamplingParams, failed, prompt_ids
from curate.models.cache import dump_completions, load_completions
from curate.step import Step

ROUND_REQUESTS = 65536  # request rows per Ray Data job: a killed run loses at most one round's work
_NOT_FOR_VLLM = ("backend", "name_or_path", "cache", "chat", "ray_data_llm")  # the rest is vllm.LLM's
_REQUESTS = pa.schema([("key", pa.string()), ("j", pa.int32()), ("n", pa.int32()),
                       ("tokens", pa.list_(pa.int32())), ("body", pa.string())])
_COMPLETIONS = pa.schema([("key", pa.string()), ("j", pa.int32()), ("completions", pa.string())])


def uses_processor(settings: Any) -> bool:
    """Whether this model's generations go through a ``ray.data.llm`` processor on the ray engine."""
    if not isinstance(settings, dict):  # no model, or another kind of model (an embedder's name)
        return False
    return settings["backend"] == "vllm" or (settings["backend"] == "openai" and bool(settings.get("ray_data_llm")))


def check(step: Step, gpus: float) -> None:
    """Settings the pass cannot honour stop it before it starts: a request or token budget (Ray's
    HTTP stage has none; the batch job makes every generation at once), or a vLLM replica without
    its GPUs (on a cluster that adds none, Ray would wait forever)."""
    settings = step.model_settings()
    assert settings is not None
    if step.token_budget() is not None:
        raise PipelineError(f"step '{step.name}': budget_tokens is not honoured by the ray generation pass "
                            "(one batch job makes every generation); run it on the local engine or drop it")
    if settings["backend"] != "vllm":
        if settings.get("max_requests") is not None:
            raise PipelineError(f"step '{step.name}': max_requests is not honoured by Ray's HTTP processor "
                                "(ray_data_llm: true); drop one of the two")
        return
    need = _gpus_per_replica(settings)
    if gpus < need and not os.environ.get("CURATE_RAY_AUTOSCALING"):
        raise PipelineError(f"step '{step.name}': a vLLM replica of {settings['name_or_path']} needs {need} GPU(s) "
                            f"(tensor_parallel_size x pipeline_parallel_size) and the Ray cluster has {gpus:g} "
                            "(a cluster that adds GPU nodes on demand: set CURATE_RAY_AUTOSCALING=1)")


def _gpus_per_replica(settings: dict[str, Any]) -> int:
    return int(settings.get("tensor_parallel_size", 1)) * int(settings.get("pipeline_parallel_size", 1))


def part_file(gen: Path, what: str, k: int) -> Path:
    """``_gen/requests/part-K.parquet`` or ``_gen/given/part-K.parquet``."""
    return gen / what / f"part-{k:05d}.parquet"


# --- 1. requests, one unit per part --------------------------------------------------------------
def collect(step: Step, k: int, src: str, gen: Path) -> dict[str, int]:
    """Write part ``k``'s requests that need a model and the completions already known."""
    settings = step.model_settings()
    assert settings is not None
    batch = pl.read_parquet(src)
    backend = get_backend(settings)
    todo: dict[str, tuple[str, SamplingParams]] = {}
    for prompt, params in step.generation_requests(batch):
        todo.setdefault(backend.key(prompt, params), (prompt, params))
    known = backend.cache.get_many(list(todo)) if backend.cache is not None else {}
    requests: list[dict[str, Any]] = []
    vllm = settings["backend"] == "vllm"
    if vllm:
        from curate.models.vllm_backend import sample_params, too_long

        tokenizer, chat, context = _vllm_prompting(settings)
    for key, (prompt, params) in todo.items():
        if key in known:
            continue
        if not vllm:
            requests.append({"key": key, "j": 0, "n": params.n, "tokens": None,
                             "body": json.dumps(backend.body(prompt, params))})
            continue
        ids = prompt_ids(tokenizer, prompt, chat)
        why = too_long(len(ids), params, context)
        if why:
            known[key] = failed(why, params.n, len(ids))
            continue
        requests.extend({"key": key, "j": j, "n": 1, "tokens": ids, "body": json.dumps(sample_params(params, j))}
                        for j in range(params.n))
    write_parquet_atomic(pa.Table.from_pylist(requests, _REQUESTS), part_file(gen, "requests", k))
    write_parquet_atomic(pa.Table.from_pylist([{"key": key, "j": 0, "completions": dump_completions(c)} for key, c in known.items()],
                                              _COMPLETIONS), part_file(gen, "given", k))
    return {"rows": batch.height, "requests": len(requests)}


@lru_cache(maxsize=4)
def _vllm_prompting_cached(key: str) -> tuple[Any, bool, int]:
    settings = json.loads(key)
    from transformers import AutoConfig, AutoTokenizer

    remote = bool(settings.get("trust_remote_code", False))  # vllm.LLM's own tokenizer settings
    tokenizer = AutoTokenizer.from_pretrained(settings.get("tokenizer") or settings["name_or_path"],
                                              trust_remote_code=remote)
    chat = settings.get("chat", "auto")
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat == "auto" else bool(chat)
    context = settings.get("max_model_len")
    if not context:
        config = AutoConfig.from_pretrained(settings["name_or_path"], trust_remote_code=remote)
        context = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    return tokenizer, chat, int(context)


def _vllm_prompting(settings: dict[str, Any]) -> tuple[Any, bool, int]:
    """The model's tokenizer, whether prompts go under its chat template, and its context length:
    what the vllm backend renders a prompt with, so both paths send the same tokens."""
    return _vllm_prompting_cached(json.dumps(settings, sort_keys=True, default=str))


# --- 2. the processor, in rounds -----------------------------------------------------------------
def build_processor(settings: dict[str, Any], gpus: float) -> Any:
    """The ``ray.data.llm`` processor for these model settings, with curate's pre/postprocess:
    rows (key, j, n, tokens, body) in, rows (key, j, n, completions) out."""
    try:
        from ray.data import llm
    except ImportError as e:
        raise PipelineError(f"the generation pass needs Ray's LLM processors ({e}): pip install 'curate-cot[ray]', "
                            "and 'curate-cot[ray-vllm]' on GPU nodes for vLLM") from None

    if settings["backend"] == "vllm":
        engine_kwargs = {k: v for k, v in settings.items() if k not in _NOT_FOR_VLLM}
        config = llm.vLLMEngineProcessorConfig(
            model_source=settings["name_or_path"], engine_kwargs=engine_kwargs,
            concurrency=max(1, int(gpus // _gpus_per_replica(settings))), batch_size=64, should_continue_on_error=True,
            chat_template_stage=False, tokenize_stage=False, detokenize_stage=False)  # curate tokenises
        return llm.build_processor(config, preprocess=_vllm_in, postprocess=_vllm_out)
    client = get_backend(settings)  # the openai backend's own request shape, URL and retries
    config = llm.HttpRequestProcessorConfig(
        url=client.url, headers={"Authorization": client.headers["Authorization"]},
        concurrency=client.concurrency, batch_size=16, max_retries=client.max_retries,
        base_retry_wait_time_in_s=client.backoff_s)
    return llm.build_processor(config, preprocess=_http_in, postprocess=_http_out(client.chat))


def _vllm_in(row: dict[str, Any]) -> dict[str, Any]:
    tokens = row["tokens"]  # a numpy array from Ray Data: vLLM gets plain ints
    return {"tokenized_prompt": tokens.tolist() if hasattr(tokens, "tolist") else [int(t) for t in tokens],
            "sampling_params": json.loads(row["body"])}


def _vllm_out(row: dict[str, Any]) -> dict[str, Any]:
    from curate.models.vllm_backend import finish

    sampling = json.loads(row["body"])
    made = int(row["num_generated_tokens"])
    params = SamplingParams(max_tokens=int(sampling["max_tokens"]))
    done = Completion(row["generated_text"], int(row["num_input_tokens"]), made, finish(made, params))
    return {"part": row["part"], "key": row["key"], "j": row["j"], "n": row["n"], "completions": dump_completions([done])}


def _http_in(row: dict[str, Any]) -> dict[str, Any]:
    return {"payload": json.loads(row["body"])}


def _http_out(chat: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def parse(row: dict[str, Any]) -> dict[str, Any]:
        from curate.models.openai_http import parse_response

        data, n = row["http_response"], int(row["n"])
        # the server's error body (a 4xx); Arrow gives every row every key, so absent reads None
        if not isinstance(data, dict) or data.get("choices") is None:
            detail = (data.get("message") or data.get("error")) if isinstance(data, dict) else data
            if isinstance(detail, dict):  # OpenAI's shape: {"error": {"message": ...}}
                detail = detail.get("message") or detail
            done = failed(f"server error: {str(detail)[:300]}", n)
        else:
            try:
                done = parse_response(data, n, chat)
            except Exception as e:  # noqa: BLE001 - a malformed body is this request's failure
                done = failed(str(e), n)
        return {"part": row["part"], "key": row["key"], "j": row["j"], "n": row["n"], "completions": dump_completions(done)}

    return parse


def _uniform(row: dict[str, Any]) -> dict[str, Any]:
    """One schema for served and failed rows (Ray passes a failed row through untouched)."""
    error = row.get("__inference_error__") or ""
    completions = dump_completions(failed(f"ray.data.llm: {error[:300]}", int(row["n"]))) if error else row["completions"]
    return {"part": row["part"], "key": row["key"], "j": row["j"], "completions": completions}


def run_rounds(engine: Any, step: Step, parts: list[int], gen: Path, progress: Callable[[int], Any] | None) -> None:
    """Run the requests of ``parts`` through the processor, a round of parts at a time."""
    out = gen / "out"
    out.mkdir(parents=True, exist_ok=True)
    done: set[int] = set()
    for finished in out.glob("round-*"):
        if finished.name.endswith(".tmp"):
            shutil.rmtree(finished)  # a round killed in flight: redone whole
        else:
            done.update(json.loads((finished / "_parts.json").read_text()))
    pending = [(k, pq.ParquetFile(part_file(gen, "requests", k)).metadata.num_rows) for k in parts if k not in done]
    rounds: list[list[tuple[int, int]]] = [[]]
    filled = 0
    for k, rows in pending:
        if rows:
            if filled >= ROUND_REQUESTS:
                rounds.append([])
                filled = 0
            rounds[-1].append((k, rows))
            filled += rows
    processor = None
    for chunk in filter(None, rounds):
        if processor is None:
            processor = build_processor(step.model_settings() or {}, engine.gpus())
        name = f"round-{chunk[0][0]:05d}-{chunk[-1][0]:05d}"
        tmp = out / f"{name}.tmp"
        ds = engine.ray.data.read_parquet([str(part_file(gen, "requests", k)) for k, _ in chunk],
                                          include_paths=True)
        ds = ds.map(_with_part)
        try:
            processor(ds).map(_uniform).write_parquet(str(tmp), partition_cols=["part"])
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PipelineError(f"step '{step.name}': the ray.data.llm generation pass failed; completed rounds "
                                f"are kept and a re-run resumes: {_root(e)}") from None
        (tmp / "_parts.json").write_text(json.dumps([k for k, _ in chunk]))
        os.replace(tmp, out / name)
        if progress is not None:
            progress(sum(r for _, r in chunk))


def _with_part(row: dict[str, Any]) -> dict[str, Any]:
    path = row.pop("path")
    row["part"] = Path(path).stem.split("-")[-1]  # part-KKKKK.parquet -> KKKKK
    return row


def _root(error: BaseException) -> str:
    """The worker's own error line from Ray's wrapped traceback, without the request it carried."""
    text = str(error)
    lines = [m.group(0) for m in _ERROR_LINE.finditer(text) if not m.group(1).startswith("ray.")]
    line = lines[0] if lines else f"{type(error).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"
    line = line.split(" for input row ")[0]  # Ray's HTTP stage appends the whole request
    previous = re.search(r"Previous Exception: ([^\n]*?)(\. Full Traceback|$)", text, re.M)
    return line[:300] + (f" ({previous.group(1)[:200]})" if previous else "")


_ERROR_LINE = re.compile(r"^([\w.]+(?:Error|Exception)): .*$", re.M)


# --- 3. the apply ----------------------------------------------------------------------------------
def completions_of(gen: Path, k: int) -> dict[str, list[Completion]]:
    """Part ``k``'s completions: the known ones and the processor's, samples in order."""
    files = [part_file(gen, "given", k), *sorted(gen.glob(f"out/round-*/part={k:05d}/*.parquet"))]
    samples: dict[str, list[tuple[int, str]]] = {}
    for f in files:
        if f.parent.parent.name.endswith(".tmp"):
            continue
        table = pq.read_table(f, columns=["key", "j", "completions"])
        for key, j, comps in zip(*(table[c].to_pylist() for c in ("key", "j", "completions")), strict=True):
            samples.setdefault(key, []).append((j, comps))
    return {key: [c for _, comps in sorted(got) for c in load_completions(comps)] for key, got in samples.items()}


@contextmanager
def given(step: Step, gen: Path, k: int) -> Iterator[None]:
    """Run part ``k``'s apply with its completions handed to the step's backend."""
    settings = step.model_settings()
    assert settings is not None
    with get_backend(settings).given(completions_of(gen, k)):
        yield
