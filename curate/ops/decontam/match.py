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

from curate.ops.decontam.benchmarks import Benchmark, exact_key_hash
from curate.ops.decontam.grams import GramSet, Tokens, distinct_pairs, unfmix64
from curate.text import normalise

FUZZY_BLOCK_N = 3  # n of the word n-grams that pick fuzzy candidates
FUZZY_BLOCK_MAX_ITEMS = 20  # a 3-gram held by more items than this ("what is the") picks no candidates
FUZZY_CANDIDATES = 5  # candidates per text scored with rapidfuzz
_MATCH_SCHEMA = {"row": pl.Int64, "item": pl.Int64, "score": pl.Float64, "start": pl.Int64, "end": pl.Int64}


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=_MATCH_SCHEMA)


class _GramIndex:
    """Distinct (gram hash, item) pairs for one n, each item's distinct-gram count, and the items
    shorter than n (matched as one whole-item gram): their lengths and first tokens."""

    def __init__(self, hashes: np.ndarray, items: np.ndarray, n_items: int, short_lengths: np.ndarray,
                 short_firsts: dict[int, np.ndarray | None] | None = None):
        self.set = GramSet(*distinct_pairs(hashes, items), presorted=True)
        self.item_grams = np.bincount(self.set.items, minlength=n_items)
        self.short_lengths = np.unique(short_lengths)  # token counts of items shorter than n
        # length -> first-token hashes of the short items of that length (None: unknown, scan all)
        self.short_firsts = short_firsts or {}

    def lookup(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query position, item) for every benchmark item holding each query hash."""
        return self.set.lookup(query)


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
        self._text_pos = {g: k for k, g in enumerate(self._text_items)}  # global item -> its text
        self._tokens = Tokens(pl.Series(texts, dtype=pl.String)) if texts else None
        self._gram_indexes: dict[int, _GramIndex] = {}
        self._exact: dict[int, int] | None = None
        self._normalised: list[str] | None = None

    def text_of(self, item: int) -> str | None:
        """The problem text of a global item (None for fingerprint-only sets)."""
        k = self._text_pos.get(item)
        return None if k is None else self._texts[k]

    def build(self, methods: list[str], n: int) -> None:
        """Build now what these matchers would build on first use (``n``: the ngram matcher's
        words per n-gram), so that several threads can match batches at once: every lazy part is
        built whole and then published by one assignment, and after this none is left to build."""
        if "ngram" in methods:
            self._gram_index(n)
        if "exact" in methods and self._exact is None:
            self._exact = self._exact_table()
        if "fuzzy" in methods and self._tokens is not None:
            self._normalise_items()
            self._gram_index_text_only(FUZZY_BLOCK_N)

    # --- n-gram overlap ----------------------------------------------------------------------
    def _gram_index(self, n: int) -> _GramIndex:
        if n not in self._gram_indexes:
            hashes, items, short = [np.empty(0, np.uint64)], [np.empty(0, np.int64)], [np.empty(0, np.int64)]
            firsts: dict[int, list[np.ndarray] | None] = {}
            if self._tokens is not None:
                rows, h = self._item_windows(n)
                hashes.append(h)
                items.append(self._text_items_arr[rows])
                lens = self._tokens.lengths
                is_short = (lens > 0) & (lens < n)
                short.append(lens[is_short])
                first_tok = self._tokens.hashes[self._tokens.offsets[:-1][is_short]]
                for m in np.unique(lens[is_short]).tolist():
                    firsts.setdefault(m, []).append(first_tok[lens[is_short] == m])  # type: ignore[union-attr]
            base = 0
            for b in self.benchmarks:
                if not b.has_text:
                    if n not in b.grams:
                        raise ValueError(f"benchmark {b.name} ships as a fingerprint with n-grams "
                                         f"of {sorted(b.grams)} tokens only, not {n}")
                    g, it = b.grams[n]
                    hashes.append(unfmix64(g))
                    items.append(it.astype(np.int64) + base)
                    lens = b.n_tokens.astype(np.int64)
                    short.append(lens[(lens > 0) & (lens < n)])
                    for m in np.unique(lens[(lens > 0) & (lens < n)]).tolist():
                        firsts[m] = None  # a fingerprint has no tokens: scan every position
                base += len(b)
            short_firsts = {m: None if f is None else np.unique(np.concatenate(f)) for m, f in firsts.items()}
            self._gram_indexes[n] = _GramIndex(np.concatenate(hashes), np.concatenate(items), self.n_items,
                                               np.concatenate(short), short_firsts)
        return self._gram_indexes[n]

    def ngram(self, texts: pl.Series | Tokens, n: int, min_overlap: float) -> pl.DataFrame:
        """Best item per text by the share of its n-grams found in the text (>= min_overlap)."""
        index = self._gram_index(n)
        toks = texts if isinstance(texts, Tokens) else Tokens(texts)
        every = toks.raw_every(n)  # every flat start; those crossing a row end are dropped once looked up
        qpos, items = index.lookup(every)
        rows, inside = toks.locate(qpos, n)
        found = [(qpos[inside], rows[inside], items[inside], every[qpos[inside]], n)]
        firsts = [f for f in index.short_firsts.values() if f is not None]
        # where some short item's first token is
        at_first = toks.holding(np.concatenate(firsts) if firsts else np.empty(0, np.uint64))
        for m in index.short_lengths.tolist():  # items shorter than n: windows of exactly their length
            first = index.short_firsts.get(m)
            at = None if first is None else at_first[np.isin(toks.hashes[at_first], first)]
            p, h = toks.windows(m, at, raw=True)
            q, it = index.lookup(h)
            found.append((p[q], toks.rows_of(p[q]), it, h[q], m))
        all_pos = np.concatenate([f[0] for f in found])
        if len(all_pos) == 0:
            return _empty()
        rows = np.concatenate([f[1] for f in found])
        start = all_pos - toks.offsets[rows]
        width = np.concatenate([np.full(len(f[0]), f[4], dtype=np.int64) for f in found])
        hits = pl.DataFrame({"row": rows, "item": np.concatenate([f[2] for f in found]),
                             "h": np.concatenate([f[3] for f in found]), "start": start, "end": start + width})
        per_item = (hits.group_by("row", "item")
                    .agg(pl.col("h").n_unique().alias("found"), pl.col("start").min(), pl.col("end").max()))
        total = index.item_grams[per_item["item"].to_numpy()]
        per_item = (per_item.with_columns((pl.col("found") / pl.Series(total)).alias("score"), pl.Series("total", total))
                    .filter(pl.col("score") >= min_overlap))
        if per_item.height == 0:
            return _empty()
        # rank candidates by Jaccard of the n-gram sets, so a multi-part problem is matched to the
        # item it equals, not to an earlier part it also contains entirely; a row's own distinct
        # n-gram count is needed only where two or more items are candidates
        several = per_item.group_by("row").len().filter(pl.col("len") > 1)["row"].to_numpy()
        own = _empty_own()
        if len(several):
            count = np.maximum(toks.lengths[several] - n + 1, 0)  # the n-windows of those rows
            first = np.repeat(toks.offsets[several] - (np.cumsum(count) - count), count)
            own = (pl.DataFrame({"row": np.repeat(several, count), "h": every[first + np.arange(count.sum())]})
                   .group_by("row").agg(pl.col("h").n_unique().alias("own")))
        per_item = (per_item.join(own, on="row", how="left")
                    .with_columns((pl.col("found") / (pl.col("total") + pl.col("own").fill_null(0) - pl.col("found")))
                                  .alias("rank")))
        return _best(per_item, by="rank")

    # --- exact after stripping non-word characters and digits --------------------------------
    def _exact_table(self) -> dict[int, int]:
        """Exact key hash -> first item with that key (built whole, then published: threads
        applying parts at once never see half of it)."""
        table: dict[int, int] = {}
        for k, text in zip(self._text_items, self._texts, strict=True):
            table.setdefault(exact_key_hash(text), k)
        base = 0
        for b in self.benchmarks:
            if not b.has_text and b.exact_hashes is not None:
                for j, h in enumerate(b.exact_hashes.tolist()):
                    table.setdefault(int(h), base + j)
            base += len(b)
        return table

    def exact(self, texts: pl.Series | Tokens, min_chars: int, skip: np.ndarray | None = None) -> pl.DataFrame:
        """Rows whose exact key (``benchmarks.exact_key``) is some item's, for keys of >= min_chars;
        rows where ``skip`` is true are not looked up (a method ranked higher matched them)."""
        if self._exact is None:
            self._exact = self._exact_table()
        keys = (texts if isinstance(texts, Tokens) else Tokens(texts)).exact_keys()
        wanted = keys.str.len_chars().to_numpy() >= min_chars
        long_enough = np.flatnonzero(wanted if skip is None else wanted & ~skip)
        rows, items = [], []
        table = self._exact
        for r, key in zip(long_enough.tolist(), keys.gather(long_enough).to_list(), strict=True):
            item = table.get(xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogatepass")))
            if item is not None:
                rows.append(r)
                items.append(item)
        if not rows:
            return _empty()
        return pl.DataFrame({"row": rows, "item": items, "score": [1.0] * len(rows), "start": None, "end": None},
                            schema=_MATCH_SCHEMA)

    # --- fuzzy (rapidfuzz) on indexed candidates ---------------------------------------------
    def fuzzy(self, texts: pl.Series | Tokens, threshold: float, skip: np.ndarray | None = None) -> pl.DataFrame:
        """Best item per text with normalised Indel ratio >= threshold (0-1); rows where ``skip`` is
        true are not scored (a method ranked higher matched them)."""
        try:
            from rapidfuzz import fuzz, process
        except ImportError:  # pragma: no cover
            raise ValueError("the fuzzy method needs rapidfuzz: pip install 'curate-cot[dedup]'") from None
        if self._tokens is None:
            return _empty()
        self._normalise_items()
        index = self._gram_index_text_only(FUZZY_BLOCK_N)
        toks = texts if isinstance(texts, Tokens) else Tokens(texts)
        every = toks.raw_every(FUZZY_BLOCK_N)
        qpos, items = index.lookup(every)
        rows, inside = toks.locate(qpos, FUZZY_BLOCK_N)
        spos, shashes = toks.short_rows(FUZZY_BLOCK_N, raw=True)
        sq, sitems = index.lookup(shashes)
        rows = np.concatenate([rows[inside], toks.rows_of(spos[sq])])
        items = np.concatenate([items[inside], sitems])
        if len(rows) == 0:
            return _empty()
        cutoff = threshold * 100
        # the Indel ratio is at most 2 min(la, lb) / (la + lb): a necessary bound, checked on arrays
        # before anything else (with slack: polars' and Python's lower-casing may differ on rare
        # characters); the candidates are then the items sharing the most 3-grams among those left
        lq, lt = toks.char_lengths()[rows], self._norm_len[items]
        ok = 200 * np.minimum(lq, lt) >= (cutoff - 1) * (lq + lt)
        if skip is not None:
            ok &= ~skip[rows]
        if not ok.any():
            return _empty()
        rows, items = _top_candidates(rows[ok], items[ok], self.n_items, FUZZY_CANDIDATES)
        distinct, where = np.unique(rows, return_inverse=True)  # each row is joined once, not per candidate
        joined = toks.normalised(distinct)
        queries = [joined[k] for k in where.tolist()]
        targets = [self._normalised[i] for i in items.tolist()]
        scores = process.cpdist(queries, targets, scorer=fuzz.ratio, score_cutoff=cutoff, workers=1)
        hit = np.flatnonzero(scores >= cutoff)
        if not len(hit):
            return _empty()
        found = pl.DataFrame({"row": rows[hit], "item": items[hit], "score": scores[hit] / 100,
                              "start": None, "end": None}, schema=_MATCH_SCHEMA)
        return _best(found)

    def _normalise_items(self) -> None:
        """The items' normalised texts and their lengths, for fuzzy scoring (built once)."""
        if self._normalised is None:
            normalised = [""] * self.n_items  # by global item ("" for fingerprint-only items)
            for g, text in zip(self._text_items, self._texts, strict=True):
                normalised[g] = normalise(text)
            self._norm_len = np.array([len(t) for t in normalised], dtype=np.int64)
            self._normalised = normalised  # last: its presence says both are there

    def _gram_index_text_only(self, n: int) -> _GramIndex:
        key = -n  # separate cache slot: fingerprint-only items are not fuzzy candidates
        if key not in self._gram_indexes:
            rows, h = self._item_windows(n)
            h, items = distinct_pairs(h, self._text_items_arr[rows])
            new = np.ones(len(h), dtype=np.bool_)
            np.not_equal(h[1:], h[:-1], out=new[1:])
            runs = np.diff(np.append(np.flatnonzero(new), len(h)))  # items holding each distinct 3-gram
            keep = np.repeat(runs <= FUZZY_BLOCK_MAX_ITEMS, runs)
            self._gram_indexes[key] = _GramIndex(h[keep], items[keep], self.n_items, np.empty(0, np.int64))
        return self._gram_indexes[key]

    def _item_windows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(text item row, raw hash) of every n-gram of the text items; an item shorter than n gives
        one whole-item gram. The index holds raw hashes (``unfmix64``), as the kernel queries them."""
        assert self._tokens is not None
        pos, h = self._tokens.windows(n, raw=True)
        spos, sh = self._tokens.short_rows(n, raw=True)
        return self._tokens.rows_of(np.concatenate([pos, spos])), np.concatenate([h, sh])


def _top_candidates(rows: np.ndarray, items: np.ndarray, n_items: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k items seen most often in (row, item) pairs (ties: lowest item), by row."""
    keys, counts = np.unique(rows * n_items + items, return_counts=True)
    r, it = keys // n_items, keys % n_items
    order = np.lexsort((it, -counts, r))
    r, it = r[order], it[order]
    first = np.searchsorted(r, r, side="left")  # where each row's run starts (r is sorted)
    keep = np.arange(len(r)) - first < k
    return r[keep], it[keep]


def _empty_own() -> pl.DataFrame:
    return pl.DataFrame(schema={"row": pl.Int64, "own": pl.UInt32})


def _best(frame: pl.DataFrame, by: str = "score") -> pl.DataFrame:
    """One row per text: the highest ``by`` (then score; ties: the lowest item number)."""
    if frame.height == 0:
        return _empty()
    keys = ["row", by, "score", "item"] if by != "score" else ["row", "score", "item"]
    return (frame.sort(keys, descending=[False] + [True] * (len(keys) - 2) + [False])
            .group_by("row", maintain_order=True).first()
            .select([pl.col(c).cast(t) for c, t in _MATCH_SCHEMA.items()]))
