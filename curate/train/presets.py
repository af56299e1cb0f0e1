"""Named protocols: ``--preset table2`` is the paper's Table 2 setup end to end.

Sources (NovaSky-AI/SkyThought @ 9a750c7, branch ``corrupt``):

- training: ``skythought/train/LLaMA-Factory/examples/train_full/qwen2_full_sft_32B.yaml`` (and
  its ``_wrong`` twin): ``finetuning_type: full``, ``learning_rate: 1.0e-5``, ``num_train_epochs:
  3.0``, ``lr_scheduler_type: cosine``, ``warmup_ratio: 0.1``, ``cutoff_len: 16384``, ``bf16``,
  ``per_device_train_batch_size: 1`` x ``gradient_accumulation_steps: 12`` x 8 GPUs
  (``skythought/train/README.md``: "on 8 H100 GPUs") = 96 sequences; no ``packing`` key, and
  LLaMA-Factory packs supervised data only when it is set (``src/llamafactory/data/preprocess.py``);
  optimizer settings not in the file are transformers ``TrainingArguments`` defaults (AdamW,
  betas 0.9/0.999, eps 1e-8, weight decay 0, max grad norm 1).
- evaluation: ``skythought/Qwen2.5-Math/evaluation/sh/eval.sh``: ``DATA_NAME="aime24 amc23
  math500 olympiadbench"``, ``--temperature 0 --n_sampling 1 --top_p 1 --seed 0
  --max_tokens_per_call 32768``, prompt type ``Sky-T1`` (:data:`curate.train.template.SKY_T1_SYSTEM`).
- average: the unweighted mean of the four benchmarks' accuracies (each benchmark once). The
  paper's printed Table 2 was not available to this project; the reference numbers below are the
  harness's own result files for the paper's students in the same repository, not the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SOURCE = "NovaSky-AI/SkyThought@9a750c7 (branch corrupt)"
_OUT = "skythought/Qwen2.5-Math/evaluation/outputs/icml_models"
_METRICS = "{bench}_eval/{bench}/test_Sky-T1_-1_seed0_t0.0_s0_e-1_Sky-T1_metrics.json"


@dataclass(frozen=True)
class Preset:
    """Training and evaluation settings of a protocol, and the reference numbers it is compared with."""

    name: str
    train: dict[str, Any]
    eval: dict[str, Any]
    description: str
    # config -> benchmark -> accuracy in [0, 1]; and where each config's numbers come from
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    reference_sources: dict[str, str] = field(default_factory=dict)


TABLE2 = Preset(
    name="table2",
    train={"method": "full", "lr": 1e-5, "epochs": 3.0, "warmup_ratio": 0.1, "cutoff": 16384,
           "global_batch": 96, "micro_batch": 1, "packing": False, "adam_beta1": 0.9, "adam_beta2": 0.999,
           "adam_eps": 1e-8, "weight_decay": 0.0, "max_grad_norm": 1.0, "bf16": True},
    eval={"benchmarks": ("math500", "aime24", "amc23", "olympiadbench"), "temperature": 0.0, "top_p": 1.0,
          "n": 1, "seed": 0, "max_tokens": 32768},
    description="the paper's Table 2 protocol: full fine-tune, lr 1e-5, 3 epochs, cosine, warmup 0.1, "
                "cutoff 16384, 96 sequences a step; greedy, 32768 tokens, MATH500/AIME24/AMC23/OlympiadBench",
    reference={
        # Sky-T1-math-corrupt-0.7-32B: digits corrupted at ratio 0.7 (skythought/tools/corrupt_data.py)
        "digits_70": {"math500": 0.856, "amc23": 0.775, "olympiadbench": 0.548},
        # Sky-T1-math-correct-5K-32B, its last evaluated checkpoint (140 of ~144 steps)
        "clean": {"aime24": 0.300},
    },
    reference_sources={
        "digits_70": f"{SOURCE} {_OUT}/Sky-T1-math-corrupt-0.7-32B/{_METRICS} (Qwen2.5-32B-Instruct student)",
        "clean": f"{SOURCE} {_OUT}/Sky-T1-math-correct-5K-32B-ckpts/checkpoint-140/{_METRICS} "
                 "(Qwen2.5-32B-Instruct student)",
    },
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TABLE2,)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
