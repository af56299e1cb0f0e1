"""A thin SFT loop: packed traces, assistant-only loss, LoRA (peft) or full fine-tuning, resumable.

One screen per concept: :class:`TrainConfig` (the seed's defaults), :func:`load_model` (dtype,
attention kernel, LoRA, gradient checkpointing), :func:`train` (cosine schedule with warmup,
gradient accumulation to a global batch, checkpoints, progress bar with loss and tokens/s).

Precision: on GPU with ``bf16`` the forward/backward run under ``torch.autocast(bfloat16)``; full
fine-tuning keeps fp32 master weights (AdamW on bf16 weights loses small updates at lr 1e-5), LoRA
loads the frozen base in bf16 and keeps the adapter in fp32. On CPU everything is fp32.

Batch unit: the global batch counts *sequences*, one trace each (no packing), as the paper's
LLaMA-Factory runs did (``per_device_train_batch_size 1`` x ``gradient_accumulation_steps 12`` x 8
GPUs = 96; NovaSky-AI/SkyThought@corrupt ``skythought/train/LLaMA-Factory/examples/train_full/
qwen2_full_sft_32B.yaml``). ``packing=True`` lays traces end to end in sequences of ``pack_len``
tokens and then counts packs: fewer optimizer steps for the same data; the run's plan (sequences,
steps) is printed and recorded either way. accumulation = global_batch / (micro_batch * world).

Optimiser: AdamW with betas (0.9, 0.999), eps 1e-8 (the transformers ``TrainingArguments`` default
the paper's stack used); ``adam_beta2`` etc. are parameters, recorded in ``train_config.json``.

Multi-GPU on one node: launch with ``torchrun --nproc-per-node N -m curate.cli train ...``; each
rank takes every N-th micro-batch. ``sharding="ddp"`` replicates the model and averages gradients;
``"fsdp"`` shards parameters, gradients and optimizer state over the ranks with PyTorch FSDP2
(``fully_shard`` per decoder layer, activation checkpointing on), for students whose full
fine-tune does not fit one GPU (the paper used DeepSpeed ZeRO-3, ``ds_z3_offload_config.json``).
``"auto"`` picks FSDP when the estimated training state does not fit one GPU (:func:`choose_sharding`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curate.train import shard
from curate.train.data import Pack, build_packs, collate
from curate.train.template import Template, dataset_template

LORA_TARGETS = "all-linear"


@dataclass
class TrainConfig:
    """Training settings; ``None`` learning rate means the method's default (full 1e-5, LoRA 1e-4)."""

    method: str = "lora"
    lr: float | None = None
    epochs: float = 3.0
    warmup_ratio: float = 0.1
    cutoff: int = 16384  # most tokens kept of one trace
    pack_len: int | None = None  # tokens per packed sequence (with packing); None: cutoff
    packing: bool = False  # False: the global batch counts traces (the paper); True: packs of pack_len
    global_batch: int = 96
    micro_batch: int = 1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999  # transformers' default, as in the paper's stack
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_targets: str | list[str] = LORA_TARGETS
    bf16: bool = True
    gradient_checkpointing: bool = True
    attn_implementation: str | None = None  # None: flash_attention_2 when installed on GPU, else sdpa
    save_every: int = 0  # optimizer steps between checkpoints; 0: at each epoch end only
    keep_checkpoints: int = 2
    seed: int = 0
    max_steps: int | None = None  # stop early (smoke tests, benchmarks)
    system_prompt: str | None = None  # None: the dataset's (curate.train.template)
    style: str | None = None  # thinking markers; None: the dataset's
    sharding: str = "auto"  # multi-process: "ddp", "fsdp", or "auto" (fsdp when the model does not fit)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', not {self.method!r}")
        if self.lr is None:
            self.lr = 1e-4 if self.method == "lora" else 1e-5
        for name in ("cutoff", "global_batch", "micro_batch", "lora_rank", "lora_alpha"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.sharding not in ("auto", "ddp", "fsdp"):
            raise ValueError(f"sharding must be 'auto', 'ddp' or 'fsdp', not {self.sharding!r}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ValueError(f"adam betas must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")


def load_model(model_path: str, cfg: TrainConfig, device: Any) -> tuple[Any, Any]:
    """Model (still on CPU) and tokenizer ready to train: dtype, attention kernel, LoRA or full, checkpointing."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    on_gpu = device.type == "cuda"
    attn = cfg.attn_implementation
    if attn is None:
        try:
            import flash_attn  # noqa: F401
            attn = "flash_attention_2" if on_gpu else "sdpa"
        except ImportError:
            attn = "sdpa"
    if attn != "flash_attention_2" and _version("transformers") < (4, 54):
        raise ValueError("packed training with sdpa/eager attention needs transformers >= 4.54 (it reads "
                         "trace boundaries from position_ids); upgrade or install flash-attn")
    dtype = torch.bfloat16 if (on_gpu and cfg.bf16 and cfg.method == "lora") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model, tokenizer


def _version(package: str) -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(x) for x in version(package).split(".")[:2] if x.isdigit())


def trainable_state(model: Any) -> dict[str, Any]:
    """The parameters being trained (the adapter, or every weight), for checkpoints."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, step: int, model: Any, optimizer: Any, scheduler: Any, keep: int,
                    mode: str = "none", rank: int = 0) -> Path | None:
    """``out/checkpoints/step-N``: trainable weights, optimizer, scheduler, step and RNG; atomic.

    Every rank calls it (FSDP gathers the shards collectively); rank 0 writes.
    """
    import torch

    weights = shard.full_state(model, mode)
    opt_state = shard.optimizer_state(model, optimizer, mode)
    if rank != 0:
        return None
    root = out / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(weights, tmp / "trainable.pt")
    torch.save({"optimizer": opt_state, "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               tmp / "state.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step, "sharding": mode}))
    if final.exists():
        import shutil
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        import shutil
        shutil.rmtree(old)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


@dataclass
class TrainResult:
    out: Path
    steps: int
    losses: list[float]
    tokens_per_s: float
    data: dict[str, int]
    plan: str = ""
    template: dict[str, Any] = field(default_factory=dict)
    sharding: str = "none"


def plan_text(counts: dict[str, int], cfg: TrainConfig, world: int, accum: int, planned: int) -> str:
    """One line saying what an optimizer step is and how many there will be."""
    unit = f"packs of <= {cfg.pack_len or cfg.cutoff} tokens" if cfg.packing else "sequences (one trace each)"
    batch = cfg.micro_batch * accum * world
    text = (f"{counts['packs']} {unit} x {cfg.epochs:g} epochs / global batch {batch} "
            f"(micro {cfg.micro_batch} x accum {accum} x {world} ranks) = {planned} optimizer steps")
    if cfg.max_steps and cfg.max_steps < planned:
        text += f", stopping after {cfg.max_steps} (max_steps)"
    return text


def train(dataset: str | os.PathLike, model_path: str, out: str | os.PathLike, cfg: TrainConfig | None = None,
          *, config: str | None = None, resume: bool = True, progress: bool = True,
          stop_after: int | None = None, template: Template | None = None) -> TrainResult:
    """Fine-tune ``model_path`` on a dataset folder's traces (see :func:`_train`). Under torchrun the
    process group it starts is destroyed before it returns, after collecting FSDP's reference cycles
    (its parameter groups hold collectives' buffers): freed at interpreter exit instead, after the
    group, they can abort the process ("terminate called without an active exception")."""
    import gc

    import torch.distributed as dist

    owned = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    try:
        return _train(dataset, model_path, out, cfg, config=config, resume=resume, progress=progress,
                      stop_after=stop_after, template=template)
    finally:
        if owned and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()


def _train(dataset: str | os.PathLike, model_path: str, out: str | os.PathLike, cfg: TrainConfig | None = None,
           *, config: str | None = None, resume: bool = True, progress: bool = True,
           stop_after: int | None = None, template: Template | None = None) -> TrainResult:
    """Fine-tune ``model_path`` on a dataset folder's traces; the result lands in ``out/final``.

    ``resume``: continue from the newest checkpoint in ``out``. ``stop_after``: return after that
    many optimizer steps (as if killed there; tests use it). ``template``: the prompt template
    (default: the dataset's, :func:`curate.train.template.dataset_template`, with ``cfg``'s
    overrides). ``out/train_config.json`` records the settings, template, batch unit, optimizer,
    sharding and data counts; ``out/log.jsonl`` one line per optimizer step.
    """
    import torch
    import torch.distributed as dist
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    cfg = cfg or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    template = template or dataset_template(dataset, config, style=cfg.style, system_prompt=cfg.system_prompt)
    model, tokenizer = load_model(model_path, cfg, device)
    packs, counts = build_packs(dataset, tokenizer, cfg.cutoff, pack_len=cfg.pack_len, config=config,
                                system_prompt=template.system_prompt, style=template.style, packing=cfg.packing)
    if not packs:
        raise ValueError(f"{dataset}: no trainable traces")
    params = [p for p in model.parameters() if p.requires_grad]
    n_train, n_all = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    frozen_bytes = next((p.element_size() for p in model.parameters() if not p.requires_grad), 4)
    gpu_bytes = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    mode = shard.choose_sharding(cfg.sharding, world, n_all, n_train, frozen_bytes, gpu_bytes)
    model = shard.wrap(model, mode, device)
    micro_per_epoch = math.ceil(len(packs) / cfg.micro_batch)
    if world > 1:  # every rank must get a micro-batch in every step (else ranks wait forever): drop the tail
        micro_per_epoch -= micro_per_epoch % world
        if micro_per_epoch == 0:
            raise ValueError(f"{len(packs)} sequences cannot feed {world} ranks")
    accum = max(1, min(cfg.global_batch // (cfg.micro_batch * world), math.ceil(micro_per_epoch / world)))
    steps_per_epoch = math.ceil(micro_per_epoch / (accum * world))
    planned = total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    plan = plan_text(counts, cfg, world, accum, planned)

    params = [p for p in model.parameters() if p.requires_grad]  # FSDP replaced them with shards
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    step = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        saved = json.loads((ckpt / "step.json").read_text()).get("sharding", "none")
        if (saved == "fsdp") != (mode == "fsdp"):  # the optimizer state is keyed differently
            raise ValueError(f"{ckpt} was written with sharding {saved!r}; resume it with that sharding, "
                             f"not {mode!r} (or start over with --no-resume)")
        weights = torch.load(ckpt / "trainable.pt", map_location="cpu")
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        shard.load_state(model, optimizer, mode, weights, state["optimizer"], str(ckpt))
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step = json.loads((ckpt / "step.json").read_text())["step"]
    if rank == 0:
        record = {"model": model_path, "dataset": str(dataset), "config": config, "train": asdict(cfg),
                  "template": template.to_json(), "batch_unit": "packs" if cfg.packing else "sequences",
                  "optimizer": {"name": "AdamW", "lr": cfg.lr, "betas": [cfg.adam_beta1, cfg.adam_beta2],
                                "eps": cfg.adam_eps, "weight_decay": cfg.weight_decay,
                                "schedule": "cosine", "warmup_ratio": cfg.warmup_ratio},
                  "data": counts, "world_size": world, "sharding": mode, "grad_accum": accum,
                  "global_batch": cfg.micro_batch * accum * world, "planned_steps": planned, "total_steps": total,
                  "plan": plan,
                  "trainable_params": n_train, "params": n_all}
        (out / "train_config.json").write_text(json.dumps(record, indent=2, default=str))
        if progress:
            tqdm.write(f"plan: {plan}; sharding: {mode}")

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16)
    model.train()
    losses: list[float] = []
    bar = tqdm(total=total, initial=step, disable=not progress or rank != 0, desc="train", unit="step")
    t0, tokens_seen = time.perf_counter(), 0
    log = (out / "log.jsonl").open("a") if rank == 0 else None

    def result() -> TrainResult:
        bar.close()
        if log:
            log.close()
        return TrainResult(out, step, losses, tokens_seen / max(time.perf_counter() - t0, 1e-9), counts,
                           plan, template.to_json(), mode)

    while step < total:
        epoch, within = divmod(step, steps_per_epoch)
        order = _epoch_order(len(packs), epoch, cfg.seed)
        batches = [[packs[i] for i in order[k:k + cfg.micro_batch]]
                   for k in range(0, len(order), cfg.micro_batch)][:micro_per_epoch]
        start = within * accum * world
        for s in range(within, steps_per_epoch):
            group = batches[start + rank: start + accum * world: world]
            start += accum * world
            loss_sum, n_tok = _optimizer_step(model, group, optimizer, scheduler, autocast, cfg, tokenizer,
                                              device, mode)
            step += 1
            tokens_seen += n_tok
            losses.append(loss_sum)
            rate = tokens_seen * world / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{rate:,.0f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if log:
                log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss_sum, "lr": scheduler.get_last_lr()[0],
                                      "tokens": tokens_seen * world, "elapsed_s": time.perf_counter() - t0,
                                      "tokens_per_s": rate}) + "\n")
                log.flush()
            end_of_epoch = s == steps_per_epoch - 1
            if (cfg.save_every and step % cfg.save_every == 0) or end_of_epoch or step == total:
                save_checkpoint(out, step, model, optimizer, scheduler, cfg.keep_checkpoints, mode, rank)
            if world > 1:
                dist.barrier()
            if step >= total or (stop_after is not None and step >= stop_after):
                break
        if stop_after is not None and step >= stop_after and step < total:
            return result()
    final_state = shard.full_state(model, mode, trainable_only=False) if mode == "fsdp" else None
    if rank == 0:
        final = out / "final"
        _unwrap(model).save_pretrained(final, **({"state_dict": final_state} if final_state else {}))
        tokenizer.save_pretrained(final)
    return result()


def _optimizer_step(model: Any, group: list[list[Pack]], optimizer: Any, scheduler: Any, autocast: Any,
                    cfg: TrainConfig, tokenizer: Any, device: Any, mode: str = "none") -> tuple[float, int]:
    """Accumulate gradients over ``group`` (micro-batches), normalised by its target-token count."""
    import torch
    import torch.distributed as dist

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_items = torch.tensor(sum(p.n_targets for mb in group for p in mb), device=device)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world > 1:  # normalise by the global target count; DDP / FSDP then average over ranks, so scale back
        dist.all_reduce(n_items)
    n_items = n_items.clamp(min=1)
    total_loss, tokens = 0.0, 0
    for k, mb in enumerate(group):
        batch = {key: v.to(device) for key, v in collate(mb, pad).items()}
        with shard.sync(model, mode, last=k == len(group) - 1):
            with autocast:
                loss = model(**batch, num_items_in_batch=n_items, use_cache=False).loss
            (loss * world).backward()
        total_loss += float(loss.detach())
        tokens += int(batch["input_ids"].numel())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, tokens
