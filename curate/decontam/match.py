"""Matchers of training texts against benchmark test items, each vectorised over a batch.

``BenchmarkIndex`` holds every selected benchmark's items once and answers, for a batch of texts:

- ``ngram``: shared word n-grams (hashed, sorted arrays + ``searchsorted``; no Python loop per
  n-gram). Score: the fraction of the benchmark item's distinct n-grams found in the text.
  Items shorter than n tokens count as one n-gram made of all their tokens.
- ``exact``: equal text after lower-casing and stripping non-word characters and digits (Light-R1:
  catches copies with changed numbers). Score 1.
- ``fuzzy``: rapidfuzz normalised Indel ratio on the normalised texts, run only on the few
  candidates that share word 3-grams with the text (an inverted index, not all pairs).

Each returns one best match per matched row as a polars frame
``row, item, score, start, end`` (``start``/``end``: token range in the text, or null).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import xxhash

from curate.decontam.benchmarks import Benchmark, exact_key_hash
from curate.decontam.text import TokenBatch, normalise

FUZZY_BLOCK_N = 3  # n of the word n-grams that pick fuzzy candidates
FUZZY_BLOCK_MAX_ITEMS = 20  # a 3-gram held by more items than this ("what is the") picks no candidates
FUZZY_CANDIDATES = 5  # candidates per text scored with rapidfuzz
_MATCH_SCHEMA = {"row": pl.Int64, "item": pl.Int64, "score": pl.Float64, "start": pl.Int64, "end": pl.Int64}


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=_MATCH_SCHEMA)


class _GramIndex:
    """Sorted (gram hash, item) pairs for one n, with each item's distinct-gram count."""

    def __init__(self, hashes: np.ndarray, items: np.ndarray, n_items: int, short_lengths: np.ndarray):
        pairs = np.unique(np.stack([hashes.astype(np.uint64), items.astype(np.uint64)], axis=1), axis=0)
        self.hashes = np.ascontiguousarray(pairs[:, 0])
        self.items = pairs[:, 1].astype(np.int64)
        self.item_grams = np.bincount(self.items, minlength=n_items)
        self.short_lengths = np.unique(short_lengths)  # token counts of items shorter than n
        self._table: pl.DataFrame | None = None

    def lookup(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query position, item) for every benchmark item holding each query hash (a hash join)."""
        if self._table is None:
            self._table = pl.DataFrame({"h": self.hashes, "item": self.items})
        hits = (pl.DataFrame({"h": query, "q": np.arange(len(query), dtype=np.int64)})
                .join(self._table, on="h", how="inner").sort("q"))
        return hits["q"].to_numpy(), hits["item"].to_numpy()


class BenchmarkIndex:
    """All selected benchmarks' items under one global item numbering."""

    def __init__(self, benchmarks: Sequence[Benchmark]):
        if not benchmarks:
            raise ValueError("no benchmarks selected")
        self.benchmarks = list(benchmarks)
        self.bench_of: list[str] = []
        self.item_ids: list[str] = []
        self._text_items: list[int] = []  # global ids of items that have text
        texts: list[str] = []
        for b in self.benchmarks:
            base = len(self.item_ids)
            self.bench_of += [b.name] * len(b)
            self.item_ids += b.ids
            if b.has_text:
                self._text_items += list(range(base, base + len(b)))
                texts += b.problems or []
        self.n_items = len(self.item_ids)
        self._text_items_arr = np.array(self._text_items, dtype=np.int64)
        self._texts = texts
        self._tokens = TokenBatch(texts) if texts else None
        self._gram_indexes: dict[int, _GramIndex] = {}
        self._exact: dict[int, int] | None = None
        self._normalised: list[str] | None = None

    def text_of(self, item: int) -> str | None:
        """The problem text of a global item (None for fingerprint-only sets)."""
        if not hasattr(self, "_text_pos"):
            self._text_pos = {g: k for k, g in enumerate(self._text_items)}
        k = self._text_pos.get(item)
        return None if k is None else self._texts[k]

    # --- n-gram overlap ----------------------------------------------------------------------
    def _gram_index(self, n: int) -> _GramIndex:
        if n not in self._gram_indexes:
            hashes, items, short = [np.empty(0, np.uint64)], [np.empty(0, np.int64)], [np.empty(0, np.int64)]
            if self._tokens is not None:
                rows, _, h = self._tokens.windows(n)
                hashes.append(h)
                items.append(self._text_items_arr[rows])
                lens = self._tokens.lengths
                short.append(lens[(lens > 0) & (lens < n)])
            base = 0
            for b in self.benchmarks:
                if not b.has_text:
                    if n not in b.grams:
                        raise ValueError(f"benchmark {b.name} ships as a fingerprint with n-grams "
                                         f"of {sorted(b.grams)} tokens only, not {n}")
                    g, it = b.grams[n]
                    hashes.append(g)
                    items.append(it.astype(np.int64) + base)
                    lens = b.n_tokens.astype(np.int64)
                    short.append(lens[(lens > 0) & (lens < n)])
                base += len(b)
            self._gram_indexes[n] = _GramIndex(np.concatenate(hashes), np.concatenate(items), self.n_items,
                                               np.concatenate(short))
        return self._gram_indexes[n]

    def ngram(self, texts: pl.Series, n: int, min_overlap: float) -> pl.DataFrame:
        """Best item per text by the share of its n-grams found in the text (>= min_overlap)."""
        index = self._gram_index(n)
        batch = TokenBatch(texts)
        parts = [batch.windows(n, short_rows=False)]
        parts += [batch.row_windows_of_length(int(m)) for m in index.short_lengths]
        rows = np.concatenate([p[0] for p in parts])
        starts = np.concatenate([p[1] for p in parts])
        hashes = np.concatenate([p[2] for p in parts])
        widths = np.concatenate([np.full(len(p[0]), n if k == 0 else int(index.short_lengths[k - 1]))
                                 for k, p in enumerate(parts)])
        qpos, items = index.lookup(hashes)
        if len(qpos) == 0:
            return _empty()
        hits = pl.DataFrame({"row": rows[qpos], "item": items, "h": hashes[qpos],
                             "start": starts[qpos], "end": starts[qpos] + widths[qpos]})
        per_item = (hits.group_by("row", "item")
                    .agg(pl.col("h").n_unique().alias("found"), pl.col("start").min(), pl.col("end").max()))
        total = index.item_grams[per_item["item"].to_numpy()]
        own = (pl.DataFrame({"row": parts[0][0], "h": parts[0][2]}).group_by("row").agg(pl.col("h").n_unique().alias("own")))
        per_item = (per_item.with_columns((pl.col("found") / pl.Series(total)).alias("score"), pl.Series("total", total))
                    .join(own, on="row", how="left")
                    # rank candidates by Jaccard of the n-gram sets, so a multi-part problem is matched to
                    # the item it equals, not to an earlier part it also contains entirely
                    .with_columns((pl.col("found") / (pl.col("total") + pl.col("own").fill_null(0) - pl.col("found")))
                                  .alias("rank")))
        return _best(per_item.filter(pl.col("score") >= min_overlap), by="rank")

    # --- exact after stripping non-word characters and digits --------------------------------
    def exact(self, texts: pl.Series, min_chars: int) -> pl.DataFrame:
        if self._exact is None:
            self._exact = {}
            for k, text in zip(self._text_items, self._texts, strict=True):
                self._exact.setdefault(exact_key_hash(text), k)
            base = 0
            for b in self.benchmarks:
                if not b.has_text and b.exact_hashes is not None:
                    for j, h in enumerate(b.exact_hashes.tolist()):
                        self._exact.setdefault(int(h), base + j)
                base += len(b)
        keys = texts.fill_null("").str.to_lowercase().str.replace_all(r"[\W\d_]+", "")
        rows, items = [], []
        for r, key in enumerate(keys.to_list()):
            if len(key) < min_chars:
                continue
            item = self._exact.get(xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogatepass")))
            if item is not None:
                rows.append(r)
                items.append(item)
        if not rows:
            return _empty()
        return pl.DataFrame({"row": rows, "item": items, "score": [1.0] * len(rows), "start": None, "end": None},
                            schema=_MATCH_SCHEMA)

    # --- fuzzy (rapidfuzz) on indexed candidates ---------------------------------------------
    def fuzzy(self, texts: pl.Series, threshold: float) -> pl.DataFrame:
        """Best item per text with normalised Indel ratio >= threshold (0-1)."""
        try:
            from rapidfuzz import fuzz
        except ImportError:  # pragma: no cover
            raise ValueError("the fuzzy method needs rapidfuzz: pip install 'curate-cot[dedup]'") from None
        if self._tokens is None:
            return _empty()
        if self._normalised is None:
            self._normalised = [normalise(t) for t in self._texts]
            self._global_to_text = {g: k for k, g in enumerate(self._text_items)}
        index = self._gram_index_text_only(FUZZY_BLOCK_N)
        batch = TokenBatch(texts)
        rows, _, hashes = batch.windows(FUZZY_BLOCK_N)
        qpos, items = index.lookup(hashes)
        if len(qpos) == 0:
            return _empty()
        cands = (pl.DataFrame({"row": rows[qpos], "item": items})
                 .group_by("row", "item").len()
                 .sort(["row", "len", "item"], descending=[False, True, False])
                 .group_by("row", maintain_order=True).head(FUZZY_CANDIDATES))
        query_text = texts.fill_null("").to_list()
        norm_cache: dict[int, str] = {}
        out_rows, out_items, out_scores = [], [], []
        cutoff = threshold * 100
        for row, item in cands.select("row", "item").iter_rows():
            q = norm_cache.get(row)
            if q is None:
                q = norm_cache[row] = normalise(query_text[row])
            target = self._normalised[self._global_to_text[item]]
            lq, lt = len(q), len(target)
            if lq + lt == 0 or 200 * min(lq, lt) / (lq + lt) < cutoff:  # Indel ratio bound from lengths
                continue
            score = fuzz.ratio(q, target, score_cutoff=cutoff)
            if score:
                out_rows.append(row)
                out_items.append(item)
                out_scores.append(score / 100)
        if not out_rows:
            return _empty()
        found = pl.DataFrame({"row": out_rows, "item": out_items, "score": out_scores, "start": None, "end": None},
                             schema=_MATCH_SCHEMA)
        return _best(found)

    def _gram_index_text_only(self, n: int) -> _GramIndex:
        key = -n  # separate cache slot: fingerprint-only items are not fuzzy candidates
        if key not in self._gram_indexes:
            assert self._tokens is not None
            rows, _, h = self._tokens.windows(n)
            pairs = pl.DataFrame({"h": h, "item": self._text_items_arr[rows]}).unique()
            pairs = pairs.filter(pl.len().over("h") <= FUZZY_BLOCK_MAX_ITEMS)
            self._gram_indexes[key] = _GramIndex(pairs["h"].to_numpy(), pairs["item"].to_numpy(), self.n_items,
                                                 np.empty(0, np.int64))
        return self._gram_indexes[key]


def _best(frame: pl.DataFrame, by: str = "score") -> pl.DataFrame:
    """One row per text: the highest ``by`` (then score; ties: the lowest item number)."""
    if frame.height == 0:
        return _empty()
    keys = ["row", by, "score", "item"] if by != "score" else ["row", "score", "item"]
    return (frame.sort(keys, descending=[False] + [True] * (len(keys) - 2) + [False])
            .group_by("row", maintain_order=True).first()
            .select([pl.col(c).cast(t) for c, t in _MATCH_SCHEMA.items()]))
