"""SFT data: a dataset folder -> chat rows -> token ids with an assistant-only loss mask -> packs.

A trace becomes ``[system?, user: problem, assistant: thinking + solution]`` (the same chat export
as ``curate export``), rendered with the tokenizer's chat template. Labels are ``-100`` on every
prompt token, so the loss is on the assistant turn only.

Packing is padding-free: traces are laid end to end in sequences of at most ``max_len`` tokens and
``position_ids`` restart at 0 at each trace. With ``attention_mask=None`` and ``use_cache=False``
(a KV cache switches the detection off) transformers reads those
restarts as sequence boundaries: flash-attention-2 runs varlen kernels over them, and SDPA / eager
get a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``, transformers
>= 4.54). :func:`block_causal_mask` builds the same mask explicitly for older versions or custom
attention. The first token of each trace is a prompt token (label ``-100``), so the shifted loss
never asks one trace to predict the next.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.io.export import export

IGNORE = -100


def load_chats(dataset: str | os.PathLike, config: str | None = None, *, style: str = "think",
               system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The chat export of a dataset folder (one config): ``[{"id", "messages"}]`` in file order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chat.jsonl"
        export(dataset, path, to="messages", style=style, system_prompt=system_prompt,  # type: ignore[arg-type]
               config=config)
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f]


@dataclass
class Example:
    """One tokenised trace: ``labels`` is ``input_ids`` with the prompt set to -100."""

    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def tokenize_chat(tokenizer: Any, messages: list[dict[str, str]], max_len: int, id: str = "") -> Example:
    """Tokenise one conversation whose last turn is the assistant's; mask everything before it.

    The prompt (every turn before the last, plus the generation prompt) and the rest of the full
    rendering are tokenised separately, so the mask boundary is exact. A template that rewrites
    earlier turns (so the prompt is not a prefix of the full text) is refused. Sequences longer
    than ``max_len`` are cut at ``max_len`` (the seed's cutoff), ``truncated`` says so.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"{id or 'row'}: the last message must be the assistant's")
    prompt = _render(tokenizer, messages[:-1], True)
    full = _render(tokenizer, messages, False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the full "
                         "conversation; loss masking needs that")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = list(p_ids) + list(r_ids)
    labels = [IGNORE] * len(p_ids) + list(r_ids)
    cut = len(ids) > max_len
    return Example(id, ids[:max_len], labels[:max_len], cut)


@dataclass
class Pack:
    """Several traces end to end: ``position_ids`` restart at each trace, ``seq_lens`` their lengths."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=list)

    def add(self, ex: Example) -> None:
        n = len(ex.input_ids)
        self.input_ids += ex.input_ids
        # The first token of a trace is never a target: the token before it belongs to another trace.
        self.labels += [IGNORE] + ex.labels[1:]
        self.position_ids += list(range(n))
        self.seq_lens.append(n)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def pack(examples: Sequence[Example], max_len: int) -> list[Pack]:
    """First-fit-decreasing packing into sequences of at most ``max_len`` tokens (deterministic).

    Examples without any target token (all prompt) are dropped: they add no signal.
    """
    packs: list[Pack] = []
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    for i in order:
        ex = examples[i]
        if not any(x != IGNORE for x in ex.labels[1:]):
            continue
        n = len(ex.input_ids)
        for p in packs:
            if len(p) + n <= max_len:
                p.add(ex)
                break
        else:
            p = Pack()
            p.add(ex)
            packs.append(p)
    return packs


def singles(examples: Sequence[Example]) -> list[Pack]:
    """One sequence per trace, in order (no packing: the paper's batch unit, LLaMA-Factory's default).

    Examples without any target token are dropped, as in :func:`pack`.
    """
    out = []
    for ex in examples:
        if any(x != IGNORE for x in ex.labels[1:]):
            p = Pack()
            p.add(ex)
            out.append(p)
    return out


def collate(packs: Sequence[Pack], pad_id: int = 0) -> dict[str, Any]:
    """Tensors for one micro-batch of packs, right-padded to the longest (padding is a trace of its own).

    No ``attention_mask`` is returned on purpose: the model reads boundaries from ``position_ids``.
    Padding gets its own position run starting at 0, labels -100, so it attends only to itself.
    """
    import torch

    width = max(len(p) for p in packs)
    ids, labels, pos = [], [], []
    for p in packs:
        pad = width - len(p)
        ids.append(p.input_ids + [pad_id] * pad)
        labels.append(p.labels + [IGNORE] * pad)
        pos.append(p.position_ids + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "position_ids": torch.tensor(pos)}


def block_causal_mask(seq_lens: Sequence[int], dtype: Any = None) -> Any:
    """Boolean ``[L, L]`` mask (True = may attend): causal within each trace, nothing across traces.

    The explicit form of what the position-id restarts mean, for attention code that cannot read
    them (older transformers, custom kernels); add a batch and head dimension to pass it to SDPA.
    """
    import torch

    seg = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(list(seq_lens)))
    n = int(seg.numel())
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    mask = causal & (seg[:, None] == seg[None, :])
    return mask if dtype is None else mask.to(dtype)


def build_packs(dataset: str | os.PathLike, tokenizer: Any, cutoff: int, *, pack_len: int | None = None,
                config: str | None = None, system_prompt: str | None = None,
                style: str = "think", packing: bool = True) -> tuple[list[Pack], dict[str, int]]:
    """Dataset folder -> packs, and counts (traces, packed, dropped, truncated, tokens, targets, packs).

    ``cutoff``: the most tokens kept of one trace; ``pack_len`` (default ``cutoff``): the length
    of a packed sequence. ``packing=False``: one trace per sequence (``packs`` counts sequences).
    """
    pack_len = pack_len or cutoff
    if pack_len < cutoff:
        raise ValueError(f"pack_len ({pack_len}) must be >= cutoff ({cutoff})")
    chats = load_chats(dataset, config, style=style, system_prompt=system_prompt)
    examples = [tokenize_chat(tokenizer, c["messages"], cutoff, c["id"]) for c in chats]
    packs = pack(examples, pack_len) if packing else singles(examples)
    packed = sum(len(p.seq_lens) for p in packs)
    stats = {"traces": len(examples), "packed": packed, "dropped": len(examples) - packed,
             "truncated": sum(e.truncated for e in examples),
             "tokens": sum(len(p) for p in packs), "target_tokens": sum(p.n_targets for p in packs),
             "packs": len(packs)}
    return packs, stats
