"""GPQA's text is never shipped, and a clone checks that without it: the tests keep, for each GPQA
question, only a 64-bit polynomial hash of a 40-character run of it (tests/data/gpqa_probes.txt),
and hash every 40-character window of the shipped data the same way (numpy, wrapping uint64
arithmetic). Both sides are first reduced to lowercase ASCII letters and digits, with JSON escapes
dropped, so layout, escaping and punctuation cannot hide a copy."""

from __future__ import annotations

import re

import numpy as np

WIDTH = 40
_BASE = np.uint64(1_000_003)


def normalize(data: bytes) -> np.ndarray:
    """The lowercase ASCII letters and digits of ``data`` (JSON escapes removed) as uint64 codes."""
    b = np.frombuffer(re.sub(rb"\\u[0-9a-fA-F]{4}|\\[nrtbf]", b" ", data), dtype=np.uint8)
    b = np.where((b >= 65) & (b <= 90), b | 0x20, b)
    return b[((b >= 48) & (b <= 57)) | ((b >= 97) & (b <= 122))].astype(np.uint64)


def window_hashes(data: bytes) -> np.ndarray:
    """The hash of every WIDTH-character window of normalised ``data`` (empty when shorter)."""
    b = normalize(data)
    n = len(b) - WIDTH + 1
    if n <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(WIDTH):
            h = h * _BASE + b[k:k + n]
    return h


def probe_hash(question: str) -> int:
    """The hash of the 40 normalised characters a third of the way into a question."""
    hashes = window_hashes(question.encode())
    return int(hashes[len(hashes) // 3])
