"""MinHash near-duplicate dedup: datasketch-identical signatures, computed in batches with numpy.

Why these defaults: shingles are 3-word n-grams of the normalised problem (problems are short,
~40 words: one changed word then costs 3 of ~40 shingles, not 5; 5-word shingles, datatrove's
choice for web pages, are the default for ``mode: problem_response``), and LSH uses 20 bands x
5 rows (100 permutations). A pair with Jaccard ``s`` becomes a candidate with probability
``1 - (1 - s**5)**20``: 0.47 at s=0.5, 0.99 at s=0.72, 0.9999 at s=0.8. That is generous on
purpose: every candidate is then checked (``verify``) on the exact Jaccard of the two shingle
sets against ``threshold`` (0.72), which removes the LSH false positives that datatrove
(14 x 8, ~0.72) and NeMo-Curator (20 x 13, ~0.79) leave in, and is cheap on problem texts.
The remaining error is the false-negative side: ~1% of pairs right at 0.72 share no band
(14 x 8 would miss ~50% there and ~8% at 0.8). Text is tokenised as ``\\w+`` words, so
whitespace, LaTeX spacing and punctuation never make two rows different (but neither do
operators alone: ``k < 0`` and ``k > 0`` read the same).

Signatures are those of ``datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash32)`` (its
default affine32 scheme: ``min((a * fmix32(h) + b) mod 2**32)``, permutations taken from
datasketch itself), computed for a whole batch at once and kept as one ``uint32`` matrix
(4 bytes x num_perm per row: 400 MB for 1M rows at 100). Bands are 64-bit hashes of signature
slices grouped by sorting, candidate pairs are verified, and clusters are the connected
components of the verified pairs (scipy), so A~B and B~C put A, B and C in one cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from curate.decontam.text import TokenBatch, fmix64, gram_hash
from curate.step import Step, StepResult, reject_where

_M32 = np.uint32(0xFFFFFFFF)
_CHUNK = 4096  # shingles hashed at once per thread (a num_perm x 4096 uint32 buffer stays in cache)
_PAIR_WINDOW = 16  # a bucket member is paired with this many next members (all pairs in small buckets)
_SIZES = {"word": 3, "char": 24}  # words: 3 on problems, 5 (datatrove) on problem+response; NeMo: 24 chars


def shingle_hash32(shingle: bytes) -> int:
    """32-bit hash of one word shingle (tokens joined by single spaces, UTF-8): datasketch ``hashfunc``."""
    return gram_hash(shingle.decode("utf-8", "surrogatepass").split(" ")) >> 32


def char_shingle_hash32(shingle: bytes) -> int:
    """32-bit hash of one character shingle (UTF-8 text): datasketch ``hashfunc`` for ``shingle='char'``."""
    return gram_hash(list(shingle.decode("utf-8", "surrogatepass"))) >> 32


def shingles(units: list[str], size: int, unit: str = "word") -> list[bytes]:
    """The shingles of one text's units (see ``curate.decontam.text.units``), as datasketch input.

    A text shorter than ``size`` units is one shingle; an empty text has none.
    """
    if not units:
        return []
    sep = " " if unit == "word" else ""
    grams = [units] if len(units) < size else [units[i: i + size] for i in range(len(units) - size + 1)]
    return [sep.join(g).encode("utf-8", "surrogatepass") for g in grams]


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (datasketch pre-mixes every hash value with it)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own permutation parameters (a, b) for its default affine32 scheme."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    if getattr(m, "scheme", None) != "affine32":
        raise RuntimeError("minhash_dedup needs datasketch >= 2.0 (affine32 MinHash scheme)")
    a, b = m.permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


class Signer:
    """MinHash signatures (and optionally shingle sets) of batches of texts."""

    def __init__(self, num_perm: int = 100, seed: int = 1, unit: str = "word", size: int = 3, workers: int = 0):
        self.a, self.b = permutations(num_perm, seed)
        self.num_perm, self.unit, self.size = num_perm, unit, size
        self.workers = workers or min(os.cpu_count() or 1, 8)

    def shingle_hashes(self, texts: pl.Series | list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(row, 32-bit shingle hash) of every shingle of every text."""
        batch = TokenBatch(texts, self.unit)
        rows, _, h64 = batch.windows(self.size)
        return rows, (h64 >> np.uint64(32)).astype(np.uint32)

    def sign(self, texts: pl.Series | list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signatures n x num_perm uint32, row of each shingle, shingle hashes)."""
        rows, h = self.shingle_hashes(texts)
        n = len(texts)
        sig = np.full((n, self.num_perm), _M32, dtype=np.uint32)
        if len(h) == 0:
            return sig, rows, h
        mixed = fmix32(h)
        # chunks of ~_CHUNK shingles, cut at row borders so each row's minimum is taken in one
        # chunk; a small reused buffer stays in cache (a fresh 100 x 1M array is page-fault bound)
        cuts = np.arange(0, len(h), _CHUNK)
        bounds = np.unique(np.r_[np.searchsorted(rows, rows[cuts], side="left"), len(h)])
        spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
        a, b = self.a[:, None], self.b[:, None]

        def work(part: list[tuple[int, int]]) -> None:
            buf = np.empty((self.num_perm, _CHUNK), dtype=np.uint32)
            for lo, hi in part:
                block = buf[:, : hi - lo] if hi - lo <= _CHUNK else np.empty((self.num_perm, hi - lo), np.uint32)
                np.multiply(a, mixed[None, lo:hi], out=block)
                block += b
                r = rows[lo:hi]
                starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
                sig[r[starts]] = np.minimum.reduceat(block, starts, axis=1).T

        workers = min(self.workers, len(spans))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, [spans[k::workers] for k in range(workers)]))
        else:
            work(spans)
        return sig, rows, h


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit hash of each row's signature slice in each band: array (bands, n)."""
    keys = np.empty((bands, sig.shape[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            acc = np.full(sig.shape[0], np.uint64(b + 1), dtype=np.uint64)
            for j in range(b * rows, (b + 1) * rows):
                acc = (acc ^ sig[:, j].astype(np.uint64)) * np.uint64(0x100000001B3)
            keys[b] = fmix64(acc)
    return keys


def candidate_pairs(keys: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Unique (i, j), i < j, pairs of rows that share a band bucket: array (m, 2) int64."""
    idx = np.flatnonzero(valid)
    found = []
    for band in keys:
        k = band[idx]
        order = np.argsort(k, kind="stable")
        found.append(bucket_pairs(k[order], idx[order]))
    return unique_pairs(np.concatenate(found)) if found else np.empty((0, 2), dtype=np.int64)


def bucket_pairs(sk: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Pairs of rows within one band's buckets; ``sk`` is the band keys sorted, ``members`` the
    rows in that order (by row within a bucket). Each member is paired with its next
    ``_PAIR_WINDOW`` members, and the first member with every member of a larger bucket."""
    same = np.r_[False, sk[1:] == sk[:-1]]
    if not same.any():
        return np.empty((0, 2), dtype=np.int64)
    group = np.cumsum(~same) - 1  # bucket number of each sorted position
    first = np.flatnonzero(~same)
    size = np.diff(np.r_[first, len(sk)])
    in_multi = size[group] > 1
    pos = np.flatnonzero(in_multi)
    local = pos - first[group[pos]]
    ahead = np.minimum(size[group[pos]] - 1 - local, _PAIR_WINDOW)
    left = np.repeat(pos, ahead)
    right = left + 1 + (np.arange(len(left)) - np.repeat(np.cumsum(ahead) - ahead, ahead))
    pairs = [np.stack([members[left], members[right]], axis=1)]
    big = np.flatnonzero(size > _PAIR_WINDOW + 1)  # star edges keep large buckets connected
    for g in big:
        rest = members[first[g] + _PAIR_WINDOW + 1: first[g] + size[g]]
        pairs.append(np.stack([np.full(len(rest), members[first[g]]), rest], axis=1))
    return np.concatenate(pairs).astype(np.int64)


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Pairs as (low, high), sorted, without repeats."""
    if len(pairs) == 0:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.sort(pairs, axis=1)
    key = np.sort((pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64))
    key = key[np.r_[True, key[1:] != key[:-1]]]  # sort + diff: numpy's hash-based unique is slower here
    return np.stack([(key >> np.uint64(32)).astype(np.int64), (key & np.uint64(0xFFFFFFFF)).astype(np.int64)], axis=1)


def sig_jaccard(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """MinHash-estimated Jaccard of each pair: share of equal signature values."""
    out = np.empty(len(pairs), dtype=np.float64)
    step = 1 << 15
    for s in range(0, len(pairs), step):
        p = pairs[s: s + step]
        out[s: s + step] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1)
    return out


@dataclass
class MinHashDedup(Step):
    """Drop near-duplicate rows: MinHash + LSH on normalised problem shingles, exact-Jaccard checked, clustered.

    Signatures equal datasketch's; candidate pairs from LSH bands are verified against
    ``threshold``, clusters are connected components, one row per cluster is kept by ``keep``
    and the others go to rejects with ``duplicate_of`` (the kept row's id) and the estimated
    Jaccard to it.
    """

    name = "minhash_dedup"
    needs_global_pass = True
    reject_columns = {"duplicate_of": pa.string(), "minhash_jaccard": pa.float64()}

    mode: Literal["problem", "problem_response"] = field(
        default="problem", metadata={"help": "what is compared: the problem, or problem + thinking + solution"})
    shingle: Literal["word", "char"] = field(
        default="word", metadata={"help": "shingle unit: word n-grams (datatrove) or character n-grams (NeMo-Curator)"})
    shingle_size: int | None = field(
        default=None, metadata={"help": "units per shingle (default: 3 words on problems, 5 on problem+response, 24 characters)"})
    num_perm: int = field(default=100, metadata={"help": "MinHash permutations (>= bands x rows)"})
    bands: int = field(default=20, metadata={"help": "LSH bands"})
    rows: int = field(default=5, metadata={"help": "signature values per band"})
    threshold: float = field(default=0.72, metadata={"help": "Jaccard a candidate pair must reach to count as duplicates"})
    verify: Literal["jaccard", "signature", "none"] = field(
        default="jaccard", metadata={"help": "check candidates on exact shingle-set Jaccard (keeps 8 bytes per "
                                             "shingle: use signature for problem_response on millions of rows), "
                                             "the signature estimate, or not at all (keeps all LSH candidates)"})
    keep: Literal["first", "longest", "shortest", "best"] = field(
        default="first", metadata={"help": "which row of a cluster survives: input order, longest or shortest "
                                           "response, or best by `best_by` then shortest response"})
    best_by: str = field(default="verify_correct", metadata={"help": "keep=best: column ranked descending (true > false > null)"})
    seed: int = field(default=1, metadata={"help": "MinHash permutation seed (datasketch's `seed`)"})
    workers: int = field(default=0, metadata={"help": "threads hashing signatures (0: one per core)"})

    def __post_init__(self) -> None:
        if self.mode not in ("problem", "problem_response"):
            raise ValueError(f"mode must be problem or problem_response, not {self.mode!r}")
        if self.shingle not in _SIZES:
            raise ValueError(f"shingle must be word or char, not {self.shingle!r}")
        if self.shingle_size is not None and self.shingle_size < 1:
            raise ValueError(f"shingle_size must be >= 1, got {self.shingle_size}")
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"bands and rows must be >= 1, got {self.bands} x {self.rows}")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm={self.num_perm}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.verify not in ("jaccard", "signature", "none"):
            raise ValueError(f"verify must be jaccard, signature or none, not {self.verify!r}")
        if self.keep not in ("first", "longest", "shortest", "best"):
            raise ValueError(f"keep must be first, longest, shortest or best, not {self.keep!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self._rep: np.ndarray | None = None
        self._jac: np.ndarray | None = None
        self._ids: pl.Series | None = None
        self.stats: dict[str, int] = {}

    @property
    def size(self) -> int:
        if self.shingle_size:
            return self.shingle_size
        return 5 if self.shingle == "word" and self.mode == "problem_response" else _SIZES[self.shingle]

    def columns_read(self) -> tuple[str, ...]:
        cols = ["id", "problem", "thinking", "solution"]
        if self.keep == "best":
            cols.append(self.best_by)
        return tuple(cols)

    def _text(self, batch: pl.DataFrame) -> pl.Series:
        if self.mode == "problem":
            return batch["problem"].cast(pl.String)
        return batch.select(pl.concat_str([pl.col(c).cast(pl.String).fill_null("")
                                           for c in ("problem", "thinking", "solution")], separator="\n"))[:, 0]

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        signer = Signer(self.num_perm, self.seed, self.shingle, self.size, self.workers)
        sigs, ids, lengths, best, shingle_keys = [], [], [], [], []
        base = 0
        for batch in batches:
            sig, rows, h = signer.sign(self._text(batch))
            sigs.append(sig)
            ids.append(batch["id"])
            lengths.append(response_length(batch))
            if self.keep == "best":
                best.append(batch[self.best_by])
            if self.verify == "jaccard":  # sorted unique (row << 32 | shingle hash): each row's shingle set
                key = ((rows.astype(np.uint64) + np.uint64(base)) << np.uint64(32)) | h.astype(np.uint64)
                key.sort()
                shingle_keys.append(key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key)
            base += batch.height
        n = base
        sig = np.concatenate(sigs) if sigs else np.empty((0, self.num_perm), dtype=np.uint32)
        valid = (sig != _M32).any(axis=1) if n else np.zeros(0, dtype=bool)
        pairs = candidate_pairs(band_keys(sig, self.bands, self.rows), valid)
        if self.verify == "signature":
            pairs = pairs[sig_jaccard(sig, pairs) >= self.threshold]
        elif self.verify == "jaccard" and len(pairs):
            pairs = pairs[_set_jaccard(np.concatenate(shingle_keys), n, pairs) >= self.threshold]
        self._rep = representatives(n, pairs, keep_rank(self.keep, n, lengths, best))
        self._jac = np.ones(n, dtype=np.float64)
        dup = np.flatnonzero(self._rep != np.arange(n))
        if len(dup):
            self._jac[dup] = sig_jaccard(sig, np.stack([dup, self._rep[dup]], axis=1))
        self._ids = pl.concat(ids) if ids else pl.Series("id", [], dtype=pl.String)
        self.stats = {"rows": n, "verified_pairs": len(pairs), "dropped": len(dup)}

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        assert self._rep is not None and self._jac is not None and self._ids is not None, "fit() must run first"
        dup_of = duplicate_of(self._ids, self._rep, offset, batch.height)
        return self.reject_duplicates(batch, dup_of, pl.Series(self._jac[offset: offset + batch.height]))

    def reject_duplicates(self, batch: pl.DataFrame, duplicate_of: pl.Series, score: pl.Series) -> StepResult:
        """Reject the rows whose ``duplicate_of`` (the kept row's id) is set, with their Jaccard ``score``."""
        reason = pl.format("near duplicate (MinHash, est. Jaccard {}) of {}", pl.col("minhash_jaccard").round(3),
                           pl.col("duplicate_of"))
        return split_duplicates(batch, duplicate_of, reason, "minhash_jaccard", score)


def split_duplicates(batch: pl.DataFrame, duplicate_of: pl.Series, reason: pl.Expr,
                     score_name: str | None = None, score: pl.Series | None = None) -> StepResult:
    """Reject the rows whose ``duplicate_of`` (the kept row's id) is set; their rejects carry it
    (and ``score_name``) beside ``reason``, which may read both columns."""
    detail = [duplicate_of.alias("duplicate_of")]
    if score_name is not None and score is not None:
        detail.append(score.cast(pl.Float64).alias(score_name))
    result = reject_where(batch.with_columns(detail), duplicate_of.is_not_null(), reason)
    return StepResult(result.kept.drop([c.name for c in detail]), result.rejected)


def duplicate_of(ids: pl.Series, rep: np.ndarray, offset: int, height: int) -> pl.Series:
    """The kept row's id for each row of a batch that is a duplicate, null for the rows kept."""
    reps = rep[offset: offset + height]
    dup = pl.Series(reps != np.arange(offset, offset + height))
    return pl.select(pl.when(dup).then(ids.gather(reps)).otherwise(None)).to_series().alias("duplicate_of")


def keep_rank(keep: str, n: int, lengths: list[pl.Series], best: list[pl.Series]) -> np.ndarray:
    """Rank of each row for a keep policy (lower survives): first, longest, shortest, or best
    (``best`` column descending, true > false > null, then the shortest response)."""
    if keep == "first":
        return np.arange(n)
    frame = pl.DataFrame({"pos": np.arange(n), "len": pl.concat(lengths) if lengths else pl.Series([], dtype=pl.Int64)})
    if keep == "best":
        frame = frame.with_columns(pl.concat(best).alias("best") if best else pl.lit(None).alias("best"))
        keys, desc = ["best", "len", "pos"], [True, False, False]
    else:
        keys, desc = ["len", "pos"], [keep == "longest", False]
    ordered = frame.sort(keys, descending=desc, nulls_last=True)["pos"].to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[ordered] = np.arange(n)
    return rank


def response_length(batch: pl.DataFrame) -> pl.Series:
    """Characters of thinking + solution (what keep=longest/shortest compare)."""
    return batch.select(pl.col("thinking").fill_null("").str.len_chars()
                        + pl.col("solution").fill_null("").str.len_chars())[:, 0].cast(pl.Int64)


def _set_jaccard(keys: np.ndarray, n: int, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the two rows' shingle sets, per pair, vectorised.

    ``keys`` is sorted and unique ``row << 32 | shingle hash``; every shingle of the smaller row
    of a pair is looked up in the other row with one ``searchsorted``.
    """
    offsets = np.searchsorted(keys, np.arange(n + 1, dtype=np.uint64) << np.uint64(32))
    size = np.diff(offsets)
    small = np.where(size[pairs[:, 0]] <= size[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    other = np.where(small == pairs[:, 0], pairs[:, 1], pairs[:, 0])
    out = np.zeros(len(pairs), dtype=np.float64)
    step = 1 << 16
    for s in range(0, len(pairs), step):
        sm, ot = small[s: s + step], other[s: s + step]
        count = size[sm]
        pair = np.repeat(np.arange(len(sm)), count)
        pos = np.repeat(offsets[sm], count) + (np.arange(len(pair)) - np.repeat(np.cumsum(count) - count, count))
        probe = (np.repeat(ot, count).astype(np.uint64) << np.uint64(32)) | (keys[pos] & np.uint64(0xFFFFFFFF))
        at = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
        inter = np.bincount(pair, weights=keys[at] == probe, minlength=len(sm))
        union = size[sm] + size[ot] - inter
        out[s: s + step] = np.divide(inter, union, out=np.zeros(len(sm)), where=union > 0)
    return out


def representatives(n: int, pairs: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the row its cluster keeps (connected components of the verified pairs)."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if len(pairs) == 0:
        return np.arange(n)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    frame = pl.DataFrame({"pos": np.arange(n), "label": label, "rank": rank})
    keeper = frame.sort("rank").group_by("label", maintain_order=True).agg(pl.col("pos").first().alias("rep"))
    return frame.join(keeper, on="label", how="left").sort("pos")["rep"].to_numpy().astype(np.int64)
