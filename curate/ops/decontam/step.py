"""Benchmark decontamination: drop (or flag) rows whose problem is a benchmark test item."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from curate.ops.decontam import benchmarks as bench
from curate.ops.decontam.grams import Tokens
from curate.ops.decontam.match import BenchmarkIndex
from curate.step import Step, StepResult, reject_where
from curate.text import TOKEN_RE

if TYPE_CHECKING:
    from curate.card.section import CardContext, CardSection

METHODS = ("ngram", "exact", "fuzzy", "embedding")
WHOLE_TEXT_METHODS = ("exact", "fuzzy", "embedding")  # compare the whole problem, not spans
SPAN_CHARS = 2000  # longest matching span kept in decontam_span
CHUNK_CHARS = 2_000_000  # text the matchers take at once: ~0.4M tokens, ~50 MB of arrays
COLUMNS: dict[str, pa.DataType] = {
    "decontam_benchmark": pa.string(),
    "decontam_item": pa.string(),
    "decontam_method": pa.string(),
    "decontam_score": pa.float64(),
    "decontam_span": pa.large_string(),
}


@dataclass
class Decontaminate(Step):
    """Drop (or flag) rows that contain a benchmark test item: n-gram overlap, exact-after-stripping, fuzzy.

    Benchmarks ship with the package (MATH-500, AIME 2024/2025, AMC 2023, GSM8K, Minerva,
    OlympiadBench; GPQA-Diamond as hashed n-grams only) plus any user file. Each flagged row
    records benchmark, item id, method, score and the matching span. ``ngram``: share of the
    benchmark item's word n-grams found in the text (every field in ``fields``); ``exact``:
    equal after lower-casing and stripping non-word characters and digits; ``fuzzy``: rapidfuzz
    Indel ratio on the normalised problem, scored only on indexed candidates; ``embedding``:
    cosine of sentence embeddings (``curate-cot[semantic]``). The first method in ``method`` that
    matches a row names it.
    """

    name = "decontaminate"
    reject_columns = COLUMNS

    benchmarks: list[str] | str = field(
        default="all", metadata={"help": "bundled benchmarks to check against: 'all' or a list of "
                                         + ", ".join(bench.available())})
    files: list[str] | None = field(
        default=None, metadata={"help": "extra test sets: JSONL/JSON files with problem (or question) and id"})
    method: list[str] | str = field(
        default_factory=lambda: ["ngram", "exact", "fuzzy"],
        metadata={"help": "matchers, in priority order: ngram, exact, fuzzy, embedding"})
    fields: list[str] = field(
        default_factory=lambda: ["problem"],
        metadata={"help": "columns the ngram matcher searches (add 'solution'/'thinking' to check responses); "
                          "exact, fuzzy and embedding compare the problem"})
    ngram_n: int = field(default=8, metadata={"help": "words per n-gram (open-r1/s1: 8, s1 utility: 13, Light-R1: 32)"})
    ngram_min_overlap: float = field(
        default=0.5, metadata={"help": "share of a benchmark item's n-grams the text must contain (0-1]"})
    exact_min_chars: int = field(
        default=40, metadata={"help": "exact: ignore texts whose stripped key is shorter (generic one-liners)"})
    fuzzy_threshold: float = field(
        default=0.95, metadata={"help": "fuzzy: normalised Indel ratio (0-1) to flag (OpenThoughts: 0.95, OpenThoughts2: 0.90)"})
    embedding_model: str = field(
        default="all-MiniLM-L6-v2", metadata={"help": "embedding: sentence-transformers model name or path"})
    embedding_threshold: float = field(default=0.95, metadata={"help": "embedding: cosine similarity to flag"})
    action: Literal["drop", "flag"] = field(
        default="drop", metadata={"help": "drop: contaminated rows go to rejects; flag: keep all rows, annotate them"})

    process_local = ("_embedder",)

    def __post_init__(self) -> None:
        names = bench.available() if self.benchmarks == "all" else self.benchmarks
        if isinstance(names, str):
            names = [names]
        unknown = [b for b in names if b not in bench.BUNDLED]
        if unknown:
            raise ValueError(f"benchmarks: unknown {', '.join(unknown)}; bundled: {', '.join(bench.available())}")
        if not names and not self.files:
            raise ValueError("benchmarks: select at least one benchmark or give files")
        methods = [self.method] if isinstance(self.method, str) else list(self.method)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"method: {', '.join(bad) or '(empty)'} not one of {', '.join(METHODS)}")
        if not self.fields:
            raise ValueError("fields: give at least one column (e.g. [problem])")
        if self.ngram_n < 1:
            raise ValueError(f"ngram_n must be >= 1, got {self.ngram_n}")
        if "ngram" in methods and "gpqa" in names and self.ngram_n not in bench.FINGERPRINT_NGRAMS:
            raise ValueError(f"gpqa ships as hashed n-grams of {bench.FINGERPRINT_NGRAMS} words; "
                             f"ngram_n={self.ngram_n} cannot match it (pick one of those or drop gpqa)")
        for key in ("ngram_min_overlap", "fuzzy_threshold", "embedding_threshold"):
            value = getattr(self, key)
            if not 0 < value <= 1:
                raise ValueError(f"{key} must be in (0, 1], got {value}")
        if self.exact_min_chars < 0:
            raise ValueError(f"exact_min_chars must be >= 0, got {self.exact_min_chars}")
        if "embedding" in methods:
            from curate.ops.dedup.semantic import require_sentence_transformers

            require_sentence_transformers()
        self._names = list(names)
        self._methods = methods
        self._index: BenchmarkIndex | None = None
        self._embedder: Any = None

    def columns_read(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(["problem", *self.fields]))

    @property
    def writes(self) -> dict[str, pa.DataType]:  # type: ignore[override]
        """action flag keeps every row and writes the reject detail columns on it; drop writes none."""
        return dict(COLUMNS) if self.action == "flag" else {}

    def prepare(self) -> None:
        self.index.build(self._methods, self.ngram_n)  # built once here, shipped to every worker

    @property
    def thread_safe(self) -> bool:  # type: ignore[override]
        """After ``prepare`` the matchers only read the index; the embedder loads on first use."""
        return "embedding" not in self._methods

    def worker_resources(self) -> dict[str, float] | None:
        return {} if "embedding" in self._methods else None  # the embedder loads once per worker

    @property
    def index(self) -> BenchmarkIndex:
        """The benchmarks' index, built on first use (shared by every batch)."""
        if self._index is None:
            sets = [bench.load(n) for n in self._names] + [bench.load_user_file(f) for f in self.files or []]
            self._index = BenchmarkIndex(sets)
        return self._index

    def matches(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Best match per matched row: row, benchmark, item, method, score, span."""
        index = self.index
        found = []
        for lo, hi in _chunks(batch, list(dict.fromkeys(["problem", *self.fields]))):
            found += self._chunk_matches(batch.slice(lo, hi - lo), lo)
        if not found:
            return pl.DataFrame(schema={"row": pl.Int64, **{k: pl.from_arrow(pa.array([], v)).dtype for k, v in COLUMNS.items()}})
        # stable: on equal method and score the earlier field in ``fields`` wins
        best = (pl.concat(found)
                .sort(["row", "rank", "score"], descending=[False, False, True], maintain_order=True)
                .group_by("row", maintain_order=True).first())
        texts: list[str | None] = [None] * best.height  # each matched row's text in the field that matched
        rows, fields = best["row"].to_numpy(), best["field"]
        for col in fields.unique(maintain_order=True).to_list():
            at = np.flatnonzero((fields == col).to_numpy())
            for k, text in zip(at.tolist(), batch[col].gather(rows[at]).to_list(), strict=True):
                texts[k] = text
        spans = [_span(text or "", start, end)
                 for text, start, end in zip(texts, best["start"].to_list(), best["end"].to_list(), strict=True)]
        return pl.DataFrame({
            "row": best["row"],
            "decontam_benchmark": [index.bench_of[i] for i in best["item"]],
            "decontam_item": [index.item_ids[i] for i in best["item"]],
            "decontam_method": best["method"],
            "decontam_score": best["score"].round(4),
            "decontam_span": pl.Series(spans, dtype=pl.String),
        })

    def _chunk_matches(self, part: pl.DataFrame, lo: int) -> list[pl.DataFrame]:
        """Every method's matches in one chunk, in priority order (rows numbered from ``lo``).

        A row a method matched is not searched by the methods after it, nor by the same method in
        a later field once a field scored 1 (the earlier field wins ties): neither result could be
        chosen. Each column is tokenised once, for the rows still searched when first needed."""
        index = self.index
        done = np.zeros(part.height, dtype=np.bool_)  # matched by a method ranked higher
        tokens: dict[str, tuple[np.ndarray, Tokens]] = {}
        found = []
        for rank, method in enumerate(self._methods):
            settled = done.copy()  # or scored 1 by this method in an earlier field
            for col in self.fields if method == "ngram" else ["problem"]:
                if settled.all():
                    break
                if method == "embedding":  # every row, as before: a batch's embeddings may shift with its rows
                    rows = np.arange(part.height)
                    m = self._embedding_matches(part[col].cast(pl.String))
                    m = m.filter(pl.Series(~settled[m["row"].to_numpy()]))
                else:
                    if col not in tokens:
                        rows = np.flatnonzero(~settled)
                        texts = part[col].cast(pl.String)
                        tokens[col] = (rows, Tokens(texts if len(rows) == part.height else texts.gather(rows)))
                    rows, toks = tokens[col]
                    skip = settled[rows]
                    if method == "ngram":
                        m = index.ngram(toks, self.ngram_n, self.ngram_min_overlap)
                        if skip.any():
                            m = m.filter(pl.Series(~skip[m["row"].to_numpy()]))
                    elif method == "exact":
                        m = index.exact(toks, self.exact_min_chars, skip if skip.any() else None)
                    else:
                        m = index.fuzzy(toks, self.fuzzy_threshold, skip if skip.any() else None)
                if m.height:
                    at = rows[m["row"].to_numpy()]
                    settled[at[m["score"].to_numpy() >= 1.0]] = True
                    done[at] = True
                    found.append(m.with_columns(pl.Series("row", at + lo), pl.lit(rank).alias("rank"),
                                                pl.lit(method).alias("method"), pl.lit(col).alias("field")))
        return found

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        found = self.matches(batch) if batch.height else None
        annotated = batch.with_row_index("__row").join(
            found.with_columns(pl.col("row").cast(pl.UInt32)) if found is not None else
            pl.DataFrame(schema={"row": pl.UInt32}), left_on="__row", right_on="row", how="left",
            maintain_order="left").drop("__row")
        for col, typ in COLUMNS.items():
            if col not in annotated.columns:
                annotated = annotated.with_columns(pl.lit(None, dtype=pl.from_arrow(pa.array([], typ)).dtype).alias(col))
        if self.action == "flag":
            return StepResult(annotated, None)
        hit = annotated["decontam_benchmark"].is_not_null()
        reason = pl.format("benchmark contamination: {} match with {} item {} (score {})",
                           pl.col("decontam_method"), pl.col("decontam_benchmark"), pl.col("decontam_item"),
                           pl.col("decontam_score").round(3))
        result = reject_where(annotated, hit, reason)
        return StepResult(result.kept.drop(list(COLUMNS)), result.rejected)

    # --- embedding matcher (optional extra) ----------------------------------------------------
    def _embedding_matches(self, texts: pl.Series) -> pl.DataFrame:
        from curate.ops.dedup.semantic import Embedder

        index = self.index
        if self._embedder is None:
            self._embedder = Embedder(self.embedding_model)
            items = [i for i, b in enumerate(index.bench_of) if index.text_of(i) is not None]
            self._emb_items = np.array(items, dtype=np.int64)
            self._emb_matrix = self._embedder.encode([index.text_of(i) or "" for i in items])
        q = self._embedder.encode(texts.fill_null("").to_list())
        sims = q @ self._emb_matrix.T
        best = sims.argmax(axis=1) if sims.size else np.empty(0, dtype=np.int64)
        score = sims[np.arange(len(best)), best] if sims.size else np.empty(0)
        keep = score >= self.embedding_threshold
        return pl.DataFrame({"row": np.nonzero(keep)[0].astype(np.int64), "item": self._emb_items[best[keep]],
                             "score": score[keep].astype(np.float64), "start": None, "end": None},
                            schema={"row": pl.Int64, "item": pl.Int64, "score": pl.Float64,
                                    "start": pl.Int64, "end": pl.Int64})

    # --- the dataset card ------------------------------------------------------------------------
    @classmethod
    def card_section(cls, ctx: CardContext) -> CardSection:
        return _card_section(ctx)


def _chunks(batch: pl.DataFrame, cols: list[str]) -> list[tuple[int, int]]:
    """Row ranges of at most CHUNK_CHARS characters (at least one row each): the kernel's arrays
    are ~100 bytes per token, so a chunk bounds memory whatever the batch size."""
    chars = batch.select(pl.sum_horizontal(pl.col(c).cast(pl.String).str.len_bytes().fill_null(0)
                                           for c in cols)).to_series().to_numpy()
    ends = np.cumsum(chars)
    out, lo = [], 0
    while lo < batch.height:
        hi = int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + CHUNK_CHARS, side="right"))
        hi = min(max(hi, lo + 1), batch.height)
        out.append((lo, hi))
        lo = hi
    return out


def _span(text: str, start: int | None, end: int | None) -> str:
    """The matched text: token range [start, end) of ``text`` as characters, or the whole text."""
    if start is not None and end is not None and 0 <= start < end:
        spans = list(islice(TOKEN_RE.finditer(text), end))  # a long response is read up to the span only
        if end <= len(spans):
            text = text[spans[start].start(): spans[end - 1].end()]
    return text if len(text) <= SPAN_CHARS else text[: SPAN_CHARS - 1] + "…"


# --- the dataset card -----------------------------------------------------------------------------

def _card_section(ctx: CardContext) -> CardSection:
    """The card's *Decontamination* section (benchmarks, methods, rows removed or flagged by
    benchmark, examples), the tag ``decontaminated`` and what it does not cover, as a limitation."""
    from curate.card.section import CardSection, code, params_text, table

    dc = _report(ctx)
    section = CardSection(key="decontamination", figures=dc, order=20,
                          tags=["decontaminated"] if ctx.stages(configs=False) else [])
    if dc is None:
        section.limitations = ["Not decontaminated against evaluation benchmarks: check overlap before "
                               "evaluating a model trained on it."]
        return section
    section.limitations = ["Decontamination covers only the benchmarks and methods listed; paraphrased or "
                           "translated benchmark items below the thresholds can remain."]
    out = ["## Decontamination", "",
           f"Benchmarks checked: {', '.join(map(str, dc['benchmarks']))}. Method(s): "
           f"{', '.join(_as_list(dc['method'])) or 'unknown'} on field(s) {', '.join(_as_list(dc['fields'])) or 'unknown'}"
           + (f" ({code(params_text(dc['thresholds']))})" if dc["thresholds"] else "")
           + f"; action `{dc['action']}`.", "",
           f"Rows removed: **{dc['removed']:,}**" + (f" of {dc['rows_in']:,}" if dc["rows_in"] is not None else "")
           + (f"; rows flagged and kept: **{dc['flagged']:,}**" if dc["flagged"] else "") + ".", ""]
    if dc.get("by_benchmark"):
        out += [table(["benchmark", "method", "rows"], [list(r) for r in dc["by_benchmark"]]), ""]
    if dc.get("examples"):
        out += ["Examples of matched rows:", "",
                table(list(dc["examples"][0]), [list(e.values()) for e in dc["examples"]]), ""]
    section.markdown = out
    section.tables = [(f"Decontamination: {dc['removed']:,} removed, {dc['flagged']:,} flagged",
                       ["benchmark", "method", "rows"], [list(r) for r in dc.get("by_benchmark", [])])]
    return section


def _report(ctx: CardContext) -> dict[str, Any] | None:
    """Benchmarks and methods checked, rows removed or flagged by benchmark and method, examples:
    from the base stages' parameters, every stage's rejects and the kept rows' ``decontam_*``."""
    stages = ctx.stages(configs=False)
    removed = ctx.rejects()
    flagged = (ctx.scan().filter(pl.col("decontam_benchmark").is_not_null()).collect()
               if "decontam_benchmark" in ctx.schema().names else None)
    if not stages and removed is None and flagged is None:
        return None
    params = stages[0].params if stages else {}
    benchmarks = params.get("benchmarks", "unknown")
    if benchmarks == "all":
        benchmarks = bench.available()
    report: dict[str, Any] = {
        "benchmarks": benchmarks if isinstance(benchmarks, list) else [benchmarks],
        "method": params.get("method"), "fields": params.get("fields"), "action": params.get("action"),
        "thresholds": {k: v for k, v in params.items()  # the settings of the matchers that ran
                       if k.split("_", 1)[0] in _as_list(params.get("method")) and k.split("_", 1)[0] in METHODS},
        "rows_in": stages[0].entry["rows_in"] if stages else None,
        "removed": removed.height if removed is not None else 0,
        "flagged": flagged.height if flagged is not None else 0,
    }
    hits = pl.concat([f for f in (removed, flagged) if f is not None and f.height], how="diagonal_relaxed") \
        if (removed is not None and removed.height) or (flagged is not None and flagged.height) else None
    if hits is not None and "decontam_benchmark" in hits.columns:
        report["by_benchmark"] = hits.group_by("decontam_benchmark", "decontam_method").len().sort(
            "len", "decontam_benchmark", descending=[True, False]).rows()
        cols = [c for c in ("problem", "decontam_benchmark", "decontam_item", "decontam_method", "decontam_score")
                if c in hits.columns]
        report["examples"] = hits.sort("id").head(3).select(cols).to_dicts()
    return report


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]
