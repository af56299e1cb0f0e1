"""vLLM on the ray engine (GPU): the ``ray.data.llm`` generation pass against the local vllm backend.

    python -m curate.models.tiny /tmp/tiny        # or any local model folder (no hub on the device)
    python bench/bench_ray_vllm.py --model /tmp/tiny --rows 256 --n 4 --max-tokens 256

Grades real MATH problems by pass rate (grade_difficulty, backend vllm) on the local engine, then
on the ray engine (a local Ray over this machine's GPUs), each with an empty cache, at temperature
0 so both must give the same samples. Reports each engine's wall time and samples/s, and how many
kept rows and rejects differ (greedy decoding in different batches can still differ in the last
bits of bf16, so this is reported, not asserted). ``--base-url URL`` runs the same comparison
against an OpenAI-compatible server through Ray's HTTP processor: a CPU dry run of the script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_vllm import DATA  # noqa: E402


def run(engine: str, model: str, rows: list[dict], n: int, max_tokens: int, work: Path,
        base_url: str | None) -> tuple[float, pl.DataFrame, pl.DataFrame]:
    from curate import Pipeline, read
    from curate.models import clear_backends
    from curate.ops import GradeDifficulty

    settings: dict = {"backend": "vllm", "name_or_path": model, "cache": str(work / f"{engine}.sqlite"),
                      "gpu_memory_utilization": 0.8}
    if base_url:  # the same comparison through Ray's HTTP processor (CPU dry run of this script)
        settings = {"backend": "openai", "name_or_path": model, "base_url": base_url, "ray_data_llm": True,
                    "cache": str(work / f"{engine}.sqlite")}
    steps = [GradeDifficulty(method="pass_rate", model=settings, n=n, temperature=0.0, max_tokens=max_tokens,
                             verify_workers=4)]
    t0 = time.perf_counter()
    result = Pipeline(steps, batch_size=64).run(read(rows, source="bench"), work / engine, engine=engine,
                                                progress=False)
    seconds = time.perf_counter() - t0
    clear_backends()  # frees the local engine's GPU memory before the ray run
    return seconds, result.to_polars(), result.rejects()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--base-url", default=None,
                    help="an OpenAI-compatible server instead of vLLM (e.g. python -m curate.models.serve MODEL)")
    args = ap.parse_args()
    source = json.loads((DATA / "problems" / "deepscaler_train_math.json").read_text())[: args.rows]
    # the grader's samples are what is compared; the trace fields only need to pass the reader
    rows = [{"question": r["problem"], "solution": f"The answer is \\boxed{{{r['answer']}}}.", "answer": r["answer"]}
            for r in source]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        local_s, local, local_rej = run("local", args.model, rows, args.n, args.max_tokens, work, args.base_url)
        ray_s, distributed, ray_rej = run("ray", args.model, rows, args.n, args.max_tokens, work, args.base_url)
    samples = len(rows) * args.n
    key = ["id"]
    differ = local.join(distributed, on=key, how="anti").height + distributed.join(local, on=key, how="anti").height
    same_samples = local.select("id", "difficulty_samples").sort("id").equals(
        distributed.select("id", "difficulty_samples").sort("id"))
    print(json.dumps({"model": args.model, "rows": len(rows), "n": args.n, "max_tokens": args.max_tokens,
                      "local_s": round(local_s, 1), "ray_s": round(ray_s, 1),
                      "local_samples_per_s": round(samples / local_s, 1), "ray_samples_per_s": round(samples / ray_s, 1),
                      "kept_rows_differ": differ, "same_sample_verdicts": same_samples,
                      "rejects_local": local_rej.height, "rejects_ray": ray_rej.height}, indent=1))


if __name__ == "__main__":
    main()
