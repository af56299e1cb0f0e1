"""Training throughput on one GPU: `curate train` against TRL's SFTTrainer at the same settings.

Randomly initialised weights of real architectures (Qwen2.5-0.5B and -1.5B shapes) are fine for
throughput; the tokenizer is the tiny BPE one trained on the bundled traces (its ids are valid
in any vocabulary), the data the quickstart sample of real traces (repeated as needed)::

    python bench/bench_train.py --sizes 0.5b,1.5b --seq 8192,16384 --methods full,lora --steps 6

For each (size, seq, method) it runs curate's loop, then TRL's SFTTrainer (packing, padding-free,
completion-only loss, bf16, gradient checkpointing, same lr / batch / LoRA settings) when
``trl`` imports, each in a fresh subprocess so peak memory is per run. Reported per run:
training tokens/s (after the first ``--warmup`` steps), MFU against ``--peak-tflops`` (H100/H200
dense bf16: 989), and peak GPU memory. MFU counts 6N FLOPs a token for full fine-tuning and
4N for LoRA (no weight gradients of the frozen base) plus causal attention, 6 * layers *
hidden * mean trace length, per token. Results print as a table and go to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPES = {  # Qwen2.5 configs (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),  # CPU smoke test
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}


def build_model(size: str, folder: Path, seq: int) -> Path:
    """A random Qwen2 model of the given shape with the tiny chat tokenizer, saved in bf16."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from curate.models.tiny import build

    tok_dir = build(folder / "tok", chat=True)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.model_max_length = 1 << 30
    cfg = Qwen2Config(**SHAPES[size], max_position_embeddings=max(seq, 32768), rope_theta=1e6,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    out = folder / size
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def dataset(folder: Path, repeat: int) -> Path:
    """The quickstart sample, its traces repeated ``repeat`` times (fresh ids), as a dataset folder."""
    import polars as pl

    import curate

    base = folder / "quickstart"
    if not base.exists():
        curate.run_recipe(REPO / "pipelines" / "quickstart.yaml", out=base)
    df = pl.read_parquet(sorted((base / "data").glob("*.parquet")))
    big = pl.concat([df.with_columns(pl.col("id") + f"#{k}") for k in range(repeat)])
    out = folder / f"data-x{repeat}"
    (out / "data").mkdir(parents=True, exist_ok=True)
    big.write_parquet(out / "data" / "train-00000.parquet")
    return out


def flops_per_token(model_dir: Path, method: str, mean_len: float) -> float:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    h, inter, layers, kv = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_key_value_heads
    head = h // c.num_attention_heads
    per_layer = h * h * 2 + h * kv * head * 2 + 3 * h * inter  # q, o, k, v, gate/up/down
    n = layers * per_layer + h * c.vocab_size  # lm head (tied embeddings: lookup is free)
    dense = (6 if method == "full" else 4) * n
    return dense + 6 * layers * h * mean_len


def _reset_peak(torch) -> None:  # noqa: ANN001
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(torch) -> float:  # noqa: ANN001
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def mean_trace_len(model: Path, data: Path, seq: int) -> float:
    """Mean tokens of one trace after the cutoff: what attention FLOPs scale with in packed training."""
    from transformers import AutoTokenizer

    from curate.train.data import build_packs

    _, stats = build_packs(data, AutoTokenizer.from_pretrained(model), seq)
    return stats["tokens"] / max(stats["packed"], 1)


def run_curate(model: Path, data: Path, seq: int, method: str, steps: int, warmup: int, out: Path) -> dict:
    import torch

    from curate.train.sft import TrainConfig, train

    # packed, <think> markers and no system prompt: the same data and batch unit as TRL's run below
    cfg = TrainConfig(method=method, cutoff=seq, global_batch=8, epochs=100, warmup_ratio=0.0,
                      max_steps=steps, save_every=10**9, keep_checkpoints=1, packing=True, style="think",
                      system_prompt="")
    _reset_peak(torch)
    res = train(data, str(model), out, cfg, progress=False, resume=False)
    # TRL's tokens seen are what its data collator feeds (padding-free: real tokens); ours the same.
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rec = json.loads((out / "train_config.json").read_text())
    return {"log": log, "peak_gib": _peak_gib(torch), "steps": res.steps,
            "data": rec["data"], "grad_accum": rec["grad_accum"], "warmup": warmup}


def run_trl(model: Path, data: Path, seq: int, method: str, steps: int, warmup: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from curate.train.data import load_chats

    chats = load_chats(data)
    rows = [{"prompt": c["messages"][:-1], "completion": c["messages"][-1:]} for c in chats]
    tok = AutoTokenizer.from_pretrained(model)
    lr = 1e-4 if method == "lora" else 1e-5
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=1,
                     gradient_accumulation_steps=8, learning_rate=lr, lr_scheduler_type="cosine",
                     bf16=torch.cuda.is_available(), gradient_checkpointing=True,
                     gradient_checkpointing_kwargs={"use_reentrant": False}, max_length=seq,
                     packing=True, padding_free=True, logging_steps=1, save_strategy="no", report_to=[],
                     include_num_input_tokens_seen=True, dataloader_num_workers=0)
    dtype = torch.bfloat16 if method == "lora" else torch.float32
    try:
        import flash_attn  # noqa: F401
        attn = "flash_attention_2"
    except ImportError:
        attn = "sdpa"
    net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation=attn)
    peft_config = None
    if method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    trainer = SFTTrainer(model=net, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config, callbacks=[Clock()])
    _reset_peak(torch)
    trainer.train()
    log = [{"step": i + 1, "elapsed_s": t - marks[0][0], "tokens": n} for i, (t, n) in enumerate(marks)]
    return {"log": log, "peak_gib": _peak_gib(torch), "steps": len(marks),
            "warmup": warmup}


def steady_rate(result: dict) -> float:
    """Tokens/s over the steps after warm-up (log rows: cumulative ``tokens`` and ``elapsed_s``)."""
    log, w = result["log"], result["warmup"]
    if len(log) <= w + 1:
        return float("nan")
    a, b = log[w], log[-1]
    return (b["tokens"] - a["tokens"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)


def child(args: argparse.Namespace) -> None:
    """One run in this process (the parent starts a fresh process per run)."""
    fn = run_curate if args.kind == "curate" else run_trl
    res = fn(Path(args.model), Path(args.data), args.seq_one, args.method_one, args.steps, args.warmup,
             Path(args.out))
    Path(args.result).write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5b,1.5b")
    ap.add_argument("--seq", default="8192,16384")
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps (8 packs each) per run")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the rate")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--work", default=None)
    # internal: one run
    ap.add_argument("--kind"), ap.add_argument("--model"), ap.add_argument("--data"), ap.add_argument("--out")
    ap.add_argument("--seq-one", type=int), ap.add_argument("--method-one"), ap.add_argument("--result")
    args = ap.parse_args()
    if args.kind:
        return child(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_"))
    data = dataset(work, repeat=20)
    try:
        import trl  # noqa: F401
        kinds = ["curate"] if args.no_trl else ["curate", "trl"]
    except ImportError:
        print("trl not installed: curate only", file=sys.stderr)
        kinds = ["curate"]
    rows = []
    for size in args.sizes.split(","):
        for seq in (int(s) for s in args.seq.split(",")):
            model = build_model(size, work / f"models-{seq}", seq) if not (work / f"models-{seq}" / size).exists() \
                else work / f"models-{seq}" / size
            mean_len = mean_trace_len(model, data, seq)
            for method in args.methods.split(","):
                for kind in kinds:
                    result = work / f"{kind}-{size}-{seq}-{method}.json"
                    cmd = [sys.executable, __file__, "--kind", kind, "--model", str(model), "--data", str(data),
                           "--out", str(work / f"run-{kind}-{size}-{seq}-{method}"), "--seq-one", str(seq),
                           "--method-one", method, "--steps", str(args.steps), "--warmup", str(args.warmup),
                           "--result", str(result)]
                    proc = subprocess.run(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                    if proc.returncode != 0 or not result.exists():
                        rows.append({"size": size, "seq": seq, "method": method, "kind": kind, "error": proc.returncode})
                        continue
                    res = json.loads(result.read_text())
                    rate = steady_rate(res)
                    row = {"size": size, "seq": seq, "method": method, "kind": kind, "tokens_per_s": rate,
                           "peak_gib": res["peak_gib"], "steps": res["steps"],
                           "mfu": rate * flops_per_token(model, method, mean_len) / (args.peak_tflops * 1e12)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n{'size':6} {'seq':>6} {'method':6} {'kind':7} {'tok/s':>10} {'MFU':>6} {'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['size']:6} {r['seq']:>6} {r['method']:6} {r['kind']:7} failed (exit {r['error']})")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['size']:6} {r['seq']:>6} {r['method']:6} {r['kind']:7} {r['tokens_per_s']:>10,.0f} {mfu:>6} "
              f"{r['peak_gib']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
