"""Planted near-duplicates of real problems, and brute-force exact Jaccard to score a dedup against.

Shared by tests/test_minhash.py and bench/bench_minhash.py. Each variant is one realistic way a
problem gets restated by another source: whitespace, LaTeX spacing, numbering, reordered
sentences, one changed word.
"""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from scipy.sparse import csr_matrix

from curate.globalpass import run_here
from curate.ops.dedup.minhash import shingles
from curate.step import Step
from curate.text import units


def kept_rows(step: Step, frame: pl.DataFrame, batch_size: int | None = None) -> np.ndarray:
    """For each row of ``frame`` (ids unique), the row a dedup step keeps in its place (itself
    when kept): the step run in process (``curate.globalpass.run_here``) on parts of ``batch_size``."""
    batches = list(frame.iter_slices(batch_size)) if batch_size else [frame]
    with tempfile.TemporaryDirectory() as folder:
        result = run_here(step, batches, Path(folder))
    rep = np.arange(frame.height)
    if result.rejected is not None and result.rejected.height:
        at = {i: k for k, i in enumerate(frame["id"].to_list())}
        for i, of in zip(result.rejected["id"].to_list(), result.rejected["duplicate_of"].to_list(), strict=True):
            rep[at[i]] = at[of]
    return rep


_WORDS = ("Find", "Determine", "Compute", "Calculate", "What", "Suppose", "Let", "If", "How")


def whitespace(text: str, rng: random.Random) -> str:
    return re.sub(r" ", lambda m: rng.choice(["  ", " ", "\n", " \t"]), text).strip() + "\n"


def latex_spacing(text: str, rng: random.Random) -> str:
    out = re.sub(r"\s*([=+\-<>^_])\s*", lambda m: f" {m.group(1)} ", text)
    return out.replace("\\frac{", "\\frac {").replace("\\dfrac", "\\frac").replace("$$", "$")


def numbering(text: str, rng: random.Random) -> str:
    return rng.choice([f"{rng.randint(1, 40)}. ", f"Problem {rng.randint(1, 40)}: ", f"({rng.choice('abcd')}) "]) + text


def reorder(text: str, rng: random.Random) -> str:
    parts = re.split(r"(?<=[.?!])\s+", text.strip())
    if len(parts) < 2:
        return text
    i = rng.randrange(len(parts) - 1)
    parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return " ".join(parts)


def changed_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    candidates = [k for k, w in enumerate(words) if w.isalpha() and len(w) > 3]
    if not candidates:
        return text + " Answer:"
    k = rng.choice(candidates)
    words[k] = rng.choice([w for w in _WORDS if w.lower() != words[k].lower()])
    return " ".join(words)


VARIANTS = {"whitespace": whitespace, "latex_spacing": latex_spacing, "numbering": numbering,
            "reorder": reorder, "changed_word": changed_word}


def plant(problems: list[str], n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, str]]]:
    """``problems`` plus ``n`` near-duplicates of random ones; returns texts and, for each plant,
    (index of its original, variant name)."""
    rng = random.Random(seed)
    texts = list(problems)
    planted = []
    names = list(VARIANTS)
    for k in range(n):
        src = rng.randrange(len(problems))
        name = names[k % len(names)]
        texts.append(VARIANTS[name](problems[src], rng))
        planted.append((src, name))
    return texts, planted


def exact_jaccard_pairs(texts: list[str], size: int = 5, unit: str = "word") -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with any shared shingle and their exact Jaccard, by sparse brute force."""
    vocab: dict[bytes, int] = {}
    indptr, indices = [0], []
    for t in texts:
        cols = {vocab.setdefault(s, len(vocab)) for s in shingles(units(t, unit), size, unit)}
        indices.extend(sorted(cols))
        indptr.append(len(indices))
    m = csr_matrix((np.ones(len(indices), dtype=np.int32), indices, indptr), shape=(len(texts), max(len(vocab), 1)))
    sizes = np.diff(m.indptr)
    inter = (m @ m.T).tocoo()
    keep = inter.row < inter.col
    i, j, c = inter.row[keep], inter.col[keep], inter.data[keep]
    jac = c / (sizes[i] + sizes[j] - c)
    return np.stack([i, j], axis=1).astype(np.int64), jac


def score(rep: np.ndarray, pairs: np.ndarray, jac: np.ndarray, threshold: float) -> dict[str, float]:
    """Recall and false-positive rate of a clustering (``rep``: each row's kept row) against exact Jaccard.

    Pair level: a true pair (Jaccard >= threshold) is found when both rows land in one cluster.
    Row level: a dropped row is a false positive when no other row reaches the threshold with it.
    """
    true = pairs[jac >= threshold]
    found = rep[true[:, 0]] == rep[true[:, 1]]
    has_twin = np.zeros(len(rep), dtype=bool)
    has_twin[true.ravel()] = True
    dropped = rep != np.arange(len(rep))
    return {
        "true_pairs": int(len(true)),
        "pair_recall": float(found.mean()) if len(true) else 1.0,
        "rows_dropped": int(dropped.sum()),
        "false_drops": int((dropped & ~has_twin).sum()),
        "row_fpr": float((dropped & ~has_twin).sum() / max((~has_twin).sum(), 1)),
    }


def held_out(problems: list[str], n: int = 1500, copies: int = 300, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` distinct real problems drawn at random plus ``copies`` planted near-duplicates of them;
    returns the texts and each row's origin (the index of the original it was made from)."""
    rng = random.Random(seed)
    originals = rng.sample(sorted(set(problems)), n)
    texts, planted = plant(originals, copies, seed=seed + 1)
    return texts, np.array(list(range(n)) + [src for src, _ in planted])


def merges(rep: np.ndarray, origin: np.ndarray) -> dict[str, int]:
    """Planted copies kept with their original vs rows dropped as a duplicate of another problem.

    ``false_merges``: dropped rows whose kept row comes from a different original (distinct
    problems put together); ``copies_caught``: planted copies in their original's cluster.
    """
    n0 = int((origin == np.arange(len(origin))[: len(origin)]).sum()) if len(origin) else 0
    copy = np.arange(len(origin)) >= n0
    dropped = rep != np.arange(len(rep))
    same = origin[rep] == origin
    return {"rows": len(rep), "copies": int(copy.sum()),
            "copies_caught": int((copy & (rep[origin] == rep)).sum()),
            "dropped": int(dropped.sum()), "false_merges": int((dropped & ~same).sum())}
