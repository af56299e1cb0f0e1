"""Validate a dataset by training on it: packed SFT (LoRA or full) and benchmark evaluation.

``train(dataset, model, out, TrainConfig(...))`` fine-tunes a student on a dataset folder's chat
export (``curate train``); ``curate.train.eval.evaluate`` scores a model on the bundled benchmarks
(``curate eval``). torch, transformers and peft are imported only when used (``pip install curate-cot[train]``).
"""

from curate.train.data import (
           Example,
           Pack,
           block_causal_mask,
           build_packs,
           collate,
           load_chats,
           pack,
           tokenize_chat,
)
from curate.train.sft import TrainConfig, TrainResult, train

__all__ = ["Example", "Pack", "TrainConfig", "TrainResult", "block_causal_mask", "build_packs", "collate",
           "load_chats", "pack", "tokenize_chat", "train"]
