"""Text normalisation and vectorised n-gram hashing shared by decontamination and MinHash dedup.

Text is lower-cased and cut into word tokens (``\\w+``), so whitespace, LaTeX spacing and
punctuation do not change a text's n-grams. An n-gram's 64-bit hash is a polynomial over its
tokens' xxh3-64 hashes, ``fmix64(sum_j tokhash(t_j) * B**j mod 2**64)``: computed for every
window of a batch at once with numpy prefix sums (no Python call per n-gram), and stable
across runs, machines and library versions (xxh3 is a fixed spec). ``gram_hash`` is the same
function for one n-gram, the reference the vectorised path is tested against.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import polars as pl
import xxhash

TOKEN_PATTERN = r"\w+"
_TOKEN_RE = TOKEN_RE = re.compile(TOKEN_PATTERN)
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64
_BASE_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_M64 = (1 << 64) - 1


def normalise(text: str) -> str:
    """Lower-cased word tokens joined by single spaces (what fuzzy matching compares)."""
    return " ".join(tokens(text))


def tokens(text: str) -> list[str]:
    """Lower-cased ``\\w+`` tokens of one text."""
    return _TOKEN_RE.findall(text.lower())


def units(text: str, unit: str = "word") -> list[str]:
    """The tokens (``word``) or the characters of the normalised text (``char``) n-grams are made of."""
    return tokens(text) if unit == "word" else list(normalise(text))


def token_spans(text: str) -> list[tuple[int, int]]:
    """Character (start, end) of each token in the original text (for reporting match spans)."""
    return [m.span() for m in _TOKEN_RE.finditer(text)]


def tokenize_series(texts: pl.Series) -> pl.Series:
    """Lower-cased ``\\w+`` tokens of every text, as a list column (polars, multi-threaded)."""
    return texts.fill_null("").str.to_lowercase().str.extract_all(TOKEN_PATTERN)


def token_hash(token: str) -> int:
    return xxhash.xxh3_64_intdigest(token.encode("utf-8", "surrogatepass"))


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (an avalanching bijection), element-wise, wrapping."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def gram_hash(gram: Sequence[str]) -> int:
    """64-bit hash of one n-gram (sequence of lower-cased tokens): the reference definition."""
    acc, power = 0, 1
    for tok in gram:
        acc = (acc + token_hash(tok) * power) & _M64
        power = (power * int(_BASE)) & _M64
    return _fmix64_int(acc)


class TokenBatch:
    """The tokens of a batch of texts as one flat array of 64-bit token hashes plus row offsets.

    ``windows(n)`` hashes every n-token window that lies inside one row (a row shorter than
    ``n`` gives one window: all its tokens) without a Python loop per window.
    """

    def __init__(self, texts: pl.Series | Sequence[str], unit: str = "word"):
        series = texts if isinstance(texts, pl.Series) else pl.Series(list(texts), dtype=pl.String)
        toks = tokenize_series(series)
        if unit == "char":  # characters of the normalised text (tokens joined by one space)
            toks = toks.list.join(" ").str.split("")
        elif unit != "word":
            raise ValueError(f"unit must be word or char, not {unit!r}")
        lengths = toks.list.len().fill_null(0).to_numpy().astype(np.int64)
        self.lengths = lengths
        self.offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        flat = toks.explode().drop_nulls()
        uniq = flat.unique()
        # one xxh3 call per distinct token, then a hash join back onto the flat token column
        table = pl.DataFrame({"t": uniq, "h": pl.Series([token_hash(t) for t in uniq.to_list()], dtype=pl.UInt64)})
        self.hashes = (pl.DataFrame({"t": flat}).join(table, on="t", how="left", maintain_order="left")["h"]
                       .to_numpy().astype(np.uint64, copy=False))
        n = len(self.hashes)
        with np.errstate(over="ignore"):
            powers = np.empty(n + 1, dtype=np.uint64)
            powers[0] = 1
            if n:
                powers[1:] = _BASE
                np.cumprod(powers, out=powers)
            inv = np.empty(n + 1, dtype=np.uint64)
            inv[0] = 1
            if n:
                inv[1:] = _BASE_INV
                np.cumprod(inv, out=inv)
            prefix = np.zeros(n + 1, dtype=np.uint64)
            np.cumsum(self.hashes * powers[:n], out=prefix[1:])
        self._prefix, self._inv = prefix, inv

    def __len__(self) -> int:
        return len(self.lengths)

    def windows(self, n: int, *, short_rows: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, start token index within the row, 64-bit hash) of every n-token window.

        Rows with fewer than ``n`` tokens give one whole-row window when ``short_rows``
        (rows without tokens give none); ``start`` counts tokens from the row's start.
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        counts = np.maximum(self.lengths - n + 1, 0)
        if short_rows:
            counts = np.where((self.lengths > 0) & (self.lengths < n), 1, counts)
        rows = np.repeat(np.arange(len(self.lengths)), counts)
        first = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])
        start = np.arange(len(rows), dtype=np.int64) - first[rows]
        begin = self.offsets[rows] + start
        width = np.minimum(self.lengths[rows], n)
        return rows, start, self.hash_spans(begin, begin + width)

    def hash_spans(self, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Hashes of flat token ranges [begin, end) (same definition as ``gram_hash``)."""
        with np.errstate(over="ignore"):
            return fmix64((self._prefix[end] - self._prefix[begin]) * self._inv[begin])

    def row_windows_of_length(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, start, hash) of every window of exactly ``m`` tokens (no short-row rule)."""
        return self.windows(m, short_rows=False)
