"""The paper's Table 2 on a GPU machine: build the ablation family, run ``--preset table2``, write the table.

    python -m bench.validate_table2 --model /models/Qwen2.5-7B-Instruct --input /data/sky_t1_5k.jsonl \\
        --out runs/table2 [--configs clean,wrong_answer,digits_70,shuffle_100,delete_100] [--backend vllm]
    python -m bench.validate_table2 --dry-run --out /tmp/table2     # CPU, tiny model, minutes
    python -m bench.validate_table2 --estimate                       # expected H100 hours, no run

Steps: (1) ``pipelines/structure_vs_content.yaml`` restricted to the chosen configs (its input
replaced by ``--input``, e.g. the 5k QwQ traces the paper used) is built into ``OUT/family``;
(2) :func:`curate.train.validate.validate` with the ``table2`` preset trains one student per config
and scores it (greedy, 32768 tokens, MATH500/AIME24/AMC23/OlympiadBench); (3) ``OUT/table2.md``
gets the run's pass@1 beside the reference numbers the preset can source. Rerunning resumes.

``--dry-run`` keeps every step but shrinks the sizes (8 traces, a tiny random Qwen2-style model
built from a config, 1 optimizer step, 1 problem a benchmark, 8 generated tokens) so the script
is checked end to end on a CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "pipelines" / "structure_vs_content.yaml"
CONFIGS = ("clean", "wrong_answer", "digits_70", "shuffle_100", "delete_100")

# --- expected run time on one H100 (an estimate from FLOPs and memory traffic, not a measurement) ----
H100_BF16_FLOPS = 989e12  # dense bf16 peak, SXM
H100_BYTES_S = 3.35e12  # HBM3 bandwidth
H100_MEMORY = 80e9
TRAIN_MFU = 0.35  # assumed model-FLOPs utilisation of a long-sequence full fine-tune
# Qwen2.5 students: parameters, layers, KV heads, head dim (their config.json files)
STUDENTS = {"0.5B": (0.49e9, 24, 2, 64), "1.5B": (1.54e9, 28, 2, 128), "7B": (7.62e9, 28, 4, 128)}
PAPER_TRACES = 4618  # the 5k math traces after the paper's filtering (issue 15's figure)
BENCH_PROBLEMS = 500 + 30 + 40 + 675  # MATH500, AIME24, AMC23, OlympiadBench


def estimate(trace_tokens: float = 5000.0, output_tokens: float = 2700.0) -> list[dict[str, float]]:
    """Hours per config on one H100: training (8 N D FLOPs: forward, backward and the activation
    recompute, at the assumed MFU) and greedy evaluation (each decode step reads the weights and
    the live KV cache once, at half the HBM bandwidth; plus the longest, 32768-token generation
    running nearly alone at the end). ``trace_tokens``: mean training trace (assumed);
    ``output_tokens``: mean generation (~3.5 characters a token of the paper's students' outputs in
    ../shared/data/traces: MATH500 ~1.8k, AIME24 ~15k tokens)."""
    rows = []
    for name, (n, layers, kv_heads, head_dim) in STUDENTS.items():
        tokens = PAPER_TRACES * 3 * trace_tokens
        train_s = 8 * n * tokens / (H100_BF16_FLOPS * TRAIN_MFU)
        kv_per_token = 2 * layers * kv_heads * head_dim * 2
        free = max(H100_MEMORY * 0.9 - 2 * n, 1e9)
        mean_context = 300 + output_tokens / 2
        batch = max(1, min(BENCH_PROBLEMS, int(free / (kv_per_token * mean_context))))
        bandwidth = 0.5 * H100_BYTES_S
        step_s = (2 * n + batch * mean_context * kv_per_token) / bandwidth
        eval_s = BENCH_PROBLEMS * output_tokens / batch * step_s + 32768 * 2 * n / bandwidth
        fits = 16 * n < H100_MEMORY * 0.9
        rows.append({"student": name, "train_h": train_s / 3600, "eval_h": eval_s / 3600,
                     "total_h": (train_s + eval_s) / 3600, "full_ft_fits_one_gpu": fits})
    return rows


def estimate_table(**kw: float) -> str:
    lines = ["| student | train (h) | eval (h) | total per config (h) | full FT state fits one 80 GB GPU |",
             "|---|---|---|---|---|"]
    for r in estimate(**kw):
        lines.append(f"| {r['student']} | {r['train_h']:.2f} | {r['eval_h']:.2f} | {r['total_h']:.2f} | "
                     f"{'yes' if r['full_ft_fits_one_gpu'] else 'no: FSDP over >= 2 GPUs or CPU offload'} |")
    return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------------------

def build_family(out: Path, configs: list[str], input_path: str | None, sample: int | None) -> Path:
    """``structure_vs_content.yaml`` with only ``configs`` (and ``input_path``), built into ``out``."""
    import curate
    from curate.recipe import parse_recipe

    doc = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    unknown = [c for c in configs if c not in doc["variants"]]
    if unknown:
        raise SystemExit(f"{RECIPE}: no variant {', '.join(unknown)}")
    doc["variants"] = {c: doc["variants"][c] for c in configs}
    path = input_path or doc["input"]["path"]
    doc["input"]["path"] = str(Path(path) if Path(path).is_absolute() else (RECIPE.parent / path).resolve())
    if sample:
        doc["steps"] = [*doc["steps"], {"sample": {"n": sample, "seed": 0}}]
    recipe = parse_recipe(doc, str(RECIPE))
    recipe.path = RECIPE
    recipe.pipeline.run(recipe.source(), out, progress=False)
    del curate
    return out


def table(validation: dict) -> str:
    """Markdown: per config and benchmark, the run's pass@1 and the reference (``-`` where none is sourced)."""
    benches = validation["benchmarks"]
    head = ["config", "mean", "mean (paper)"] + [x for b in benches for x in (b, f"{b} (paper)")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    for r in validation["results"]:
        cells = [r["config"], pct(r.get("mean_pass@1")), pct(r.get("mean_paper"))]
        cells += [x for b in benches for x in (pct(r.get(f"{b}_pass@1")), pct(r.get(f"{b}_paper")))]
        lines.append("| " + " | ".join(cells) + " |")
    sources = validation.get("reference_sources") or {}
    notes = [f"- paper `{c}`: {s}" for c, s in sources.items()]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Student model folder (e.g. Qwen2.5-7B-Instruct); --dry-run builds a tiny one.")
    ap.add_argument("--input", help="Teacher traces for the recipe [default: the recipe's own sample].")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", type=Path, default=Path("table2"))
    ap.add_argument("--backend", default=None, help="vllm (default on GPU) or transformers.")
    ap.add_argument("--dry-run", action="store_true", help="Tiny sizes, CPU: checks the script end to end.")
    ap.add_argument("--estimate", action="store_true", help="Print the expected H100 time per config and exit.")
    args = ap.parse_args(argv)
    if args.estimate:
        print(estimate_table())
        return args.out

    from curate.train.eval import EvalConfig
    from curate.train.presets import get_preset
    from curate.train.sft import TrainConfig
    from curate.train.validate import validate

    preset = get_preset("table2")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    family = args.out / "family"
    train_opts, eval_opts = dict(preset.train), dict(preset.eval)
    model = args.model
    if args.dry_run:
        from curate.models.tiny import build

        model = model or str(build(Path(tempfile.mkdtemp(prefix="tiny-", dir=args.out)), chat=True))
        # the Sky-T1 system prompt alone is ~560 tokens of the tiny tokenizer
        train_opts.update(cutoff=1024, global_batch=4, max_steps=1, bf16=False, gradient_checkpointing=False)
        eval_opts.update(limit=1, max_tokens=8)
    if not model:
        raise SystemExit("--model is required (or --dry-run)")
    if not (family / "manifest.json").exists():
        build_family(family, configs, args.input, 8 if args.dry_run else None)
    import torch

    backend = args.backend or ("vllm" if torch.cuda.is_available() and not args.dry_run else "transformers")
    result = validate(family, model, args.out / "runs", train_cfg=TrainConfig(**train_opts),
                      eval_cfg=EvalConfig(**eval_opts, backend=backend), configs=configs, preset="table2")
    md = table(json.loads(result.path.read_text()))
    (args.out / "table2.md").write_text(md + "\n")
    print(md)
    return args.out / "table2.md"


if __name__ == "__main__":
    main()
