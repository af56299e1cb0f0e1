"""minhash_dedup on real problems and traces: datasketch-identical signatures, planted duplicates
scored against brute-force exact Jaccard, clusters, keep policies, rejects."""

from __future__ import annotations

import glob
import json
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read
from curate.errors import RecipeError
from curate.globalpass import run_here
from curate.ops import MinHashDedup
from curate.ops.dedup.minhash import Signer, char_shingle_hash32, shingle_hash32, shingles
from curate.step import build_step
from curate.text import units

datasketch = pytest.importorskip("datasketch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.planted import VARIANTS, exact_jaccard_pairs, held_out, kept_rows, merges, plant, score  # noqa: E402


def _frame(texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "problem": texts,
                         "thinking": [""] * len(texts), "solution": [""] * len(texts)})


@pytest.fixture(scope="module")
def traces(shared_data) -> pl.DataFrame:
    """Every real trace, read file by file (see the report on reading the folder at once)."""
    frames = [pl.from_arrow(b.traces) for f in sorted(glob.glob(str(shared_data / "traces" / "*.jsonl")))
              for b in read(f).batches(5000)]
    return pl.concat(frames)


@pytest.fixture(scope="module")
def problems(shared_data) -> list[str]:
    return [r["problem"] for f in sorted((shared_data / "problems").glob("*.json"))
            for r in json.loads(f.read_text())]


@pytest.mark.parametrize(("unit", "size", "hashfunc"), [("word", 3, shingle_hash32), ("word", 5, shingle_hash32),
                                                        ("char", 24, char_shingle_hash32)])
def test_signatures_equal_datasketch(problems, unit, size, hashfunc):
    texts = problems[:150] + problems[-150:] + ["", "Two words", "x"]
    sig, _, _ = Signer(100, 7, unit, size).sign(texts)
    for k, text in enumerate(texts):
        m = datasketch.MinHash(num_perm=100, seed=7, hashfunc=hashfunc)
        m.update_batch(shingles(units(text, unit), size, unit))
        assert np.array_equal(m.hashvalues, sig[k]), (k, text[:80])


def test_planted_duplicates_recall_and_false_positives(traces):
    originals = traces["problem"].unique(maintain_order=True).to_list()
    texts, planted = plant(originals, 800, seed=3)
    step = MinHashDedup()
    step_rep = kept_rows(step, _frame(texts))
    pairs, jac = exact_jaccard_pairs(texts, step.size, step.shingle)
    s = score(step_rep, pairs, jac, step.threshold)
    assert s["true_pairs"] > 700
    assert s["false_drops"] == 0, s
    n0 = len(originals)
    # every planted copy at exact Jaccard >= 0.72 to its original is caught, bar LSH misses
    jac_of = {tuple(p): j for p, j in zip(pairs.tolist(), jac)}
    close = [(src, n0 + k) for k, (src, _) in enumerate(planted) if jac_of.get((src, n0 + k), 0) >= step.threshold]
    assert len(close) > 700
    assert np.mean([step_rep[a] == step_rep[b] for a, b in close]) >= 0.98
    # distinct originals above the threshold that stay apart differ in their numbers (Minerva
    # subproblems on one preamble): same_numbers=False would merge them
    true = pairs[(jac >= step.threshold) & (pairs[:, 1] < n0)]
    apart = true[step_rep[true[:, 0]] != step_rep[true[:, 1]]]
    nums = step.numbers(_frame(texts))
    assert len(apart) >= 30 and (nums[apart[:, 0]] != nums[apart[:, 1]]).all()
    caught: dict[str, list[bool]] = {}
    for k, (src, variant) in enumerate(planted):
        caught.setdefault(variant, []).append(bool(step_rep[n0 + k] == step_rep[src]))
    rate = {v: float(np.mean(c)) for v, c in caught.items()}
    assert set(rate) == set(VARIANTS)
    assert rate["whitespace"] == 1.0 and rate["numbering"] >= 0.97, rate
    assert rate["reorder"] >= 0.9 and rate["changed_word"] >= 0.8 and rate["latex_spacing"] >= 0.8, rate
    # the LSH alone (no Jaccard check) merges more: verification is what keeps precision
    loose = MinHashDedup(verify="none", threshold=0.72)
    loose_rep = kept_rows(loose, _frame(texts))
    assert (loose_rep != np.arange(len(texts))).sum() >= (step_rep != np.arange(len(texts))).sum()


def test_distinct_problems_are_not_merged(shared_data):
    """Held-out planted set: 1,500 distinct real training problems + 300 edited copies. Copies stay
    with their original, and distinct problems are not put together: the rows dropped as a
    duplicate of another original are restatements with the same answer (the training set has
    them), except at most two pairs per seed that differ in one word of a short problem
    (COMBINATION / TARTAR) or only in a figure's answer choices."""
    records = [r for f in sorted((shared_data / "problems").glob("*.json")) for r in json.loads(f.read_text())]
    answers: dict[str, set[str]] = {}
    for r in records:
        answers.setdefault(r["problem"], set()).add(str(r["answer"]).replace(" ", ""))
    for seed in (0, 1):
        texts, origin = held_out([r["problem"] for r in records], seed=seed)
        step = MinHashDedup()
        step_rep = kept_rows(step, _frame(texts))
        m = merges(step_rep, origin)
        assert m["copies_caught"] >= 0.93 * m["copies"], m
        wrong = [k for k in np.flatnonzero(step_rep != np.arange(len(texts)))
                 if origin[step_rep[k]] != origin[k]
                 and not answers[texts[origin[k]]] & answers[texts[origin[step_rep[k]]]]]
        assert len(wrong) <= 2, [texts[k][:80] for k in wrong]
        assert m["false_merges"] <= 20, m  # the rest: the same problem twice in the training set
    # numbers make the problem: one changed number is above the threshold but not a duplicate
    balls = ["How many ways are there to put 4 balls in 3 boxes if the balls are not distinguishable "
             "and neither are the boxes?", "How many ways are there to put 5 balls in 3 boxes if the "
             "balls are not distinguishable and neither are the boxes?", "Problem 7: How many ways are "
             "there to put 4 balls in 3 boxes if the balls are not distinguishable and neither are the boxes?"]
    step = MinHashDedup()
    step_rep = kept_rows(step, _frame(balls))
    assert list(step_rep) == [0, 1, 0]
    loose = MinHashDedup(same_numbers=False)
    loose_rep = kept_rows(loose, _frame(balls))
    assert list(loose_rep) == [0, 0, 0]


def test_shared_figure_with_another_question_is_not_a_duplicate(problems):
    """Two problems on one long [asy] figure, asking different questions: Jaccard over 0.72 with the
    figure code, far apart without it (the default leaves [asy] blocks out of the shingles)."""
    figure = next(p[p.index("[asy]"): p.index("[/asy]") + 6] for p in problems
                  if p.count("[asy]") == 1 and p.index("[/asy]") - p.index("[asy]") > 800)
    a = "In the figure below, what is the area of the shaded region?\n" + figure
    b = "In the figure below, how many right angles are there among the angles drawn?\n" + figure
    pairs, jac = exact_jaccard_pairs([a, b], 3)
    assert jac[0] >= 0.72
    with_figure = MinHashDedup(ignore_asy=False)
    with_figure_rep = kept_rows(with_figure, _frame([a, b]))
    assert list(with_figure_rep) == [0, 0]
    default = MinHashDedup()
    default_rep = kept_rows(default, _frame([a, b]))
    assert list(default_rep) == [0, 1]


def _chain(base: str) -> list[str] | None:
    """base, base with k words changed early, that with k more changed late (numbers left as they
    are): J(a,b), J(b,c) >= 0.72 > J(a,c)."""
    words = base.split(" ")
    for k in range(1, 8):
        early = range(2, 2 + 6 * k, 6)
        late = range(len(words) - 3, len(words) - 3 - 6 * k, -6)
        b = [("alpha" if i in early and not re.search(r"\d", w) else w) for i, w in enumerate(words)]
        c = [("omega" if i in late and not re.search(r"\d", w) else w) for i, w in enumerate(b)]
        texts = [base, " ".join(b), " ".join(c)]
        pairs, jac = exact_jaccard_pairs(texts, 3)
        j = {tuple(p): v for p, v in zip(pairs.tolist(), jac)}
        if j.get((0, 1), 0) >= 0.72 and j.get((1, 2), 0) >= 0.72 and j.get((0, 2), 0) < 0.72:
            return texts
    return None


def test_chains_do_not_merge_rows_that_are_far_apart(problems):
    """A~B and B~C but not A~C: B is dropped as A's duplicate and C, far from A, is kept (connected
    components would drop C too); with C first in line, C is kept and so is A."""
    rng = random.Random(0)
    bases = [t for t in problems[:3000] if 50 <= len(t.split(" ")) <= 90 and "[asy]" not in t]
    chains = [c for c in (_chain(b) for b in bases[:40]) if c][:5]
    assert len(chains) == 5  # real problems where A~B and B~C but not A~C
    texts = [t for c in chains for t in c] + rng.sample(problems, 300)
    step = MinHashDedup()
    step_rep = kept_rows(step, _frame(texts))
    for k in range(5):
        assert (step_rep[3 * k], step_rep[3 * k + 1], step_rep[3 * k + 2]) == (3 * k, 3 * k, 3 * k + 2)
    backwards = [t for c in chains for t in reversed(c)]
    step_rep = kept_rows(step, _frame(backwards))
    assert list(step_rep) == [k // 3 * 3 if k % 3 == 1 else k for k in range(15)]


def test_pipeline_keeps_one_per_cluster_with_policies(traces, tmp_path):
    # the two AIME 2024 files answer the same 30 problems: 30 clusters of two
    data = traces.with_columns(
        pl.col("extra").map_elements(lambda e: bool(json.loads(e)["score"]), return_dtype=pl.Boolean)
        .alias("verify_correct"))
    longest = Pipeline([MinHashDedup(keep="longest")], batch_size=400).run(read(data), out=tmp_path / "long")
    rej = longest.rejects("minhash_dedup")
    aime = rej.filter(pl.col("source").str.contains("aime24"))
    assert aime.height == 30
    kept = longest.to_polars()
    length = {r["id"]: len(r["thinking"] or "") + len(r["solution"] or "") for r in traces.iter_rows(named=True)}
    assert set(aime["duplicate_of"]) <= set(kept["id"])
    for r in aime.iter_rows(named=True):
        assert length[r["duplicate_of"]] >= length[r["id"]]
        assert r["minhash_jaccard"] == 1.0
        assert r["reject_reason"].startswith("near duplicate (MinHash")
    assert kept.height + rej.height == traces.height
    best = Pipeline([MinHashDedup(keep="best")], batch_size=400).run(read(data), out=tmp_path / "best")
    correct = dict(zip(data["id"], data["verify_correct"]))
    for r in best.rejects("minhash_dedup").iter_rows(named=True):
        assert correct[r["duplicate_of"]] or not correct[r["id"]]
    first = Pipeline([MinHashDedup(keep="first")], batch_size=400).run(read(data), out=tmp_path / "first")
    order = {i: k for k, i in enumerate(data["id"])}
    assert all(order[r["duplicate_of"]] < order[r["id"]] for r in first.rejects("minhash_dedup").iter_rows(named=True))


def test_capped_shingle_sets_estimate_jaccard(traces):
    """Rows under max_shingles compare exactly; long traces compare on their smallest hashes, a
    sample of the union, close to the exact Jaccard (and the memory per row is bounded)."""
    from curate.ops.dedup.minhash import ShingleSets, shingle_keys_of

    rng = random.Random(0)
    base = traces.head(40)
    rates = [0.005 + 0.1 * rng.random() for _ in range(base.height)]  # 0.5-10.5% of a row's words replaced
    copies = base.with_columns(pl.Series("thinking", [
        " ".join("zzz" if rng.random() < rate else w for w in (t or "").split(" "))
        for t, rate in zip(base["thinking"].to_list(), rates, strict=True)]))
    frame = pl.concat([base, copies])
    step = MinHashDedup(mode="problem_response")
    _, rows, h = Signer(100, 1, "word", 5).sign(step._text(frame))
    pairs = np.stack([np.arange(40), np.arange(40, 80)], axis=1)
    exact = ShingleSets(shingle_keys_of(rows, h, 0, 1 << 30), 80, 1 << 30).jaccard(pairs)
    capped = shingle_keys_of(rows, h, 0, 256)
    assert len(capped) <= 256 * 80 < len(np.unique(rows.astype(np.uint64) << np.uint64(32) | h))
    estimate = ShingleSets(capped, 80, 256).jaccard(pairs)
    assert exact.min() < 0.6 and exact.max() > 0.8  # a spread of similarities
    assert np.abs(estimate - exact).mean() < 0.03 and np.abs(estimate - exact).max() < 0.1
    short = MinHashDedup()
    _, rows, h = Signer(100, 1, "word", 3).sign(short._text(frame))
    keys = shingle_keys_of(rows, h, 0, 256)  # problems are shorter than 256 shingles: exact
    assert np.array_equal(ShingleSets(keys, 80, 256).jaccard(pairs),
                          ShingleSets(shingle_keys_of(rows, h, 0, 1 << 30), 80, 1 << 30).jaccard(pairs))


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashDedup(bands=20, rows=8, num_perm=100)
    with pytest.raises(ValueError, match="threshold"):
        MinHashDedup(threshold=1.5)
    with pytest.raises(RecipeError, match="keep"):
        build_step("minhash_dedup", {"keep": "random"})
    assert MinHashDedup(mode="problem_response").size == 5
    assert MinHashDedup(shingle="char").size == 24


def test_problem_response_mode_compares_whole_traces(traces):
    # the two AIME 2024 runs answer the same 30 problems with different responses
    aime = traces.filter(pl.col("source").str.contains("aime24"))
    by_problem = MinHashDedup()
    by_problem_rep = kept_rows(by_problem, aime)
    whole = MinHashDedup(mode="problem_response", verify="signature")
    whole_rep = kept_rows(whole, aime)
    assert (by_problem_rep != np.arange(aime.height)).sum() == 30
    assert (whole_rep != np.arange(aime.height)).sum() == 0
    assert whole.size == 5


def test_clusters_checked_in_groups_give_the_same_answer(traces, monkeypatch):
    """A big input's clusters are decided in groups of whole clusters, one unit of work each: the
    same rows are kept as when every cluster is decided in one group."""
    import curate.ops.dedup.minhash as minhash

    frame = traces.head(3000)
    frame = pl.concat([frame, frame.head(400).with_columns(pl.col("id") + "-copy")])
    step = MinHashDedup(mode="problem_response", verify="jaccard")
    whole = kept_rows(step, frame, batch_size=500)
    monkeypatch.setattr(minhash, "_ROWS_PER_CHECK", 50)
    grouped = kept_rows(step, frame, batch_size=500)
    assert (whole != np.arange(frame.height)).sum() >= 400
    assert np.array_equal(whole, grouped)


def test_byte_tokens_equal_the_regex_tokens(traces, problems):
    """``word_token_hashes`` (runs of word bytes, numpy) finds the tokens ``tokenize_series`` (the
    ``\\w+`` regex) finds, row for row, with the same ``token_hash``: on every real text field and
    on non-ASCII letters, digits, marks, joiners, CJK, astral characters, long tokens, nulls."""
    from curate.text import token_hash, tokenize_series, word_token_hashes

    odd = ["", None, "ÀÉÎ ǅungla ﬃ straße İstanbul ΣΑΣ x²³ ½ ٣٤ 𝔘𝔫𝔦 ０１２ a_b-c\u200dd e\u0301f",
           "日本語のテキスト、句読点。", "abcdefghijklmnopqrstuvwxyz0123456789 ab", "a", "aaaaaaaa", "aaaaaaaaa",
           "end", "start", "\t\n", "x" * 300, "Ωmega Å K"]
    fields = [traces[c].cast(pl.String) for c in ("problem", "thinking", "solution")]
    texts = pl.concat([pl.Series(problems + odd, dtype=pl.String), *fields])
    want = tokenize_series(texts)
    lengths, hashes = word_token_hashes(texts)
    assert np.array_equal(lengths, want.list.len().fill_null(0).to_numpy())
    flat = want.explode().drop_nulls().to_list()
    assert len(flat) > 1_000_000 and np.array_equal(hashes, np.array([token_hash(t) for t in flat], dtype=np.uint64))


def test_numbers_compare_as_the_sorted_joined_numbers(problems):
    """Two problems have the same number hash exactly when their numbers (``\\d+`` after a leading
    "3. " or "Problem 2:", leading zeros dropped) sorted and joined are the same string, as the
    step first defined it (a lone 0 then reads as no number)."""
    from curate.ops.dedup.minhash import _LEADING_NUMBER

    rng = random.Random(5)
    bits = ["0", "00", "007", "7", "12", "٣", "٠٣", "０１", "1234567890", "00000000012345", "x", "a.", "3.", "(a)",
            "Problem 12:", "problem 3.", " ", "\n", "İ", "é", "[asy]1 2[/asy]", "1.5", "2^10", "b)", "12)"]
    texts = ["".join(rng.choice(bits) + rng.choice(["", " "]) for _ in range(rng.randint(0, 8))) for _ in range(5000)]
    texts += problems + [None, "", "0", "00", "1. 0", "1.  5 5", "PROBLEM 1: 5", "A. 5", "a. 5"]
    frame = pl.DataFrame({"problem": texts}, schema={"problem": pl.String})
    for step in (MinHashDedup(), MinHashDedup(ignore_asy=False)):
        got = step.numbers(frame)
        joined = frame.select(pl.lit(step._problem(frame)).fill_null("").str.replace(_LEADING_NUMBER, "")
                              .str.extract_all(r"\d+").list.eval(pl.element().str.strip_chars_start("0"))
                              .list.sort().list.join(" "))[:, 0].to_list()
        first_of: dict[Any, int] = {}
        same_got = [first_of.setdefault(("got", int(g)), k) for k, g in enumerate(got)]
        same_want = [first_of.setdefault(("want", w), k) for k, w in enumerate(joined)]
        assert same_got == same_want
        assert len(set(joined)) > 4000
    assert not MinHashDedup(same_numbers=False).numbers(frame).any()


def test_parts_signed_together_give_the_same_answer(traces, monkeypatch):
    """Consecutive parts are read and signed together, a few MiB at a time: parts of any size,
    signed in batches of one part or of many, one batch at a time or several side by side (the
    local engine signs as many at once as it has threads), keep and reject the same rows with
    the same Jaccard values."""
    import curate.ops.dedup.minhash as minhash

    frame = traces.head(1500)
    frame = pl.concat([frame, frame.head(300).with_columns(pl.col("id") + "-copy",
                                                           pl.col("problem").str.replace(" ", "  "))])
    step = MinHashDedup()

    def run(batch_size: int) -> pl.DataFrame:
        with tempfile.TemporaryDirectory() as folder:
            result = run_here(step, list(frame.iter_slices(batch_size)), Path(folder))
        return result.rejected.select("id", "duplicate_of", "minhash_jaccard").sort("id")

    together = run(97)
    monkeypatch.setattr(minhash, "_SIGN_TEXT_BYTES", 1)  # every part signed on its own
    apart = run(97)
    whole = run(frame.height)
    from curate.engines import LocalEngine

    monkeypatch.setattr(LocalEngine, "threads_per_unit", lambda self: 1)  # one batch at a time
    one_at_a_time = run(97)
    monkeypatch.setattr(LocalEngine, "threads_per_unit", lambda self: 5)  # five at once: out of order
    side_by_side = run(97)
    assert together.height >= 300
    for other in (apart, whole, one_at_a_time, side_by_side):
        assert together.equals(other)


def test_the_pass_loads_no_pandas_or_scipy(tmp_path):
    """The step's pass and apply import neither pandas (pyarrow's ``Array.to_numpy`` would: 0.2-0.5 s
    per process) nor scipy or datasketch, in a fresh interpreter."""
    import subprocess

    code = f"""
import sys, json
from pathlib import Path
import polars as pl
from curate.globalpass import run_here
from curate.ops.dedup.minhash import MinHashDedup
texts = ["Find x if 3x = 9 in İstanbul, ünïcode", "Find x if 3x = 9.", "[asy]draw((0,0));[/asy] Compute 12345678901 + 1",
         "Compute 12345678901 + 1", "Other words entirely, nothing shared"] * 40
frame = pl.DataFrame({{"id": [str(i) for i in range(len(texts))], "problem": texts,
                      "thinking": ["t"] * len(texts), "solution": ["s"] * len(texts)}})
result = run_here(MinHashDedup(), list(frame.iter_slices(64)), Path({str(tmp_path)!r}))
print(json.dumps([result.stats["dropped"], [m for m in ("pandas", "scipy", "datasketch") if m in sys.modules]]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": "/usr/bin:/bin"})
    dropped, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert dropped >= 190 and loaded == []


def test_int_values_reads_arrow_integers_as_numpy():
    import pyarrow as pa

    from curate.text import int_values

    for t in (pa.int32(), pa.int64(), pa.uint8()):
        values = pa.array([5, 0, 7, 3, 9], t).slice(1, 3)  # a slice: the buffer's offset counts
        got = int_values(values)
        assert got.tolist() == [0, 7, 3] and got.dtype.itemsize == t.bit_width // 8
    with pytest.raises(ValueError, match="without nulls"):
        int_values(pa.array([1, None], pa.int32()))
    with pytest.raises(ValueError, match="integers"):
        int_values(pa.array([1.5], pa.float64()))


def test_short_token_hashes_kept_across_batches_equal_hashing_each(problems, monkeypatch):
    """Short tokens' hashes are kept from batch to batch (a word seen before is looked up, not
    hashed again): batches that share words, and batches after the table is full, give every
    token ``token_hash`` of its text, as hashing each token on its own does."""
    import numpy as np

    import curate.text as text
    from curate.text import token_hash, tokenize_series, word_token_hashes

    monkeypatch.setattr(text, "_SHORT_SEEN", (np.empty(0, np.uint64), np.empty(0, np.uint64)))
    monkeypatch.setattr(text, "SHORT_SEEN_MAX", 3000)  # full after a few batches: new words hashed, not kept
    batches = [pl.Series(problems[k: k + 300], dtype=pl.String) for k in range(0, 2400, 200)]  # overlapping
    sizes = []
    for batch in batches:
        lengths, hashes = word_token_hashes(batch)
        flat = tokenize_series(batch).explode().drop_nulls().to_list()
        assert np.array_equal(hashes, np.array([token_hash(t) for t in flat], dtype=np.uint64))
        sizes.append(len(text._SHORT_SEEN[0]))
        keys = text._SHORT_SEEN[0]
        assert (np.diff(keys.astype(np.float64)) >= 0).all() and len(np.unique(keys)) == len(keys)
    assert 0 < sizes[0] < sizes[1] and sizes[-1] <= 3000 and sizes[-1] == sizes[-2]  # grew, then stopped


def test_signer_threads_follow_the_cpus_this_process_may_use(monkeypatch) -> None:
    """A container or ``taskset`` limit, not the host's core count, sizes the signing threads."""
    import os

    from curate.ops.dedup.minhash import Signer

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert Signer().workers == 3
    assert Signer(workers=5).workers == 5
