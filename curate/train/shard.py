"""How the student is spread over ranks: one process, DDP replicas, or FSDP2 shards.

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards each decoder layer (the model's
``_no_split_modules``) and the root over all ranks: parameters, gradients and AdamW state take
1/N of the memory each, so a 7B-32B full fine-tune fits where DDP's full replica does not. The
paper's runs used DeepSpeed ZeRO-3 with CPU offload for the same purpose (NovaSky-AI/SkyThought
@corrupt ``skythought/train/LLaMA-Factory/examples/deepspeed/ds_z3_offload_config.json``); FSDP2
is chosen here because it is in PyTorch itself (no extra dependency) and keeps the training loop
unchanged. Gradients are averaged over ranks in both modes, so the loop's loss scaling is shared.

Checkpoints hold full (unsharded) trainable weights and optimizer state, gathered collectively
and written by rank 0, so a run resumes with any sharding mode of the same world size.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

#: bytes per trained parameter for a full fine-tune: fp32 weight, fp32 gradient, two AdamW moments
TRAIN_BYTES_PER_PARAM = 16
FIT_FRACTION = 0.6  # the rest of the GPU is left for activations, the allocator and kernels


def choose_sharding(wanted: str, world: int, n_params: int, n_trainable: int, frozen_bytes: int,
                    gpu_bytes: int | None) -> str:
    """``"none"`` for one process; else ``wanted``, or for ``"auto"`` FSDP when the estimated
    training state (16 bytes a trained parameter plus the frozen weights) exceeds 60% of one GPU's
    ``gpu_bytes`` (None, on CPU: DDP)."""
    if world == 1:
        return "none"
    if wanted != "auto":
        return wanted
    if gpu_bytes is None:
        return "ddp"
    need = TRAIN_BYTES_PER_PARAM * n_trainable + frozen_bytes * (n_params - n_trainable)
    return "fsdp" if need > FIT_FRACTION * gpu_bytes else "ddp"


def _base(model: Any) -> Any:
    """The transformers model under a peft wrapper (for its ``_no_split_modules``)."""
    inner = getattr(model, "get_base_model", None)
    return inner() if callable(inner) else model


def wrap(model: Any, mode: str, device: Any) -> Any:
    """Place ``model`` for ``mode``: moved to ``device`` (none), a DDP replica, or FSDP2 shards."""
    import torch

    if mode == "none":
        return model.to(device)
    if mode == "ddp":
        model.to(device)
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (int(os.environ.get("WORLD_SIZE", "1")),))
    names = set(getattr(_base(model), "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"FSDP: found no decoder layers ({', '.join(sorted(names)) or 'no _no_split_modules'})")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def sync(model: Any, mode: str, last: bool) -> Any:
    """Context for one micro-batch's backward: gradients are reduced only on the step's last one."""
    if mode == "ddp":
        return contextlib.nullcontext() if last else model.no_sync()
    if mode == "fsdp":
        model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**{"full_state_dict": True, "cpu_offload": True, **kw})


def trainable_names(model: Any) -> list[str]:
    return [n for n, p in unwrap(model).named_parameters() if p.requires_grad]


def full_state(model: Any, mode: str, trainable_only: bool = True) -> dict[str, Any]:
    """Unsharded weights (trainable ones, or all): collective under FSDP, where only rank 0 gets them."""
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_options())
        m = unwrap(model)
        # named_parameters drops tied aliases (lm_head tied to the embedding), as save_pretrained does
        keep = set(trainable_names(model)) if trainable_only else \
            {n for n, _ in m.named_parameters()} | {n for n, _ in m.named_buffers()}
        return {k: v for k, v in state.items() if k in keep}
    named = unwrap(model).named_parameters() if trainable_only else unwrap(model).state_dict().items()
    return {n: p.detach().clone() for n, p in named if not trainable_only or p.requires_grad}


def optimizer_state(model: Any, optimizer: Any, mode: str) -> dict[str, Any]:
    """The optimizer's state, unsharded (collective under FSDP)."""
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_options())
    return optimizer.state_dict()


def load_state(model: Any, optimizer: Any, mode: str, weights: dict[str, Any], opt_state: dict[str, Any],
               where: str) -> None:
    """Put checkpointed full weights and optimizer state back (every rank reads the same files)."""
    wanted = set(trainable_names(model))
    if set(weights) != wanted:
        extra = sorted(set(weights) - wanted)[:3]
        raise ValueError(f"{where}: checkpoint does not match this model/method (e.g. {extra})")
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        set_model_state_dict(model, weights, options=_options(strict=False, cpu_offload=False))
        set_optimizer_state_dict(model, optimizer, opt_state, options=_options(cpu_offload=False))
        return
    unwrap(model).load_state_dict(weights, strict=False)
    optimizer.load_state_dict(opt_state)
