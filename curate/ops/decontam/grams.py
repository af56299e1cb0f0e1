"""Decontamination's kernel: a batch's tokens hashed once, its n-gram hashes by array arithmetic,
and membership in a benchmark's gram set without a Python set (or loop) per row.

``Tokens`` hashes a batch's lower-cased ``\\w+`` tokens straight from the text's bytes, as
:class:`curate.text.TokenBatch` does (``word_token_hashes``: each distinct token hashed once, no
Python string per token), and gives the same n-gram hashes (``gram_hash``): every window of one
width from contiguous slices of one prefix-sum array, or windows at chosen positions only.
``GramSet`` answers "which benchmark items hold this hash" for millions of hashes: a 2**24-bit
filter rejects almost every window with one array lookup, and only the few that pass are
searched in the sorted (hash, item) table. The matchers compare raw hashes (before
``fmix64``; the index holds ``unfmix64`` of the stored ones), so no window of a batch is finalised.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from curate.text import _BASE, _BASE_INV, fmix64, tokenize_series, word_token_hashes

FILTER_BITS = 24  # 16 MiB of bools: ~1% of non-member windows pass for 200k benchmark grams
_SHIFT = np.uint64(64 - FILTER_BITS)
_M1_INV = np.uint64(pow(0xFF51AFD7ED558CCD, -1, 1 << 64))  # inverses of fmix64's two multipliers
_M2_INV = np.uint64(pow(0xC4CEB9FE1A85EC53, -1, 1 << 64))
_S33 = np.uint64(33)
_TOP16 = np.uint64(48)
_powers_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B**k and B**-k (mod 2**64) for k < n, cached and grown by doubling across batches."""
    have = _powers_cache.get("pq")  # one entry, replaced whole: threads never see p and q of two sizes
    if have is None or len(have[0]) < n:
        size = max(n, 2 * len(have[0]) if have is not None else 1 << 16)
        with np.errstate(over="ignore"):
            p = np.full(size, _BASE, dtype=np.uint64)
            p[0] = 1
            np.cumprod(p, out=p)
            q = np.full(size, _BASE_INV, dtype=np.uint64)
            q[0] = 1
            np.cumprod(q, out=q)
        have = _powers_cache["pq"] = (p, q)
    return have


def unfmix64(h: np.ndarray) -> np.ndarray:
    """The inverse of ``fmix64``: a stored n-gram hash back to its raw polynomial, the form the
    kernel queries (a bijection, so equal raw values mean equal n-gram hashes; saves ``fmix64``
    on every window of a batch)."""
    h = h.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        h ^= h >> _S33
        h *= _M2_INV
        h ^= h >> _S33
        h *= _M1_INV
        h ^= h >> _S33
    return h


class Tokens:
    """One batch's tokens: per-token hash, row offsets, and n-gram hashes on demand."""

    def __init__(self, texts: pl.Series):
        self._texts = texts
        self._lists: pl.Series | None = None
        self._joined: pl.Series | None = None
        # each token hashed from the text's bytes, no Python string per token (n-gram matching of
        # long responses needs only the hashes; the strings are cut when exact or fuzzy asks)
        self.lengths, self.hashes = word_token_hashes(texts)
        self.offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        n = len(self.hashes)
        powers, _ = _powers(n + 1)
        self._prefix = np.zeros(n + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum(self.hashes * powers[:n], out=self._prefix[1:])
        self._row_end: np.ndarray | None = None

    @property
    def lists(self) -> pl.Series:
        """Each row's tokens as strings (``tokenize_series``): cut on first use."""
        if self._lists is None:
            self._lists = tokenize_series(self._texts).rechunk()
        return self._lists

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def row_end(self) -> np.ndarray:
        """For each flat token, the flat index where its row ends."""
        if self._row_end is None:
            self._row_end = np.repeat(self.offsets[1:], self.lengths)
        return self._row_end

    def rows_of(self, pos: np.ndarray) -> np.ndarray:
        """The row of each flat token position."""
        return np.searchsorted(self.offsets, pos, side="right") - 1

    def windows(self, n: int, at: np.ndarray | None = None, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(flat start, hash) of every n-token window inside one row, or of those starting at ``at``;
        ``raw``: the hash before ``fmix64`` (see ``unfmix64``)."""
        total = len(self.hashes)
        if total < n:
            return np.empty(0, np.int64), np.empty(0, np.uint64)
        _, inv = _powers(total + 1)
        if at is None:
            pos = np.flatnonzero(np.arange(n, total + 1, dtype=np.int64) <= self.row_end[: total - n + 1])
        else:
            at = at.astype(np.int64, copy=False)
            pos = at[self.locate(at, n)[1]] if len(at) else at
        with np.errstate(over="ignore"):
            h = (self._prefix[pos + n] - self._prefix[pos]) * inv[pos]
        return pos, h if raw else fmix64(h)

    def raw_every(self, n: int) -> np.ndarray:
        """Raw hash (before ``fmix64``) of the n tokens starting at every flat position 0..len-n,
        row ends ignored: contiguous slices, no index arrays. ``locate`` tells which lie in one row."""
        total = len(self.hashes)
        if total < n:
            return np.empty(0, np.uint64)
        _, inv = _powers(total + 1)
        with np.errstate(over="ignore"):
            return (self._prefix[n:] - self._prefix[: total + 1 - n]) * inv[: total + 1 - n]

    def locate(self, pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The row of each flat start, and whether its n-token window ends inside that row."""
        rows = self.rows_of(pos)
        return rows, pos + n <= self.offsets[rows + 1]

    def short_rows(self, n: int, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(flat start, hash) of one whole-row window for each row with 1..n-1 tokens."""
        rows = np.flatnonzero((self.lengths > 0) & (self.lengths < n))
        pos = self.offsets[rows]
        end = pos + self.lengths[rows]
        _, inv = _powers(len(self.hashes) + 1)
        with np.errstate(over="ignore"):
            h = (self._prefix[end] - self._prefix[pos]) * inv[pos]
        return pos, h if raw else fmix64(h)

    @property
    def joined(self) -> pl.Series:
        """Each row's normalised text: its tokens joined by one space (made on first use)."""
        if self._joined is None:
            self._joined = self.lists.list.join(" ").fill_null("")
        return self._joined

    def normalised(self, rows: np.ndarray) -> list[str]:
        """The normalised text (tokens joined by one space) of the given rows."""
        return self.joined.gather(rows).to_list()

    def exact_keys(self) -> pl.Series:
        """Each row's tokens joined without digits and underscores: the lower-cased text stripped of
        ``[\\W\\d_]`` (``benchmarks.exact_key``), from the tokens already cut (a regex over far less text)."""
        return self.lists.list.join("").str.replace_all(r"[\d_]+", "")

    def char_lengths(self) -> np.ndarray:
        """Length of each row's normalised text (tokens joined by one space)."""
        return self.joined.str.len_chars().to_numpy().astype(np.int64)

    def holding(self, values: np.ndarray) -> np.ndarray:
        """Flat positions of the tokens whose hash is one of ``values`` (a few): a 16-bit prefix
        filter passes ~len(values) / 65,536 of the tokens to ``np.isin``."""
        if not len(values) or not len(self.hashes):
            return np.empty(0, np.int64)
        prefix = np.zeros(1 << 16, dtype=np.bool_)
        prefix[values >> _TOP16] = True
        cand = np.flatnonzero(prefix[self.hashes >> _TOP16])
        return cand[np.isin(self.hashes[cand], values)]


class GramSet:
    """Sorted (gram hash, item) pairs behind a bit filter: which items hold each queried hash."""

    def __init__(self, hashes: np.ndarray, items: np.ndarray, *, presorted: bool = False):
        """``presorted``: the pairs are already sorted by (hash, item), as ``distinct_pairs`` gives."""
        if not presorted:
            order = np.lexsort((items, hashes))
            hashes, items = hashes[order], items[order]
        self.hashes = np.ascontiguousarray(hashes.astype(np.uint64, copy=False))
        self.items = np.ascontiguousarray(items.astype(np.int64, copy=False))
        # each distinct hash once, and where its run of items starts: one searchsorted per query
        new = np.ones(len(self.hashes), dtype=np.bool_)
        np.not_equal(self.hashes[1:], self.hashes[:-1], out=new[1:])
        self._keys = self.hashes[new]
        self._starts = np.append(np.flatnonzero(new), len(self.hashes))
        self.filter = np.zeros(1 << FILTER_BITS, dtype=np.bool_)
        self.filter[self.hashes >> _SHIFT] = True

    def lookup(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query position, item) for every item holding each query hash, by query position."""
        cand = np.flatnonzero(self.filter[query >> _SHIFT])
        if not len(cand):
            return cand, cand
        hq = query[cand]
        at = np.searchsorted(self._keys, hq)
        np.minimum(at, len(self._keys) - 1, out=at)
        keep = self._keys[at] == hq
        cand, at = cand[keep], at[keep]
        lo = self._starts[at]
        count = self._starts[at + 1] - lo
        if len(count) and count.max() == 1:  # every hash held by one item: no expansion
            return cand, self.items[lo]
        qpos = np.repeat(cand, count)
        first = np.repeat(lo - (np.cumsum(count) - count), count)
        return qpos, self.items[first + np.arange(len(qpos))]


def distinct_pairs(hashes: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (hash, item) pairs, sorted by hash then item (one lexsort, no 2-D unique)."""
    order = np.lexsort((items, hashes))
    h, it = hashes[order].astype(np.uint64, copy=False), items[order].astype(np.int64, copy=False)
    keep = np.ones(len(h), dtype=np.bool_)
    keep[1:] = (h[1:] != h[:-1]) | (it[1:] != it[:-1])
    return h[keep], it[keep]
