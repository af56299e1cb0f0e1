"""decontaminate against the bundled benchmarks, on real traces and real training problems."""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read
from curate.errors import RecipeError
from curate.ops import Decontaminate
from curate.ops.decontam import benchmarks as bench
from curate.step import build_step

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.real_traces import rewrite, traces_with_items  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpqa_probes import probe_hash, window_hashes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIZES = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "gsm8k": 1319, "minerva": 272,
         "olympiadbench": 675, "gpqa": 198}


@pytest.fixture(scope="module")
def traces(shared_data) -> pl.DataFrame:
    """Every real trace with the benchmark and item it answers."""
    return traces_with_items(shared_data)


@pytest.fixture(scope="module")
def problems(shared_data) -> pl.DataFrame:
    """The real training problems (AIME 1983-2023, MATH train) as rows."""
    rows = []
    for f in sorted((shared_data / "problems").glob("*.json")):
        rows += [{"id": f"{f.stem}:{k}", "problem": r["problem"], "answer": str(r["answer"])}
                 for k, r in enumerate(json.loads(f.read_text()))]
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def step() -> Decontaminate:
    return Decontaminate()


def test_bundled_sets_are_complete():
    for name, size in SIZES.items():
        b = bench.load(name)
        assert len(b) == size and len(set(b.ids)) == size, name
        assert b.has_text == (name != "gpqa")
    assert bench.load("gsm8k").answers[0] == "18" and bench.load("aime25").answers[:2] == ["70", "588"]
    assert bench.load("minerva").answers[0] == "1.6"


def _shipped_gpqa_hits(root: Path) -> list[str]:
    """Files under root (gzip unpacked) holding a 40-character run of a GPQA question, by its hash."""
    probes = np.array([int(x, 16) for x in (REPO / "tests" / "data" / "gpqa_probes.txt").read_text().split()
                       if not x.startswith("#") and len(x) == 16], dtype=np.uint64)
    assert len(probes) == SIZES["gpqa"]
    hits = []
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        if np.isin(window_hashes(data), probes).any():
            hits.append(str(p.relative_to(root)))
    return hits


def test_gpqa_is_not_plain_text():
    """No 40-character run of any GPQA question is in the package or the data shipped with it
    (checked against hashes of those runs, so a clone checks it without GPQA's text)."""
    assert _shipped_gpqa_hits(REPO / "curate" / "data") == []
    readme = (bench.DATA_DIR / "README.md").read_text()
    assert "fingerprint" in readme and "never" in readme


def test_every_trace_is_flagged_with_its_benchmark_and_item(traces, step):
    found = step.matches(traces)
    assert found.height == traces.height
    got = traces.with_row_index("row").join(found.with_columns(pl.col("row").cast(pl.UInt32)), on="row")
    wrong = got.filter((pl.col("decontam_benchmark") != pl.col("want_benchmark"))
                       | (pl.col("decontam_item") != pl.col("want_item")))
    assert wrong.height == 0, wrong.select("source", "want_item", "decontam_benchmark", "decontam_item").head()
    for r in got.head(200).iter_rows(named=True):  # the span is the problem's own text
        assert r["decontam_span"] and r["decontam_span"][:-1] in r["problem"]


def _flags(frame: pl.DataFrame, found: pl.DataFrame) -> list[list]:
    return sorted([frame["id"][r["row"]], r["decontam_benchmark"], r["decontam_item"], r["decontam_method"],
                   r["decontam_score"]] for r in found.iter_rows(named=True))


def test_flags_match_the_pinned_ones_on_real_problems_and_responses(problems, traces):
    """Same rows, items, methods and scores as before the n-gram kernel was rewritten (issue 19)."""
    pinned = json.loads((REPO / "tests" / "data" / "decontam_flags.json").read_text())
    assert _flags(problems, Decontaminate().matches(problems)) == sorted(pinned["problems"])
    # the problem blanked: only the responses can match (fields searched by ngram)
    blank = traces.with_columns(pl.lit("").alias("problem"))
    got = _flags(blank, Decontaminate(fields=["problem", "thinking", "solution"]).matches(blank))
    assert got == sorted(pinned["responses_only"])
    whole = Decontaminate(fields=["problem", "thinking", "solution"]).matches(traces)
    hit = traces.with_row_index("row").join(whole.with_columns(pl.col("row").cast(pl.UInt32)), on="row")
    assert hit.height == traces.height and (hit["decontam_score"] == 1.0).all()
    # two Minerva responses also quote sibling item 202 (a multi-part set) whole; on equal scores the
    # earlier field (the problem) wins, so every trace gets its own item (was arbitrary before)
    assert (hit["decontam_item"] == hit["want_item"]).all()


def test_training_problems_mostly_pass_and_real_copies_are_caught(problems, step):
    found = step.matches(problems.with_columns(pl.lit("").alias("thinking")))
    assert 30 <= found.height <= 0.015 * problems.height  # ~0.9%: each one is listed in BENCHMARKS.md (dedup)
    hit = problems.with_row_index("row").join(found.with_columns(pl.col("row").cast(pl.UInt32)), on="row")
    aime1994 = hit.filter(pl.col("problem").str.contains(r"x^{10}+(13x-1)^{10}", literal=True))
    assert aime1994.height == 1 and aime1994["decontam_benchmark"][0] == "math500"  # AIME 1994 #13 is in MATH-500
    assert set(hit["decontam_method"]) <= {"ngram", "exact", "fuzzy"}


def test_light_rewrites_are_caught_among_clean_training_problems(problems, step):
    rng = random.Random(5)
    items = []
    for name in ("math500", "aime24", "aime25", "amc23", "gsm8k", "minerva", "olympiadbench"):
        b = bench.load(name)
        for k in rng.sample(range(len(b)), min(40, len(b))):
            items.append((name, b.ids[k], rewrite(b.problems[k], ("latex", "number", "find")[len(items) % 3], rng)))
    clean = problems.sample(1500, seed=2)
    mixed = pl.DataFrame({"problem": [t for _, _, t in items] + clean["problem"].to_list()})
    found = step.matches(mixed)
    caught = found.filter(pl.col("row") < len(items))
    right = sum(1 for r in caught.iter_rows(named=True)
                if (r["decontam_benchmark"], r["decontam_item"]) == items[r["row"]][:2])
    assert right / len(items) >= 0.97, (right, len(items))
    assert found.filter(pl.col("row") >= len(items)).height <= 25  # clean rows flagged (see BENCHMARKS.md, dedup)


def test_gpqa_fingerprint_and_probe_hashes_match_its_questions(gpqa_rows, tmp_path):
    """The hashes test_gpqa_is_not_plain_text checks are those of the real questions, and a copy
    of one, escaped in JSON, is found; the shipped fingerprint flags every question."""
    (tmp_path / "leak.jsonl.gz").write_bytes(gzip.compress(json.dumps({"q": gpqa_rows[7]["question"]}).encode()))
    (tmp_path / "clean.jsonl").write_bytes((REPO / "curate" / "data" / "benchmarks" / "amc23.jsonl").read_bytes())
    assert _shipped_gpqa_hits(tmp_path) == ["leak.jsonl.gz"]
    want = {f"{probe_hash(r['question']):016x}" for r in gpqa_rows}
    assert want == set((REPO / "tests" / "data" / "gpqa_probes.txt").read_text().split()[-len(want):])
    rows = gpqa_rows
    step = Decontaminate(benchmarks=["gpqa"], method=["exact", "ngram"])
    found = step.matches(pl.DataFrame({"problem": [r["question"] for r in rows]}))
    assert found.height == len(rows)
    assert found["decontam_item"].to_list() == [str(r["id"]) for r in rows]
    with pytest.raises(ValueError, match="gpqa ships as hashed n-grams"):
        Decontaminate(benchmarks=["gpqa"], ngram_n=10)


def test_pipeline_drop_flag_and_user_file(traces, problems, tmp_path):
    data = pl.concat([traces.select("id", "problem", "thinking", "solution").head(40),
                      problems.head(200).select("id", "problem", pl.lit("").alias("thinking"),
                                                pl.format("The answer is {}.", "answer").alias("solution"))],
                     how="diagonal_relaxed").with_columns(pl.lit("math").alias("domain"))
    result = Pipeline([Decontaminate()]).run(read(data, format="curate"), out=tmp_path / "drop")
    rej = result.rejects("decontaminate")
    assert rej.height >= 40 and result.rows + rej.height == data.height
    assert rej["reject_reason"][0].startswith("benchmark contamination: ngram match with math500 item test/")
    assert {"decontam_benchmark", "decontam_item", "decontam_method", "decontam_score", "decontam_span"} <= set(rej.columns)
    flagged = Pipeline([Decontaminate(action="flag")]).run(read(data, format="curate"), out=tmp_path / "flag")
    out = flagged.to_polars()
    assert out.height == data.height and out["decontam_benchmark"].is_not_null().sum() == rej.height
    user = tmp_path / "mytest.jsonl"
    user.write_text("\n".join(json.dumps({"id": f"u{k}", "question": p}) for k, p in enumerate(problems["problem"][:3])))
    own = Decontaminate(benchmarks=[], files=[str(user)]).matches(problems.head(10))
    assert own["decontam_benchmark"].to_list() == ["mytest"] * 3 and own["decontam_item"].to_list() == ["u0", "u1", "u2"]


def test_parameters_are_validated():
    with pytest.raises(RecipeError, match="unknown nope"):
        build_step("decontaminate", {"benchmarks": ["math500", "nope"]})
    with pytest.raises(RecipeError, match="method"):
        build_step("decontaminate", {"method": "cosine"})
    with pytest.raises(ValueError, match="ngram_min_overlap"):
        Decontaminate(ngram_min_overlap=0)
    assert build_step("decontaminate", {"benchmarks": "all", "method": "ngram"}).columns_read() == ("problem",)


def test_dedup_decontam_recipe_runs_on_the_real_sample(tmp_path):
    from curate import run_recipe

    result = run_recipe(REPO / "pipelines" / "dedup_decontam.yaml", out=tmp_path / "dd")
    funnel = {r["name"]: r for r in result.funnel.iter_rows(named=True)}
    assert funnel["read"]["kept"] == 980  # 180 SkyThought traces, 100 simpleRL problems x 8 responses
    rej = result.rejects("decontaminate")
    assert set(rej["decontam_benchmark"]) <= {"math500", "minerva"} and rej["decontam_span"].is_not_null().all()
    sky = rej.filter(pl.col("source").str.starts_with("skythought"))
    survivors = result.rejects("minhash_dedup")  # Minerva's multi-part problems repeat their preamble
    n_sky = funnel["read"]["kept"] - 800 - survivors.filter(pl.col("source").str.starts_with("skythought")).height
    assert sky.height == n_sky  # every benchmark trace is rejected
    kept = result.to_polars()
    assert 80 <= kept.height <= 100 and set(kept["source"]) == {"simplerl_math_cot_100"}  # the others stay



def test_kernel_hashes_and_membership_match_the_reference_definitions(traces):
    """Tokens' window hashes equal gram_hash (the fingerprint's definition); GramSet finds exactly
    the (window, item) pairs a Python dict of sets finds."""
    import numpy as np

    from curate.ops.decontam.grams import GramSet, Tokens
    from curate.text import gram_hash, tokens

    texts = traces["solution"].head(40)
    toks = Tokens(texts)
    pos, hashes = toks.windows(8)
    rows = toks.rows_of(pos)
    flat = [t for text in texts.to_list() for t in tokens(text or "")]
    for k in range(0, len(pos), max(1, len(pos) // 300)):
        assert int(hashes[k]) == gram_hash(flat[pos[k]: pos[k] + 8])
        assert toks.offsets[rows[k]] <= pos[k] and pos[k] + 8 <= toks.offsets[rows[k] + 1]
    # the kernel compares raw hashes: unfmix64 inverts fmix64, and every start's raw hash is the
    # window's where the window lies inside one row
    from curate.ops.decontam.grams import unfmix64
    from curate.text import fmix64

    rng = np.random.default_rng(0)
    sample = rng.integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 1000, dtype=np.uint64)
    assert (unfmix64(fmix64(sample)) == sample).all() and (fmix64(unfmix64(sample)) == sample).all()
    every = toks.raw_every(8)
    rows_every, inside = toks.locate(np.arange(len(every)), 8)
    assert (np.flatnonzero(inside) == pos).all() and (fmix64(every[pos]) == hashes).all()
    assert (rows_every[pos] == rows).all() and (unfmix64(hashes) == toks.windows(8, raw=True)[1]).all()
    members = rng.choice(hashes, 500, replace=False)
    items = rng.integers(0, 50, 500)
    index = GramSet(np.concatenate([members, members[:50]]), np.concatenate([items, items[:50] + 1]))
    qpos, found = index.lookup(hashes)
    table: dict[int, set[int]] = {}
    for h, i in zip(np.concatenate([members, members[:50]]).tolist(), np.concatenate([items, items[:50] + 1]).tolist(),
                    strict=True):
        table.setdefault(h, set()).add(i)
    want = sorted((q, i) for q, h in enumerate(hashes.tolist()) for i in table.get(h, ()))
    assert sorted(zip(qpos.tolist(), found.tolist(), strict=True)) == want and len(want) >= 500


def test_token_strings_are_cut_only_for_exact_and_fuzzy(traces, monkeypatch):
    """Tokens hashes tokens from the text's bytes: n-gram matching of long responses cuts no token
    strings (``tokenize_series``), exact and fuzzy cut them for their field only; ``holding``
    finds every position of the given token hashes, as ``np.isin`` does."""
    import numpy as np

    import curate.ops.decontam.grams as grams
    from curate.ops.decontam.grams import Tokens

    toks = Tokens(traces["thinking"].head(50))
    common = np.unique(toks.hashes)[:: max(1, len(np.unique(toks.hashes)) // 40)]
    for values in (common, common[:1], np.empty(0, np.uint64), np.array([1, 2, 3], dtype=np.uint64)):
        assert np.array_equal(toks.holding(values), np.flatnonzero(np.isin(toks.hashes, values)))
    assert len(toks.holding(common)) > 100

    step = Decontaminate(fields=["problem", "thinking", "solution"])
    step.index  # noqa: B018  (built first: the index of the benchmarks' own texts may cut strings)
    cut: list[str] = []  # the field of each text column cut into token strings
    tokenize = grams.tokenize_series
    monkeypatch.setattr(grams, "tokenize_series", lambda texts: cut.append(texts.name) or tokenize(texts))
    k = pl.int_range(pl.len())  # every other problem made clean: exact and fuzzy search those
    batch = traces.head(300).with_columns(pl.when(k % 2 == 0).then(pl.format("unrelated question {} on pears", k))
                                          .otherwise(pl.col("problem")).alias("problem"))
    assert step.apply(batch, 0).rejected.height >= 150
    assert cut and set(cut) == {"problem"}  # the problem field only (exact, fuzzy), never the responses
    monkeypatch.setattr(grams, "tokenize_series", lambda texts: (_ for _ in ()).throw(AssertionError("cut")))
    assert Decontaminate(fields=["thinking", "solution"], method=["ngram"]).apply(batch, 0).rejected.height >= 50


def test_pruned_search_equals_every_method_and_field_searched_alone(traces, problems):
    """A row a method matched is not searched by later methods, nor by later fields once one scored
    1 (issue 19): the result equals running each (method, field) alone and taking, per row, the
    first method in ``method`` that matched, its best score, on ties the earlier field."""
    rng = random.Random(3)
    pinned = {r[0] for r in json.loads((REPO / "tests" / "data" / "decontam_flags.json").read_text())["problems"]}
    odd = traces.head(300).with_row_index("k").with_columns(  # every other problem rewritten: score < 1
        pl.struct("k", "problem").map_elements(lambda r: rewrite(r["problem"], ("number", "find")[r["k"] % 2], rng)
                                               if r["k"] % 2 else r["problem"], return_dtype=pl.String).alias("problem"))
    data = pl.concat([odd.select("id", "problem", "thinking", "solution"),
                      problems.filter(pl.col("id").is_in(pinned) | (pl.int_range(pl.len()) < 1500))
                      .select("id", "problem", pl.lit("").alias("thinking"), pl.lit("").alias("solution"))])
    alone = {(m, f): Decontaminate(method=[m], fields=[f]).matches(data)
             for m in ("ngram", "exact", "fuzzy") for f in ("problem", "thinking", "solution")
             if m == "ngram" or f == "problem"}
    cols = ["row", "decontam_benchmark", "decontam_item", "decontam_method", "decontam_score", "decontam_span"]
    for methods, fields in ((["ngram", "exact", "fuzzy"], ["problem", "thinking", "solution"]),
                            (["fuzzy", "exact", "ngram"], ["solution", "thinking", "problem"])):
        want: dict[int, tuple] = {}
        for m in methods:
            best: dict[int, tuple] = {}
            for f in fields if m == "ngram" else ["problem"]:
                for r in alone[(m, f)].select(cols).iter_rows():
                    if r[0] not in want and (r[0] not in best or r[4] > best[r[0]][4]):
                        best[r[0]] = r
            want.update(best)
        got = Decontaminate(method=methods, fields=fields).matches(data).select(cols)
        assert sorted(got.iter_rows()) == sorted(want.values()), (methods, fields)
        assert {"ngram", "exact", "fuzzy"} <= set(got["decontam_method"]) or methods[0] == "fuzzy"
        assert got.height > 300
