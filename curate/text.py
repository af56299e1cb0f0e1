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
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

TOKEN_PATTERN = r"\w+"
_TOKEN_RE = TOKEN_RE = re.compile(TOKEN_PATTERN)
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64
_BASE_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_M64 = (1 << 64) - 1
_LOW_BYTES = np.array([0] + [(1 << (8 * k)) - 1 for k in range(1, 8)] + [_M64], dtype=np.uint64)


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


def word_token_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(tokens per row, ``token_hash`` of each token, row after row): the tokens of
    ``tokenize_series``, found as runs of word characters in the lower-cased UTF-8 bytes with numpy
    and hashed once per distinct token (no Python string per token: ~2.5x cheaper than the regex)."""
    data, offsets = utf8_buffer(texts.fill_null("").str.to_lowercase())
    starts, ends = byte_runs(class_bytes(data, _ascii_word(data), r"^\w$"), offsets)
    return np.diff(np.searchsorted(starts, offsets)), _hash_tokens(data, starts, ends)


def utf8_buffer(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string column, one array, and each row's (start, end) offsets into it."""
    arr = texts.to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    if len(arr) == 0:
        return np.empty(0, np.uint8), np.zeros(1, np.int64)
    offsets = np.frombuffer(arr.buffers()[1], np.int64, len(arr) + 1, arr.offset * 8)
    start, size = int(offsets[0]), int(offsets[-1] - offsets[0])
    data = np.frombuffer(arr.buffers()[2], np.uint8, size, start) if size else np.empty(0, np.uint8)
    return data, offsets - start


def _ascii_word(data: np.ndarray) -> np.ndarray:
    """The ASCII bytes ``\\w`` matches: 0-9, a-z, _, A-Z (range tests: a lookup table indexes with int64)."""
    word = (data - np.uint8(48)) < 10
    word |= (data - np.uint8(97)) < 26
    word |= data == 95
    word |= (data - np.uint8(65)) < 26
    return word


def class_bytes(data: np.ndarray, ascii: np.ndarray, pattern: str) -> np.ndarray:
    """Which bytes of UTF-8 ``data`` belong to a character in a class: ``ascii`` says it for ASCII
    bytes; every other character (all bytes of it) is classed by polars' regex ``pattern`` (e.g.
    ``^\\w$``: the engine ``tokenize_series`` uses), asked once per distinct character."""
    lead = np.flatnonzero(data >= 0xC0)  # first byte of each multi-byte character
    if len(lead):
        first = data[lead].astype(np.uint32)
        width = 2 + (first >= 0xE0).astype(np.int64) + (first >= 0xF0)
        code = first & np.where(width == 2, 0x1F, np.where(width == 3, 0x0F, 0x07)).astype(np.uint32)
        tail = np.concatenate([data, np.zeros(3, np.uint8)])
        for k in (1, 2, 3):
            more = (code << np.uint32(6)) | (tail[np.minimum(lead + k, len(data))] & np.uint32(0x3F))
            code = np.where(width > k, more, code)
        chars, which = np.unique(code, return_inverse=True)
        member = pl.Series([chr(c) for c in chars.tolist()], dtype=pl.String).str.contains(pattern).to_numpy()
        ascii[np.repeat(lead, width) + ramp(width)] = np.repeat(member[which], width)
    return ascii


def byte_runs(word: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte offsets of each run of ``True`` bytes, runs cut at row borders."""
    edges = np.flatnonzero(np.diff(word, prepend=False, append=False))
    starts, ends = edges[0::2], edges[1::2]
    inner = offsets[1:-1]
    inner = inner[(inner > 0) & (inner < len(word))]
    cut = inner[word[inner] & word[inner - 1]]  # a run that goes on into the next row
    if len(cut):
        cut = cut[np.r_[True, cut[1:] != cut[:-1]]]
        starts = np.insert(starts, np.searchsorted(starts, cut), cut)
        ends = np.insert(ends, np.searchsorted(ends, cut), cut)
    return starts, ends


def _hash_tokens(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """xxh3-64 of each token's bytes, hashed once per distinct token: a token of up to 8 bytes is
    known by those bytes as one uint64 (no token byte is 0), a longer one by its bytes."""
    out = np.empty(len(starts), dtype=np.uint64)
    if not len(starts):
        return out
    size = ends - starts
    short = np.flatnonzero(size <= 8)
    keys = np.ascontiguousarray(short_keys(data, starts[short], size[short]))
    out[short] = _distinct(pa.Array.from_buffers(pa.uint64(), len(keys), [None, pa.py_buffer(keys)]), _short_hashes)
    long = np.flatnonzero(size > 8)
    if len(long):
        n = size[long]
        offs = np.zeros(len(long) + 1, np.int64)
        np.cumsum(n, out=offs[1:])
        packed = data[np.repeat(starts[long], n) + ramp(n)]
        tokens = pa.Array.from_buffers(pa.large_binary(), len(long), [None, pa.py_buffer(offs), pa.py_buffer(packed)])
        out[long] = _distinct(tokens, _long_hashes)
    return out


def short_keys(data: np.ndarray, starts: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The bytes [start, start + size) (size <= 8) as one little-endian uint64 each, zero above:
    a key that tells apart byte strings without a 0 byte."""
    padded = np.concatenate([data, np.zeros(8, np.uint8)])
    eight = np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))  # 8 bytes from each offset
    return eight[starts] & _LOW_BYTES[size]


def _short_token_hash(key: int) -> int:
    return xxhash.xxh3_64_intdigest(key.to_bytes(8, "little").rstrip(b"\0"))


# short-token keys hashed so far in this process and their hashes, sorted by key: a word seen in
# one batch is looked up, not hashed again in Python, in the next (a corpus reuses a few tens of
# thousands of short words). Replaced whole, never changed in place: threads read it as they go.
_SHORT_SEEN: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.uint64), np.empty(0, np.uint64))
SHORT_SEEN_MAX = 1 << 20  # 16 MB of keys and hashes at most


def _short_hashes(keys: pa.Array) -> np.ndarray:
    """``_short_token_hash`` of each distinct key: looked up in ``_SHORT_SEEN``, and only the ones
    not there are hashed (and added while the table has room)."""
    global _SHORT_SEEN
    distinct = int_values(keys)
    seen_keys, seen_hashes = _SHORT_SEEN
    at = np.minimum(np.searchsorted(seen_keys, distinct), max(len(seen_keys) - 1, 0))
    known = seen_keys[at] == distinct if len(seen_keys) else np.zeros(len(distinct), dtype=np.bool_)
    hashes = np.empty(len(distinct), dtype=np.uint64)
    hashes[known] = seen_hashes[at[known]]
    new = np.sort(distinct[~known])
    new_hashes = np.array([_short_token_hash(k) for k in new.tolist()], dtype=np.uint64)
    hashes[~known] = new_hashes[np.searchsorted(new, distinct[~known])]
    if len(new) and len(seen_keys) + len(new) <= SHORT_SEEN_MAX:
        where = np.searchsorted(seen_keys, new)
        _SHORT_SEEN = (np.insert(seen_keys, where, new), np.insert(seen_hashes, where, new_hashes))
    return hashes


def _long_hashes(keys: pa.Array) -> np.ndarray:
    """xxh3-64 of each distinct token longer than 8 bytes."""
    return np.array([xxhash.xxh3_64_intdigest(k) for k in keys.to_pylist()], dtype=np.uint64)


def _distinct(keys: pa.Array, hashes_of: Callable[[pa.Array], np.ndarray]) -> np.ndarray:
    """The hash of each key, ``hashes_of`` asked once per distinct key (arrow's dictionary
    encoding: one hash table on this thread, ~3x cheaper in CPU than polars' unique + replace)."""
    encoded = keys.dictionary_encode()
    return hashes_of(encoded.dictionary)[int_values(encoded.indices)]


def int_values(values: pa.Array) -> np.ndarray:
    """A null-free Arrow integer array as a numpy view of its buffer: pyarrow's own ``to_numpy``
    imports pandas (0.2-0.5 s, once a process) even for a zero-copy view."""
    t = values.type
    if not pa.types.is_integer(t) or values.null_count:
        raise ValueError(f"int_values: expected integers without nulls, got {t} with {values.null_count} null(s)")
    width = t.bit_width // 8
    kind = "i" if pa.types.is_signed_integer(t) else "u"
    return np.frombuffer(values.buffers()[1], f"<{kind}{width}", len(values), values.offset * width)


def ramp(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for each count c, concatenated."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


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
        if unit == "word":
            lengths, self.hashes = word_token_hashes(series)
        elif unit == "char":  # characters of the normalised text (tokens joined by one space)
            toks = tokenize_series(series).list.join(" ").str.split("")
            lengths = toks.list.len().fill_null(0).to_numpy().astype(np.int64)
            flat = toks.explode().drop_nulls()
            uniq = flat.unique()
            # one xxh3 call per distinct token, then a hash join back onto the flat token column
            table = pl.DataFrame({"t": uniq, "h": pl.Series([token_hash(t) for t in uniq.to_list()], dtype=pl.UInt64)})
            self.hashes = (pl.DataFrame({"t": flat}).join(table, on="t", how="left", maintain_order="left")["h"]
                           .to_numpy().astype(np.uint64, copy=False))
        else:
            raise ValueError(f"unit must be word or char, not {unit!r}")
        self.lengths = lengths.astype(np.int64, copy=False)
        self.offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
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
