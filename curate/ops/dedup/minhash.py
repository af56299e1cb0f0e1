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
default affine32 scheme: ``min((a * fmix32(h) + b) mod 2**32)``, permutations drawn as
datasketch draws them), computed for a whole batch at once and kept as one ``uint32`` matrix
(4 bytes x num_perm per row: 400 MB for 1M rows at 100). Bands are 64-bit hashes of signature
slices grouped by sorting. Rows are then decided as the plain loop decides them (query the kept
rows, then insert; keep the first), over the candidate pairs (``keep_first``): a row is dropped
only when a kept row it pairs with is within the threshold, so every dropped row is within the
threshold of the row it names and a chain A~B~C never drops C for A. A pair is checked only when
its better row is kept and the other undecided, so a cluster of k copies costs about k checks,
not k^2. Each row keeps at most ``max_shingles`` shingle hashes for the check (the smallest: a
bottom-k sample, exact for rows with fewer), so memory per row is bounded on long traces.

The pass (``plan``) runs on any engine as units of work: tasks over runs of consecutive parts sign
them a few MiB of text at a time, and each part's signatures, row facts, band keys and shingle
sets go to one raw numpy array each; tasks over groups of bands sort the keys
into candidate pairs; the clusters of candidate pairs go to tasks of ~250k rows, each loading
what it needs of its rows only (two ints, the signature and at most ``max_shingles`` shingle
hashes each) and running ``keep_first`` with its lazy check.

What a duplicate is: ``[asy]`` figure code is left out of the shingles (problems that share a
figure but ask different questions are different problems), and with ``same_numbers`` two
problems whose numbers differ are never duplicates ("4 balls in 3 boxes" vs "5 balls").
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from curate.cpus import available_cpus, in_order
from curate.globalpass import (
    PartArrays,
    PartFiles,
    PassContext,
    PlannedApply,
    no_duplicates,
    read_duplicates,
)
from curate.step import Step, StepResult, reject_where
from curate.text import (
    TokenBatch,
    byte_runs,
    class_bytes,
    fmix64,
    gram_hash,
    ramp,
    short_keys,
    utf8_buffer,
)

_M32 = np.uint32(0xFFFFFFFF)
_CHUNK = 4096  # shingles hashed at once per thread (a num_perm x 4096 uint32 buffer stays in cache)
_PROBES = 1 << 20  # shingle lookups per vectorised step of the Jaccard check
_PAIR_WINDOW = 16  # a bucket member is paired with this many next members (all pairs in small buckets)
_ASY = r"(?s)\[asy\].*?\[/asy\]"  # Asymptote figure code in MATH/AoPS problems
_LEADING_NUMBER = r"^\s*(?i:problem\s*)?\(?[0-9a-z]{1,3}[.):]\s+"  # "3. ", "(a) ", "Problem 12: "
_SIZES = {"word": 3, "char": 24}  # words: 3 on problems, 5 (datatrove) on problem+response; NeMo: 24 chars
_KEYS_PER_TASK = 5_000_000  # band keys one candidate-pair task sorts (rows x its bands)
_ROWS_PER_CHECK = 250_000  # rows in pairs one keep-first task loads (whole clusters: a bigger one is whole)
_ROWS_PER_SIGN = 250_000  # rows of consecutive parts one signing task covers
_SIGN_TEXT_BYTES = 2 << 20  # compared text signed at once: its token arrays (8 B a token) stay under the 4 MiB
# from which numpy asks for huge pages (zeroing 2 MiB pages for short-lived arrays cost more than it saves)


def shingle_hash32(shingle: bytes) -> int:
    """32-bit hash of one word shingle (tokens joined by single spaces, UTF-8): datasketch ``hashfunc``."""
    return gram_hash(shingle.decode("utf-8", "surrogatepass").split(" ")) >> 32


def char_shingle_hash32(shingle: bytes) -> int:
    """32-bit hash of one character shingle (UTF-8 text): datasketch ``hashfunc`` for ``shingle='char'``."""
    return gram_hash(list(shingle.decode("utf-8", "surrogatepass"))) >> 32


def shingles(units: list[str], size: int, unit: str = "word") -> list[bytes]:
    """The shingles of one text's units (see ``curate.text.units``), as datasketch input.

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
    """datasketch's permutation parameters (a, b) for its default affine32 scheme, drawn as
    ``datasketch/minhash.py`` ``_init_permutations`` draws them (importing datasketch itself costs
    ~0.7 s of start-up: its LSH pulls in scipy.integrate); tests compare the signatures."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


class Signer:
    """MinHash signatures (and optionally shingle sets) of batches of texts."""

    def __init__(self, num_perm: int = 100, seed: int = 1, unit: str = "word", size: int = 3, workers: int = 0):
        self.a, self.b = permutations(num_perm, seed)
        self.num_perm, self.unit, self.size = num_perm, unit, size
        self.workers = workers or min(available_cpus(), 8)  # a container's CPU limit, not the host's
        # one pool and one buffer per thread for the Signer's life: threads made afresh per batch
        # each leave memory in their own malloc arena (measured: +55% peak RSS on long traces)
        self._pool: ThreadPoolExecutor | None = None
        self._buffers: list[np.ndarray] = []

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
        workers = min(self.workers, len(spans))
        if not self._buffers:
            self._buffers = [np.empty((self.num_perm, _CHUNK), dtype=np.uint32) for _ in range(self.workers)]

        def work(k: int) -> None:
            buf = self._buffers[k]
            for lo, hi in spans[k::workers]:
                block = buf[:, : hi - lo] if hi - lo <= _CHUNK else np.empty((self.num_perm, hi - lo), np.uint32)
                np.multiply(a, mixed[None, lo:hi], out=block)
                block += b
                r = rows[lo:hi]
                starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
                sig[r[starts]] = np.minimum.reduceat(block, starts, axis=1).T

        if workers > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers)
            list(self._pool.map(work, range(workers)))
        else:
            work(0)
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


def shared_buckets(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, indices) of the rows whose band key another row shares, sorted by key and by index
    within a key: one unstable argsort finds the shared keys, and only their rows (few) are put in
    index order (a stable argsort of every key cost 7x more)."""
    if len(key) < 2:
        return key[:0], np.empty(0, dtype=np.int64)
    order = np.argsort(key)
    same = key[order[1:]] == key[order[:-1]]
    rows = order[np.r_[same, False] | np.r_[False, same]]
    rows = rows[np.lexsort((rows, key[rows]))]
    return key[rows], rows


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
    right = left + 1 + ramp(ahead)
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
    """Drop near-duplicate rows: MinHash + LSH on normalised problem shingles, Jaccard checked, keep-first.

    Signatures equal datasketch's. In ``keep`` order, a row is dropped when a kept row it shares
    an LSH band with is within ``threshold`` (and has the same numbers); it goes to rejects with
    ``duplicate_of`` (that kept row's id) and the estimated Jaccard to it.
    """

    name = "minhash_dedup"
    needs_global_pass = True
    thread_safe = True  # the planned apply only reads its part's plan
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
    max_shingles: int = field(
        default=256, metadata={"help": "shingles per row kept for the Jaccard check, the smallest hashes: "
                                      "exact below it, a bottom-k estimate above (8 bytes each per row)"})
    ignore_asy: bool = field(
        default=True, metadata={"help": "leave [asy]...[/asy] figure code out of the shingles: problems that "
                                        "share a figure but ask different questions stay apart"})
    same_numbers: bool = field(
        default=True, metadata={"help": "only problems with the same numbers (as a multiset, a leading "
                                        "'Problem 3:' ignored) can be duplicates: '4 balls in 3 boxes' and "
                                        "'5 balls in 3 boxes' are two problems"})
    verify: Literal["jaccard", "signature", "none"] = field(
        default="jaccard", metadata={"help": "check candidates on the Jaccard of their shingle sets (see "
                                             "max_shingles), on the signature estimate, or not at all (every "
                                             "LSH candidate of a kept row is dropped)"})
    keep: Literal["first", "longest", "shortest", "best"] = field(
        default="first", metadata={"help": "which row of a cluster survives: input order, longest or shortest "
                                           "response, or best by `best_by` then shortest response"})
    best_by: str = field(default="verify_correct", metadata={"help": "keep=best: column ranked descending (true > false > null)"})
    seed: int = field(default=1, metadata={"help": "MinHash permutation seed (datasketch's `seed`)"})
    workers: int = field(default=0, metadata={"help": "threads hashing signatures (0: one per core)"})

    def __post_init__(self) -> None:
        if self.shingle_size is not None and self.shingle_size < 1:
            raise ValueError(f"shingle_size must be >= 1, got {self.shingle_size}")
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"bands and rows must be >= 1, got {self.bands} x {self.rows}")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm={self.num_perm}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.max_shingles < 1:
            raise ValueError(f"max_shingles must be >= 1, got {self.max_shingles}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

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

    def _problem(self, batch: pl.DataFrame) -> pl.Series:
        """The problems as compared: without ``[asy]`` figure code (a problem that is only a figure
        keeps it, else it would have no shingles); only the rows with ``[asy]`` are rewritten."""
        problem = batch.get_column("problem").cast(pl.String)
        if not self.ignore_asy:
            return problem
        rows = problem.str.contains("[asy]", literal=True).fill_null(False).arg_true()
        if not len(rows):
            return problem
        some = problem.gather(rows)
        bare = some.str.replace_all(_ASY, " ")
        kept = pl.select(pl.when(bare.str.contains(r"\w")).then(bare).otherwise(some)).to_series()
        return problem.clone().scatter(rows, kept)

    def numbers(self, batch: pl.DataFrame) -> np.ndarray:
        """A 64-bit hash of the multiset of each problem's numbers (``\\d+`` runs after a leading
        "3. " or "Problem 2:", leading zeros dropped): the sum of one hash per number, so order does
        not count. 0 for every row unless ``same_numbers``, and for a problem without numbers or
        whose one number is 0 (as when the sorted numbers were joined into one string). The runs
        are found on the UTF-8 bytes with numpy (no regex, no list column)."""
        if not self.same_numbers:
            return np.zeros(batch.height, dtype=np.uint64)
        problem = pl.col("p")
        found = pl.DataFrame({"p": self._problem(batch).fill_null("")}).with_columns(
            (problem.str.len_bytes() - problem.str.replace(_LEADING_NUMBER, "").str.len_bytes()).alias("skip"))
        data, offsets = utf8_buffer(found["p"])
        digit = class_bytes(data, (data - np.uint8(48)) < 10, r"^\d$")
        skip = found["skip"].to_numpy().astype(np.int64)
        digit[np.repeat(offsets[:-1], skip) + ramp(skip)] = False  # the leading number (it ends in a space)
        starts, ends = byte_runs(digit, offsets)
        count = np.diff(np.searchsorted(starts, offsets))
        figures = np.r_[np.flatnonzero(digit & (data != 48)), len(data)]  # digits but ASCII 0
        begin = np.minimum(figures[np.searchsorted(figures, starts)], ends)  # leading zeros dropped
        each = number_hashes(data, begin, ends)
        prefix = np.zeros(len(each) + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum(each, out=prefix[1:])
            total = prefix[np.cumsum(count)] - prefix[np.cumsum(count) - count]
        return np.where((count == 1) & (total == _ZERO_HASH), np.uint64(0), total)

    def _text(self, batch: pl.DataFrame) -> pl.Series:
        problem = self._problem(batch)
        if self.mode == "problem":
            return problem
        return batch.select(pl.concat_str([pl.lit(problem).fill_null(""), *[pl.col(c).cast(pl.String).fill_null("")
                                                                          for c in ("thinking", "solution")]],
                                          separator="\n"))[:, 0]

    def plan(self, ctx: PassContext) -> PlannedApply:
        """Signatures per part, candidate pairs per group of bands, then ``keep_first`` per group of
        clusters; records rows, candidate and checked pairs, and drops."""
        if ctx.done() is None:
            self._sign(ctx)
            pairs = self._candidates(ctx)
            dups, checked = self._decide(ctx, pairs)
            ctx.write_plans(dups)
            stats = {"rows": ctx.rows, "candidate_pairs": len(pairs), "checked_pairs": checked, "dropped": dups.height}
            ctx.finish({"stats": stats}, ["sig", "facts", "bands", "shingles", "pairs", "check"])
        return MinHashDedup.apply_plan

    def _sign(self, ctx: PassContext) -> None:
        """Units of consecutive parts (``_ROWS_PER_SIGN`` rows a unit, at least one per worker of the
        engine), keeping arrays per part in the pass's scratch: ``sig`` (the signatures), ``facts``
        (response length and number hash per row), ``bands`` (the positions of the rows with
        shingles, then their band keys: bands + 1 rows) and, to check on Jaccard, ``shingles``
        (sorted ``pos << 32 | hash`` keys). A unit reads and signs about ``_SIGN_TEXT_BYTES`` of
        compared text at a time, as many parts as the text per row read so far says fit (parts of
        a fixed ``batch_size`` may hold few rows: signed one by one, the fixed cost of each polars
        and numpy call was most of the time; a Parquet file's size says little, near-copies
        compress to nothing). Ids are read back from the parts."""
        arrays = {w: ctx.arrays(w) for w in ("sig", "facts", "bands", "shingles")}
        items = [(k, path, offset, count) for (k, path, offset), count in zip(ctx.items(), ctx.counts, strict=True)]
        per_part = max(1, ctx.rows // max(len(items), 1))
        units = [[items[k] for k in g.tolist()] for g in
                 np.array_split(np.arange(len(items)), ctx.groups(len(items), per_part, _ROWS_PER_SIGN)) if len(g)]

        side_by_side = ctx.threads()  # batches signed at once: the local engine's threads (a unit at a time)

        def sign_unit(s: MinHashDedup, unit: list[tuple[int, str, int, int]]) -> dict[str, int]:
            # batches are signed ``side_by_side`` at once, each on a Signer of its own: reading and
            # tokenising a batch is mostly one thread's work, which left the other cores idle
            signers: queue.SimpleQueue[Signer] = queue.SimpleQueue()
            for _ in range(min(side_by_side, len(unit))):
                signers.put(Signer(s.num_perm, s.seed, s.shingle, s.size, s.workers))
            per_row: float | None = None  # bytes per row (``_sign_parts``), from the last batch signed

            def batches() -> Iterator[list[tuple[int, str, int, int]]]:
                i = 0
                while i < len(unit):
                    j, rows = i + 1, unit[i][3]
                    while per_row is not None and j < len(unit) and (rows + unit[j][3]) * per_row <= _SIGN_TEXT_BYTES:
                        rows += unit[j][3]
                        j += 1
                    yield unit[i:j]
                    i = j

            def sign(parts: list[tuple[int, str, int, int]]) -> tuple[int, int]:
                signer = signers.get()
                try:
                    return s._sign_parts(signer, parts, arrays), sum(count for *_, count in parts)
                finally:
                    signers.put(signer)

            for weight, signed in in_order(sign, batches(), side_by_side):
                per_row = weight / max(signed, 1)
            return {"rows": sum(count for *_, count in unit)}

        ctx.map(sign_unit, units, state=self, on_result=ctx.told())

    def _sign_parts(self, signer: Signer, parts: list[tuple[int, str, int, int]], arrays: dict[str, PartArrays]) -> int:
        """Sign consecutive parts (number, path, offset, rows), read in one call, as one batch; keep
        each part's arrays. Returns what the batch weighed: the bytes of its compared text, or an
        eighth of all it read (the response columns read to rank rows), at least one a row."""
        lengths = self.keep != "first"  # the response length only ranks rows for the other policies
        cols = ["problem", "thinking", "solution"] if lengths or self.mode == "problem_response" else ["problem"]
        batch = pl.read_parquet([path for _, path, _, _ in parts], columns=cols, hive_partitioning=False)
        base = parts[0][2]
        if batch.height != sum(count for *_, count in parts):
            raise RuntimeError(f"minhash_dedup: parts {parts[0][1]}..{parts[-1][1]} hold {batch.height} rows, "
                               f"not the {sum(count for *_, count in parts)} the stage counted")
        text = self._text(batch)
        sig, rows, h = signer.sign(text)
        length = response_length(batch).to_numpy().astype(np.int64) if lengths else np.zeros(batch.height, np.int64)
        facts = np.stack([length, self.numbers(batch).view(np.int64)], axis=1)
        valid = (sig != _M32).any(axis=1)
        keys = band_keys(sig[valid], self.bands, self.rows)
        pos = np.flatnonzero(valid)
        shingle_keys = shingle_keys_of(rows, h, base, self.max_shingles) if self.verify == "jaccard" else None
        for k, _, offset, count in parts:
            lo, hi = offset - base, offset - base + count
            arrays["sig"].put(k, sig[lo:hi])
            arrays["facts"].put(k, facts[lo:hi])
            a, b = np.searchsorted(pos, [lo, hi])
            arrays["bands"].put(k, np.concatenate([(pos[None, a:b] + base).astype(np.uint64), keys[:, a:b]]))
            if shingle_keys is not None:
                cut = np.searchsorted(shingle_keys, np.array([offset, offset + count], dtype=np.uint64) << np.uint64(32))
                arrays["shingles"].put(k, shingle_keys[cut[0]:cut[1]])
        return max(int(text.str.len_bytes().sum() or 0), batch.estimated_size() >> 3, batch.height)

    def _candidates(self, ctx: PassContext) -> np.ndarray:
        """Candidate pairs: one task per group of bands reads those bands' keys of every part and
        pairs the rows that share a bucket (``bucket_pairs``); unique (low, high) pairs, sorted."""
        if not ctx.parts:
            return np.empty((0, 2), dtype=np.int64)
        store, bands, parts = ctx.scratch, ctx.arrays("bands"), range(len(ctx.parts))
        groups = [g.tolist() for g in np.array_split(np.arange(self.bands), ctx.groups(self.bands, ctx.rows, _KEYS_PER_TASK))]

        threads = ctx.threads()  # bands paired at once (the sorts release the GIL)

        def band_task(_: Any, item: tuple[int, list[int]]) -> dict[str, int]:
            g, group = item
            arrays = [bands.array(k) for k in parts]
            pos = np.concatenate([a[0] for a in arrays]).astype(np.int64)

            def band(b: int) -> np.ndarray:
                sk, at = shared_buckets(np.concatenate([a[1 + b] for a in arrays]))
                return bucket_pairs(sk, pos[at])

            found = np.empty((0, 2), dtype=np.int64)
            for pairs in in_order(band, group, threads):  # merged band by band (memory)
                found = unique_pairs(np.concatenate([found, pairs]))
            store.put(f"pairs/{g:03d}", found)
            return {"rows": len(pos)}

        ctx.map(band_task, list(enumerate(groups)))
        return unique_pairs(np.concatenate([store.get(key) for key in store.keys("pairs")]))

    def _decide(self, ctx: PassContext, pairs: np.ndarray) -> tuple[pl.DataFrame, int]:
        """``keep_first`` over the candidate pairs: (pos, duplicate_of, score) of each dropped row,
        and the pairs checked. Rows in no pair are kept; a cluster (connected component of the
        pairs) is decided on its own, so clusters go to tasks of ~``_ROWS_PER_CHECK`` rows each,
        which load only their rows (``_check``)."""
        if len(pairs) == 0:
            return no_duplicates(), 0
        store, groups = ctx.scratch, _cluster_groups(pairs)
        for t, chunk in enumerate(groups):
            store.put(f"check/pairs-{t:05d}", pairs[chunk])
        tasks = list(range(len(groups)))
        arrays, inputs = {w: ctx.arrays(w) for w in ("sig", "facts", "shingles")}, ctx.inputs()

        def check(s: MinHashDedup, t: int) -> dict[str, int]:
            mine = store.get(f"check/pairs-{t:05d}")
            dups, checked = s._check(mine, arrays, inputs)
            store.put(f"check/dups-{t:05d}", dups)
            return {"rows": len(mine), "checked": checked}

        results = ctx.map(check, tasks, state=self)
        dups = pl.concat([store.get(f"check/dups-{t:05d}") for t in tasks])
        return dups, sum(r["checked"] for r in results)

    def _check(self, pairs: np.ndarray, arrays: dict[str, PartArrays], inputs: PartFiles) -> tuple[pl.DataFrame, int]:
        """``keep_first`` over these pairs (whole clusters), with the lazy check, on the rows in them
        only: their facts, signatures and at most ``max_shingles`` shingle hashes, read back."""
        nodes, local = np.unique(pairs, return_inverse=True)  # ascending: rank ties break by position
        local = local.reshape(pairs.shape)
        facts = arrays["facts"].rows(nodes)
        best = [inputs.load(nodes, [self.best_by])[self.best_by]] if self.keep == "best" else []
        rank = keep_rank(self.keep, len(nodes), [pl.Series(facts[:, 0])], best)
        sig = arrays["sig"].rows(nodes)
        sets = ShingleSets(_shingles(arrays["shingles"], nodes), len(nodes), self.max_shingles) if self.verify == "jaccard" else None
        rep, checked = keep_first(len(nodes), local, rank, self.checker(local, sig, sets, facts[:, 1]))
        dup = np.flatnonzero(rep != np.arange(len(nodes)))
        if not len(dup):
            return no_duplicates(), checked
        kept = np.unique(rep[dup])
        ids = inputs.load(nodes[kept], ["id"])["id"].gather(np.searchsorted(kept, rep[dup]))
        score = sig_jaccard(sig, np.stack([dup, rep[dup]], axis=1))
        return pl.DataFrame({"pos": nodes[dup], "duplicate_of": ids, "score": score}, schema=no_duplicates().schema), checked

    def checker(self, pairs: np.ndarray, sig: np.ndarray, sets: ShingleSets | None,
                numbers: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """``passes`` for ``keep_first``: which of these candidate pairs (indices) are duplicates."""
        def passes(e: np.ndarray) -> np.ndarray:
            p = pairs[e]
            ok = numbers[p[:, 0]] == numbers[p[:, 1]]
            if self.verify == "none":
                return ok
            if self.verify == "signature" or sets is None:
                return ok & (sig_jaccard(sig, p) >= self.threshold)
            return ok & (sets.jaccard(p) >= self.threshold)
        return passes

    def apply_plan(self, batch: pl.DataFrame, offset: int, plan: Path) -> StepResult:
        """The apply of one part from its plan (the rows to drop, the id each duplicates, the Jaccard)."""
        return self._reject_duplicates(batch, *read_duplicates(plan, batch.height))

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        raise RuntimeError("minhash_dedup applies from its plan: run it in a Pipeline (or curate.globalpass.run_here)")

    def _reject_duplicates(self, batch: pl.DataFrame, duplicate_of: pl.Series, score: pl.Series) -> StepResult:
        """Reject the rows whose ``duplicate_of`` (the kept row's id) is set, with their Jaccard ``score``."""
        reason = pl.format("near duplicate (MinHash, est. Jaccard {}) of {}", pl.col("minhash_jaccard").round(3),
                           pl.col("duplicate_of"))
        return split_duplicates(batch, duplicate_of, reason, "minhash_jaccard", score)


def _cluster_groups(pairs: np.ndarray) -> list[np.ndarray]:
    """The pairs (indices) of each group of whole clusters (connected components) holding about
    ``_ROWS_PER_CHECK`` rows; one group when all the rows in pairs fit in one."""
    nodes, local = np.unique(pairs, return_inverse=True)
    if len(nodes) <= _ROWS_PER_CHECK:
        return [np.arange(len(pairs))]
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    local = local.reshape(pairs.shape)
    graph = coo_matrix((np.ones(len(local), dtype=np.int8), (local[:, 0], local[:, 1])), shape=(len(nodes),) * 2)
    _, label = connected_components(graph, directed=False)
    size = np.bincount(label)
    of_pair = ((np.cumsum(size) - size) // _ROWS_PER_CHECK)[label][local[:, 0]]  # whole clusters, in label order
    order = np.argsort(of_pair, kind="stable")
    _, first = np.unique(of_pair[order], return_index=True)
    return np.split(order, first[1:])


def _shingles(files: PartArrays, nodes: np.ndarray) -> np.ndarray:
    """The shingle keys of these rows (ascending positions), renumbered to their index in
    ``nodes`` and still sorted: at most ``max_shingles`` per row, read part by part."""
    keys, part = [], files.part_of(nodes)
    for k in np.unique(part):
        key = files.array(k)
        start = files.starts[k]
        index = np.full(files.starts[k + 1] - start, -1, dtype=np.int64)  # row in part -> index in nodes
        mine = np.flatnonzero(part == k)
        index[nodes[mine] - start] = mine
        at = index[(key >> np.uint64(32)).astype(np.int64) - start]
        hit = at >= 0
        keys.append((at[hit].astype(np.uint64) << np.uint64(32)) | (key[hit] & np.uint64(0xFFFFFFFF)))
    return np.concatenate(keys) if keys else np.empty(0, dtype=np.uint64)


def split_duplicates(batch: pl.DataFrame, duplicate_of: pl.Series, reason: pl.Expr,
                     score_name: str | None = None, score: pl.Series | None = None) -> StepResult:
    """Reject the rows whose ``duplicate_of`` (the kept row's id) is set; their rejects carry it
    (and ``score_name``) beside ``reason``, which may read both columns."""
    detail = [duplicate_of.alias("duplicate_of")]
    if score_name is not None and score is not None:
        detail.append(score.cast(pl.Float64).alias(score_name))
    result = reject_where(batch.with_columns(detail), duplicate_of.is_not_null(), reason)
    return StepResult(result.kept.drop([c.name for c in detail]), result.rejected)


_NUMBER_SALT = np.uint64(0x6A09E667F3BCC909)  # so that the empty string (all zeros) hashes to non-0
_ZERO_HASH = fmix64(np.array([_NUMBER_SALT]))[0]


def number_hashes(data: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each byte string [begin, end) of ``data``: up to 8 bytes, a bijection of
    its bytes as one integer (``fmix64``); longer ones (rare for numbers), xxh3 of the bytes."""
    size = end - begin
    out = fmix64(short_keys(data, begin, np.minimum(size, 8)) ^ _NUMBER_SALT)
    for k in np.flatnonzero(size > 8).tolist():
        out[k] = xxhash.xxh3_64_intdigest(data[begin[k]:end[k]].tobytes())
    return out


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


def shingle_keys_of(rows: np.ndarray, h: np.ndarray, base: int, cap: int) -> np.ndarray:
    """Each row's shingle set as sorted unique ``row << 32 | hash`` keys, cut to the row's ``cap``
    smallest hashes (a bottom-k sample: 8 bytes x ``cap`` per row at most)."""
    key = ((rows.astype(np.uint64) + np.uint64(base)) << np.uint64(32)) | h.astype(np.uint64)
    key.sort()
    if not len(key):
        return key
    key = key[np.r_[True, key[1:] != key[:-1]]]
    row = key >> np.uint64(32)
    first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    rank = np.arange(len(key)) - np.repeat(first, np.diff(np.r_[first, len(key)]))
    return key[rank < cap]


class ShingleSets:
    """Jaccard of rows' shingle sets from their sorted ``row << 32 | hash`` keys (``shingle_keys``).

    Rows with fewer than ``cap`` shingles hold all of them and compare exactly. A row cut at
    ``cap`` holds every hash up to its largest kept one, so a pair is compared on the hashes up
    to the smaller of the two rows' largest: a uniform sample of the union by hash value, the
    bottom-k estimate of Jaccard (exact when neither row was cut).
    """

    def __init__(self, keys: np.ndarray, n: int, cap: int):
        self.keys = keys
        self.offsets = np.searchsorted(keys, np.arange(n + 1, dtype=np.uint64) << np.uint64(32))
        self.size = np.diff(self.offsets)
        last = keys[np.maximum(self.offsets[1:] - 1, 0)] & np.uint64(0xFFFFFFFF) if len(keys) else np.zeros(n, np.uint64)
        self.cut = np.where(self.size >= cap, last, np.uint64(1 << 32))  # hashes <= cut are all held

    def _upto(self, rows: np.ndarray, m: np.ndarray) -> np.ndarray:
        """How many of each row's hashes are <= m."""
        at = np.searchsorted(self.keys, (rows.astype(np.uint64) << np.uint64(32)) + m, side="right")
        return np.minimum(at, self.offsets[rows + 1]) - self.offsets[rows]

    def jaccard(self, pairs: np.ndarray) -> np.ndarray:
        """Jaccard per pair, vectorised: the smaller side's hashes looked up in the other's with one
        ``searchsorted``, pairs taken in order of the looked-up row (the probes then walk the keys
        in order, not at random) and in chunks of ~1M probes (bounded temporaries)."""
        out = np.zeros(len(pairs), dtype=np.float64)
        if not len(pairs) or not len(self.keys):
            return out
        a, b = pairs[:, 0], pairs[:, 1]
        m = np.minimum(self.cut[a], self.cut[b])
        na, nb = self._upto(a, m), self._upto(b, m)
        sm, ot = np.where(na <= nb, a, b), np.where(na <= nb, b, a)
        order = np.argsort(ot, kind="stable")
        count = np.minimum(na, nb)[order]
        ends = np.searchsorted(np.cumsum(count), np.arange(1, count.sum() // _PROBES + 1) * _PROBES)
        for lo, hi in zip(np.r_[0, ends].tolist(), np.r_[ends, len(order)].tolist(), strict=True):
            idx, c = order[lo:hi], count[lo:hi]
            if not len(idx):
                continue
            pair = np.repeat(np.arange(len(idx)), c)
            pos = np.repeat(self.offsets[sm[idx]], c) + ramp(c)
            probe = (np.repeat(ot[idx], c).astype(np.uint64) << np.uint64(32)) | (self.keys[pos] & np.uint64(0xFFFFFFFF))
            at = np.minimum(np.searchsorted(self.keys, probe), len(self.keys) - 1)
            inter = np.bincount(pair, weights=self.keys[at] == probe, minlength=len(idx))
            union = na[idx] + nb[idx] - inter
            out[idx] = np.divide(inter, union, out=np.zeros(len(idx)), where=union > 0)
        return out


def keep_first(n: int, pairs: np.ndarray, rank: np.ndarray,
               passes: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, int]:
    """Each row's kept row (itself when kept) and how many pairs were checked.

    The rule of the plain loop (query the kept rows, then insert; keep the first), over candidate
    pairs: in ``rank`` order, a row is dropped when a candidate it pairs with is kept and
    ``passes`` (given indices into ``pairs``) says the two are within the threshold; otherwise it
    is kept. So every dropped row is within the threshold of the row it names, and a chain
    A~B~C with A and C far apart keeps C. Rows are decided in rounds, all rows whose
    better-ranked candidates are all decided at once; a pair is checked only when its better row
    is kept and the other still undecided (pairs into a dropped row are never checked), so each
    pair is touched once.
    """
    rep = np.arange(n)
    if n == 0 or len(pairs) == 0:
        return rep, 0
    flip = rank[pairs[:, 0]] > rank[pairs[:, 1]]
    u = np.where(flip, pairs[:, 1], pairs[:, 0])
    v = np.where(flip, pairs[:, 0], pairs[:, 1])
    order = np.argsort(u, kind="stable")
    u, v = u[order], v[order]
    start = np.searchsorted(u, np.arange(n + 1))
    waiting = np.bincount(v, minlength=n)  # better-ranked candidates not yet decided or checked
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, 2 dropped
    ready = np.flatnonzero((waiting == 0) & (np.diff(start) > 0))
    checked = 0
    while len(ready):
        state[ready] = 1
        out = _edges(start, ready)
        live = out[state[v[out]] == 0]
        checked += len(live)
        hit = live[passes(order[live])] if len(live) else live
        dropped = np.empty(0, dtype=np.int64)
        if len(hit):  # each hit row names its best-ranked kept candidate
            o = np.lexsort((rank[u[hit]], v[hit]))
            hv, hu = v[hit][o], u[hit][o]
            first = np.r_[True, hv[1:] != hv[:-1]]
            dropped = hv[first]
            rep[dropped] = hu[first]
            state[dropped] = 2
        done = np.concatenate([out, _edges(start, dropped)])
        touched, times = np.unique(v[done], return_counts=True)
        waiting[touched] -= times
        ready = touched[(waiting[touched] == 0) & (state[touched] == 0)]
    return rep, checked


def _edges(start: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Indices of the edges of ``rows`` in a CSR layout with row starts ``start``."""
    count = start[rows + 1] - start[rows]
    total = int(count.sum())
    return np.repeat(start[rows] - np.cumsum(count) + count, count) + np.arange(total)


def representatives(n: int, pairs: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the row its cluster keeps: connected components of the pairs (semantic_dedup)."""
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
