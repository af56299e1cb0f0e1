"""Generation layer speed: vLLM backend overhead (GPU) and the completion cache's hit path (CPU).

GPU (needs vLLM and a model on local disk; the device machines reach no hub)::

    python -m curate.models.tiny /tmp/tiny          # or any local model folder
    python bench/bench_vllm.py vllm --model /tmp/tiny --prompts 512 --max-tokens 256 --n 4

runs the same prompts through ``vllm.LLM.generate`` directly and through ``VLLMBackend``
(cache off, same engine), alternating, and reports output tokens/s of each and the backend's
overhead against the direct call with ``n`` samples per request (target: under 5%). The backend
sends each sample as its own request (seed + j); the same requests made directly are timed too.

CPU::

    python bench/bench_vllm.py cache --rows 100000

fills a cache with completions of real problems (MATH train + AIME, repeated to ``rows``) and
times ``Backend.generate`` when every prompt hits (target: at least 50k rows/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from curate.models import Backend, Completion, GenerationCache, SamplingParams

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOLVE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."


def real_problems() -> list[str]:
    out: list[str] = []
    for name in ("problems/deepscaler_train_math.json", "problems/deepscaler_train_aime.json"):
        path = DATA / name
        if path.exists():
            out += [r["problem"] for r in json.loads(path.read_text())]
    if not out:
        raise SystemExit(f"no problems under {DATA}")
    return out


class _NoModel(Backend):
    kind = "bench"

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        raise AssertionError(f"cache miss on {len(prompts)} prompts")


def bench_cache(rows: int, batch: int) -> dict:
    problems = real_problems()
    prompts = [SOLVE.replace("{problem}", problems[i % len(problems)]) + ("" if i < len(problems) else f" #{i}")
               for i in range(rows)]
    params = SamplingParams(max_tokens=1024, temperature=0.7, n=4)
    with tempfile.TemporaryDirectory() as tmp:
        cache = GenerationCache(Path(tmp) / "gen.sqlite")
        backend = _NoModel("bench-model", cache)
        from curate.models.cache import cache_key

        sample = [Completion("Let me think. " * 40 + "\\boxed{42}", 80, 600, "stop")] * params.n
        t0 = time.perf_counter()
        for i in range(0, rows, 10000):
            cache.put_many(backend.model_id, {cache_key(backend.model_id, p, params.as_dict()): sample
                                              for p in prompts[i:i + 10000]})
        fill_s = time.perf_counter() - t0
        backend = _NoModel("bench-model", GenerationCache(Path(tmp) / "gen.sqlite"))  # cold connection
        t0 = time.perf_counter()
        for i in range(0, rows, batch):
            backend.generate(prompts[i:i + batch], params)
        hit_s = time.perf_counter() - t0
    return {"rows": rows, "batch": batch, "fill_rows_per_s": round(rows / fill_s), "hit_rows_per_s": round(rows / hit_s),
            "cache_hits": backend.stats.cache_hits}


def bench_vllm(model: str, n_prompts: int, max_tokens: int, n: int, repeats: int, chat: bool, llm_kwargs: dict) -> dict:
    import vllm

    from curate.models.vllm_backend import VLLMBackend

    problems = real_problems()[:n_prompts]
    prompts = [SOLVE.replace("{problem}", p) for p in problems]
    llm = vllm.LLM(model=model, seed=0, **llm_kwargs)
    backend = VLLMBackend.from_llm(llm, model, None, chat=chat)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, n=n, seed=0)
    sp = vllm.SamplingParams(n=n, temperature=0.7, top_p=1.0, max_tokens=max_tokens, seed=0)
    if chat:
        direct_inputs = [backend.tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                               add_generation_prompt=True, tokenize=False) for p in prompts]
    else:
        direct_inputs = prompts

    def direct() -> int:
        outs = llm.generate(direct_inputs, sp, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs)

    # the backend sends sample j of a prompt as its own request with seed + j (the shape Ray Data's
    # vLLM processor takes): the same requests made directly, to tell that cost from the backend's own
    per_sample = [vllm.SamplingParams(n=1, temperature=0.7, top_p=1.0, max_tokens=max_tokens, seed=j)
                  for _ in direct_inputs for j in range(n)]
    per_sample_inputs = [p for p in direct_inputs for _ in range(n)]

    def direct_per_sample() -> int:
        outs = llm.generate(per_sample_inputs, per_sample, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs)

    def ours() -> int:
        outs = backend.generate(prompts, params)
        return sum(c.completion_tokens for cs in outs for c in cs)

    direct()  # warm-up: CUDA graphs, allocator
    rates: dict[str, list[float]] = {"direct": [], "direct_per_sample": [], "backend": []}
    for _ in range(repeats):
        for name, fn in (("direct", direct), ("direct_per_sample", direct_per_sample), ("backend", ours)):
            t0 = time.perf_counter()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - t0))
    d, b = statistics.median(rates["direct"]), statistics.median(rates["backend"])
    ds = statistics.median(rates["direct_per_sample"])
    return {"model": model, "prompts": len(prompts), "n": n, "max_tokens": max_tokens, "repeats": repeats,
            "direct_tok_per_s": round(d), "direct_per_sample_tok_per_s": round(ds), "backend_tok_per_s": round(b),
            "overhead_pct": round(100 * (d - b) / d, 2),
            "vllm": vllm.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cache", help="CPU: cache hit path rows/s")
    c.add_argument("--rows", type=int, default=100_000)
    c.add_argument("--batch", type=int, default=1024)
    v = sub.add_parser("vllm", help="GPU: VLLMBackend vs vllm.LLM.generate")
    v.add_argument("--model", required=True, help="local model folder (or a name the machine has cached)")
    v.add_argument("--prompts", type=int, default=512)
    v.add_argument("--max-tokens", type=int, default=256)
    v.add_argument("--n", type=int, default=4)
    v.add_argument("--repeats", type=int, default=3)
    v.add_argument("--chat", action="store_true", help="apply the chat template (both paths)")
    v.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    v.add_argument("--max-model-len", type=int, default=4096)
    args = ap.parse_args()
    if args.what == "cache":
        print(json.dumps(bench_cache(args.rows, args.batch)))
    else:
        print(json.dumps(bench_vllm(args.model, args.prompts, args.max_tokens, args.n, args.repeats, args.chat,
                                    {"gpu_memory_utilization": args.gpu_memory_utilization,
                                     "max_model_len": args.max_model_len})))


if __name__ == "__main__":
    main()
