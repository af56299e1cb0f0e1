"""Corruption operators on real long-CoT traces: seeded, ratio-exact, auditable, problem untouched."""

from __future__ import annotations

import re
from functools import cache, lru_cache
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate import Pipeline, read
from curate.answers import same_answer
from curate.errors import RecipeError
from curate.ops.corrupt import (
    CorruptDigits,
    CorruptWrongAnswer,
    DeleteSteps,
    InsertSteps,
    RemoveKeywords,
    ShuffleSteps,
)
from curate.ops.corrupt.base import share
from curate.ops.structure import REASONING_KEYWORDS, count_keywords, step_starts
from curate.ops.structure.segment import Steps
from curate.schema import trace_id
from curate.step import build_step

TRACES = Path(__file__).resolve().parent.parent / "curate" / "data" / "real" / "traces"  # shipped, gzipped


@cache
def traces(name: str) -> pl.DataFrame:
    return pl.concat([pl.from_arrow(b.traces) for b in read(TRACES / f"{name}.gz").batches(4096)])


def no_thinking(df: pl.DataFrame) -> pl.DataFrame:
    """Real rows with their reasoning taken out (every real trace has some since markerless
    responses read as reasoning + answer paragraph): what a row without thinking looks like."""
    return df.with_columns(pl.lit("").alias("thinking"),
                           pl.concat_str(pl.col("id"), pl.lit(":no-thinking")).alias("id"))


@lru_cache(maxsize=1)
def mixed() -> pl.DataFrame:
    """~150 real rows with thinking, short (MATH-500, markerless ones included) to very long
    (AIME), plus 10 without thinking."""
    math = traces("skythought_correct5k27b_math500.jsonl")
    parts = [
        math.head(80),
        no_thinking(math.slice(80, 10)),
        traces("skythought_corrupt07_32b_amc23.jsonl"),
        traces("skythought_correct5k32b_ckpt140_aime24.jsonl").head(10),
        traces("skythought_reflection10_32b_aime24.jsonl").head(10),
    ]
    return pl.concat(parts)


@lru_cache(maxsize=1)
def small() -> pl.DataFrame:
    """32 real rows for the property tests: MATH-500 (some without thinking), AMC, two AIME traces."""
    math = traces("skythought_correct5k27b_math500.jsonl")
    return pl.concat([
        math.head(16),
        no_thinking(math.slice(16, 2)),
        traces("skythought_corrupt07_32b_amc23.jsonl").head(12),
        traces("skythought_correct5k32b_ckpt140_aime24.jsonl").head(2),
    ])


def fitted(op, df: pl.DataFrame):  # noqa: ANN001, ANN201
    if op.needs_global_pass:
        op.fit(iter([df]))
    return op


def run(op, df: pl.DataFrame | None = None) -> pl.DataFrame:  # noqa: ANN001
    df = mixed() if df is None else df
    result = fitted(op, df).apply(df, 0)
    n_rej = 0 if result.rejected is None else result.rejected.height
    assert result.kept.height + n_rej == df.height
    return result.kept


OPS = {
    "shuffle": lambda seed, r: ShuffleSteps(ratio=r, seed=seed),
    "delete": lambda seed, r: DeleteSteps(ratio=r, seed=seed),
    "insert": lambda seed, r: InsertSteps(ratio=r, seed=seed, mode="replace"),
    "insert_pure": lambda seed, r: InsertSteps(ratio=r, seed=seed),
    "digits_number": lambda seed, r: CorruptDigits(ratio=r, seed=seed),
    "digits_digit": lambda seed, r: CorruptDigits(ratio=r, seed=seed, unit="digit"),
    "keywords_sentence": lambda seed, r: RemoveKeywords(ratio=r, seed=seed),
    "keywords_phrase": lambda seed, r: RemoveKeywords(ratio=r, seed=seed, mode="phrase"),
    "wrong_answer": lambda seed, r: CorruptWrongAnswer(seed=seed),
}
TEXT = ["thinking", "solution"]


def steps_of(text: str) -> Steps:
    return Steps.of(text, step_starts(text))


# --- shared properties ---------------------------------------------------------------------------


@settings(database=None, max_examples=12, deadline=None)
@given(op=st.sampled_from(sorted(OPS)), seed=st.integers(0, 2**31), ratio=st.sampled_from([0.2, 0.33, 0.5, 0.67, 1.0]))
def test_deterministic_per_seed_and_different_for_another(op: str, seed: int, ratio: float) -> None:
    df = small()
    a = run(OPS[op](seed, ratio), df)
    b = run(OPS[op](seed, ratio), df)
    assert a.select(TEXT + ["id"]).equals(b.select(TEXT + ["id"]))
    c = run(OPS[op](seed + 1, ratio), df)
    joined = a.join(c, on="original_id", suffix="_c")
    differs = joined.filter((pl.col("thinking") != pl.col("thinking_c")) | (pl.col("solution") != pl.col("solution_c")))
    if ratio == 1.0 and op in ("delete", "keywords_sentence", "keywords_phrase"):
        assert differs.height == 0  # removing every unit leaves no choice to the seed
    else:
        assert differs.height > joined.height // 3, f"{op}: seed {seed} and {seed + 1} gave the same output"


@pytest.mark.parametrize("op", sorted(OPS))
def test_problem_never_changes_and_ids_are_recorded(op: str) -> None:
    df = mixed()
    out = run(OPS[op](7, 0.67), df)
    base = df.select("id", "problem").rename({"id": "original_id", "problem": "problem_before"})
    joined = out.join(base, on="original_id", how="left")
    assert joined["problem_before"].null_count() == 0
    assert (joined["problem"] == joined["problem_before"]).all()
    assert out["id"].to_list() == [trace_id(p, t, s) for p, t, s in out.select("problem", "thinking", "solution").iter_rows()]
    changed = out.filter(pl.col("corrupt_touched") > 0)
    assert changed.height > 0
    assert (changed["id"] != changed["original_id"]).all()
    assert out["corrupt_kind"].str.starts_with(OPS[op](0, 0.5).name).all()


@pytest.mark.parametrize("op", ["shuffle", "delete", "insert", "digits_number", "keywords_sentence", "wrong_answer"])
def test_result_does_not_depend_on_batching(op: str) -> None:
    df = mixed()
    whole = run(OPS[op](3, 0.5), df)
    step = fitted(OPS[op](3, 0.5), df)
    pieces = [step.apply(df.slice(i, 17), i).kept for i in range(0, df.height, 17)]
    assert pl.concat(pieces).select(TEXT + ["id"]).equals(whole.select(TEXT + ["id"]))


@pytest.mark.parametrize("op", ["shuffle", "delete", "insert", "insert_pure"])
def test_structural_ops_leave_the_solution_alone(op: str) -> None:
    df = mixed()
    out = run(OPS[op](1, 0.67), df)
    assert out.select("solution").equals(df.select("solution"))
    untouched = out.filter(pl.col("corrupt_units") == 0)  # rows without thinking stay as they were
    assert untouched.height == 10 and (untouched["thinking"] == "").all()


def test_chained_corruptions_keep_the_first_original_id() -> None:
    df = mixed()
    once = run(CorruptDigits(ratio=0.5), df)
    twice = run(ShuffleSteps(ratio=1.0), once)
    assert twice["original_id"].to_list() == df["id"].to_list()
    assert set(twice["corrupt_kind"]) == {"corrupt_digits:number+shuffle_steps"}


# --- structure -----------------------------------------------------------------------------------


@settings(database=None, max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), ratio=st.floats(0.0, 1.0))
def test_shuffle_is_a_permutation_with_the_ratio_met(seed: int, ratio: float) -> None:
    df = small()
    out = run(ShuffleSteps(ratio=ratio, seed=seed), df)
    for before, after, order, moved, n, k in zip(
            df["thinking"], out["thinking"], out["corrupt_order"].to_list(), out["corrupt_steps"].to_list(),
            out["corrupt_units"], out["corrupt_touched"], strict=True):
        old = steps_of(before)
        assert n == len(old)
        assert sorted(order) == list(range(n))
        rebuilt = "".join(old.bodies[j] + old.seps[i] for i, j in enumerate(order))
        assert rebuilt == after
        assert sorted(old.bodies[j] for j in order) == sorted(old.bodies)
        assert abs(k - ratio * n) <= 1 + 1e-9 or (n >= 2 and k == 2 and ratio * n < 1.5)
        assert [i for i in range(n) if order[i] != i] == moved  # every chosen step moved, no other did


@settings(database=None, max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), ratio=st.floats(0.0, 1.0))
def test_delete_drops_the_ratio_and_keeps_order(seed: int, ratio: float) -> None:
    df = small()
    out = run(DeleteSteps(ratio=ratio, seed=seed), df)
    for before, after, kept, gone, n in zip(df["thinking"], out["thinking"], out["corrupt_order"].to_list(),
                                            out["corrupt_steps"].to_list(), out["corrupt_units"], strict=True):
        old = steps_of(before)
        assert abs(len(gone) - ratio * n) <= 1
        assert len(gone) == share(ratio, n)
        assert kept == sorted(set(range(n)) - set(gone))
        bodies = [old.bodies[i] for i in kept]
        pos = 0
        for b in bodies:  # surviving steps appear in their original order
            at = after.find(b, pos)
            assert at >= 0
            pos = at + len(b)


@pytest.mark.parametrize("mode", ["replace", "insert"])
def test_insert_takes_steps_of_other_traces(mode: str) -> None:
    df = mixed()
    op = InsertSteps(ratio=0.67, seed=5, mode=mode)
    out = run(op, df)
    steps_by_id = {i: steps_of(t).bodies for i, t in df.select("id", "thinking").iter_rows()}
    n_donors = 0
    for row in out.iter_rows(named=True):
        n, order, donors = row["corrupt_units"], row["corrupt_order"], row["corrupt_donors"]
        assert len(donors) == order.count(-1) == (row["corrupt_touched"] if mode == "replace" else len(donors))
        assert abs(len(donors) - 0.67 * n) <= 1
        old = steps_by_id[row["original_id"]]
        for d in donors:
            donor_id, idx = d.rsplit(":", 1)
            assert donor_id != row["original_id"]
            body = steps_by_id[donor_id][int(idx)]
            assert body in row["thinking"]
            n_donors += 1
        if mode == "insert":
            assert [o for o in order if o >= 0] == list(range(n))  # every original step kept, in order
            assert row["corrupt_steps"] == [i for i, o in enumerate(order) if o < 0]
            for b in old:
                assert b in row["thinking"]
        else:
            assert len(order) == n
            kept_at = [i for i, o in enumerate(order) if o >= 0]
            assert all(old[i] in row["thinking"] for i in kept_at)  # steps not replaced are still there
    assert n_donors > 500


def test_insert_replaced_steps_keep_roughly_their_length() -> None:
    df = mixed()
    out = run(InsertSteps(ratio=1.0, seed=2, mode="replace"), df)
    ratios = []
    steps_by_id = {i: steps_of(t).bodies for i, t in df.select("id", "thinking").iter_rows()}
    for row in out.filter(pl.col("corrupt_units") > 0).iter_rows(named=True):
        old = steps_by_id[row["original_id"]]
        for i, d in zip([i for i, o in enumerate(row["corrupt_order"]) if o < 0], row["corrupt_donors"], strict=True):
            donor_id, idx = d.rsplit(":", 1)
            ratios.append(len(steps_by_id[donor_id][int(idx)]) / max(1, len(old[i])))
    within = sum(0.5 <= r <= 2.0 or r > 2.0 for r in ratios) / len(ratios)  # short steps get the shortest donors
    assert within > 0.95
    assert sorted(ratios)[len(ratios) // 2] == pytest.approx(1.0, abs=0.35)


# --- content -------------------------------------------------------------------------------------


@settings(database=None, max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31), ratio=st.sampled_from([0.2, 0.5, 0.7, 1.0]))
def test_digits_number_unit_exact_share_and_only_digits_change(seed: int, ratio: float) -> None:
    df = small()
    out = run(CorruptDigits(ratio=ratio, seed=seed), df)
    mask = lambda s: re.sub(r"\d", "#", s)  # noqa: E731
    for col in TEXT:  # same_shape keeps every number's digit count: masking digits gives the same text
        assert [mask(s) for s in out[col]] == [mask(s) for s in df[col]]
    for row, before in zip(out.iter_rows(named=True), df.iter_rows(named=True), strict=True):
        assert row["corrupt_touched"] == share(ratio, row["corrupt_units"])
        number = re.compile(r"\b\d+(?:\.\d+)?\b", re.ASCII)
        n = len(number.findall(before["thinking"])) + len(number.findall(before["solution"]))
        assert row["corrupt_units"] == n
        for span in row["corrupt_spans"]:
            old = before[span["part"]][span["start"]:span["end"]]
            new = row[span["part"]][span["start"]:span["end"]]
            assert re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", old) and new != old
            assert len(new) == len(old) and (len(old.split(".")[0]) == 1 or new[0] != "0" or old[0] == "0")


def test_digits_digit_unit_and_bernoulli_and_thinking_scope() -> None:
    df = mixed()
    out = run(CorruptDigits(ratio=0.2, unit="digit", scope="thinking", seed=4), df)
    assert out["solution"].equals(df["solution"])
    for after, before, k, n in zip(out["thinking"], df["thinking"], out["corrupt_touched"], out["corrupt_units"], strict=True):
        assert len(after) == len(before)
        assert sum(a != b for a, b in zip(after, before, strict=True)) == k == share(0.2, n)
    bern = run(CorruptDigits(ratio=0.5, sampling="bernoulli", seed=4), df)
    total, hit = bern["corrupt_units"].sum(), bern["corrupt_touched"].sum()
    assert total > 20_000 and abs(hit / total - 0.5) < 0.02
    paper = run(CorruptDigits(ratio=1.0, replacement="small_int", seed=4), df)
    nums = [int(m) for t in paper["solution"] for m in re.findall(r"\b\d+\b", t)]
    assert max(nums) <= 10


@pytest.mark.parametrize("mode", ["sentence", "phrase"])
def test_remove_all_keywords_leaves_none(mode: str) -> None:
    df = mixed()
    out = run(RemoveKeywords(ratio=1.0, mode=mode), df)
    before = sum(sum(count_keywords(t)) for t in df["thinking"])
    after = [sum(count_keywords(t)) + sum(count_keywords(s)) for t, s in zip(out["thinking"], out["solution"], strict=True)]
    assert before > 5000 and sum(after) == 0
    assert (out["corrupt_touched"] == out["corrupt_units"]).all()
    shrink = out["thinking"].str.len_chars().sum() / df["thinking"].str.len_chars().sum()
    assert (0.3 < shrink < 0.95) if mode == "sentence" else (0.9 < shrink < 1.0)
    # paragraphs stay separated: no run of 3+ newlines appears that was not there
    assert sum(t.count("\n\n\n") for t in out["thinking"]) <= sum(t.count("\n\n\n") for t in df["thinking"])


@settings(database=None, max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31), ratio=st.floats(0.0, 1.0), mode=st.sampled_from(["sentence", "phrase"]))
def test_remove_keywords_ratio_per_trace(seed: int, ratio: float, mode: str) -> None:
    out = run(RemoveKeywords(ratio=ratio, mode=mode, seed=seed), small())
    for k, n, spans in zip(out["corrupt_touched"], out["corrupt_units"], out["corrupt_spans"].to_list(), strict=True):
        assert k == share(ratio, n) == len(spans)
        assert abs(k - ratio * n) <= 1


def test_wrong_answer_rows_fail_and_untouched_rows_keep_their_verdict() -> None:
    df = mixed()
    op = fitted(CorruptWrongAnswer(seed=0, on_untouched="keep"), df)
    out = op.apply(df, 0).kept
    done = out.filter(pl.col("corrupt_touched") > 0)
    assert done.height > 0.75 * df.height
    # only truncated traces (thinking never closed, no solution) have no answer to corrupt
    assert (out.filter(pl.col("corrupt_touched") == 0)["thinking_closed"] == False).all()  # noqa: E712
    for row in done.iter_rows(named=True):
        assert not same_answer(row["answer"], row["corrupt_answer_from"])
        assert not same_answer(row["answer"], row["reference_answer"])
        assert same_answer(row["answer"], row["corrupt_answer_to"])
        assert row["corrupt_answer_to"] in row["solution"] or row["corrupt_answer_to"] in row["thinking"]
    untouched = out.filter(pl.col("corrupt_touched") == 0)
    base = df.filter(pl.col("id").is_in(untouched["original_id"].to_list()))
    assert untouched.select(TEXT).equals(base.select(TEXT))
    verify_mod = pytest.importorskip("curate.ops.verify.step")
    verify = verify_mod.Verify(keep="all", workers=0)
    before = verify.apply(df.with_columns(pl.lit(None, dtype=pl.String).alias("answer")), 0).kept
    after = verify.apply(out.with_columns(pl.lit(None, dtype=pl.String).alias("answer")), 0).kept
    verdict = dict(zip(before["id"], before["verify_correct"], strict=True))
    flips = 0
    for oid, ok, touched in zip(after["original_id"], after["verify_correct"], after["corrupt_touched"], strict=True):
        if touched == 0:
            assert ok == verdict[oid]  # untouched rows keep their verdict
        elif verdict[oid] is True:
            assert ok is not True  # a corrupted correct row no longer verifies
            flips += 1
    assert flips > 50


def test_wrong_answer_rejects_rows_without_an_answer_by_default() -> None:
    df = mixed()
    result = fitted(CorruptWrongAnswer(), df).apply(df, 0)
    assert result.rejected is not None
    assert result.rejected["reject_reason"].str.starts_with("corrupt_wrong_answer:").all()
    assert (result.kept["corrupt_touched"] > 0).all()


def test_wrong_values_are_plausible() -> None:
    op = fitted(CorruptWrongAnswer(), mixed())
    import random

    rng = random.Random(0)
    for a, method in [("204", "perturb_int"), ("0", "perturb_int"), ("3.75", "perturb_decimal"),
                      ("\\frac{14}{3}", "perturb_fraction"), ("7/2", "perturb_fraction"),
                      ("45^\\circ", "perturb_leading_number"), ("(C)", "choice"), ("\\text{(B)}", "choice"),
                      ("x^2+1", "borrow")]:
        w, how = op.wrong_value(rng, a, a)
        assert how == method and not same_answer(w, a), (a, w, how)
        if method == "perturb_int":
            assert int(w) >= 0
        if method == "perturb_decimal":
            assert re.fullmatch(r"\d+\.\d\d", w)


def test_recipe_entries_and_validation() -> None:
    assert isinstance(build_step("shuffle_steps", {"ratio": 0.67, "seed": 0}), ShuffleSteps)
    assert build_step("insert_steps", {"ratio": 0.67, "mode": "insert"}).kind() == "insert_steps:insert"
    with pytest.raises(RecipeError, match="ratio"):
        build_step("delete_steps", {"ratio": 1.5})
    with pytest.raises(RecipeError, match="verify"):
        build_step("corrupt_wrong_answer", {"mode": "teacher"})
    with pytest.raises(RecipeError, match="small_int"):
        build_step("corrupt_digits", {"unit": "digit", "replacement": "small_int"})
    assert set(REASONING_KEYWORDS) >= {"wait", "alternatively", "hmm"}


def test_variants_through_the_runner(tmp_path: Path) -> None:
    src = read(TRACES / "skythought_corrupt07_32b_amc23.jsonl.gz")
    steps = [ShuffleSteps(ratio=0.67), InsertSteps(ratio=0.67, mode="replace"), CorruptWrongAnswer()]
    result = Pipeline(steps, batch_size=16).run(src, out=tmp_path / "v", progress=False)
    df = result.to_polars()
    assert df.height + result.rejects().height == 40
    assert df.schema["corrupt_spans"] == pl.List(pl.Struct({"part": pl.String, "start": pl.Int32, "end": pl.Int32}))
    assert df.schema["corrupt_donors"] == pl.List(pl.String)
    assert set(df["corrupt_kind"]) == {"shuffle_steps+insert_steps:replace+corrupt_wrong_answer:synthetic"}
    assert result.manifest["seeds"]


def test_steps_columns_follow_the_corrupted_thinking() -> None:
    from curate.ops.structure.step import SegmentSteps

    df = SegmentSteps().apply(mixed(), 0).kept
    for op in (CorruptDigits(ratio=1.0), RemoveKeywords(ratio=1.0), DeleteSteps(ratio=0.5), InsertSteps(mode="insert")):
        out = run(op, df)
        for text, s, e, n in out.select("thinking", "steps_start", "steps_end", "steps_count").iter_rows():
            assert n == len(s) == len(e)
            assert "".join(text[a:b] for a, b in zip(s, e, strict=True)) == text


def test_on_untouched_reject_splits_rows_without_steps() -> None:
    df = mixed()
    result = ShuffleSteps(ratio=0.5, on_untouched="reject").apply(df, 0)
    assert result.rejected is not None
    # rejected: the 10 rows without thinking and any whose thinking is a single step (nothing to reorder)
    assert (result.rejected["thinking"] == "").sum() == 10
    assert all(len(step_starts(t)) < 2 for t in result.rejected["thinking"])
    assert result.rejected["reject_reason"].str.contains("nothing to corrupt").all()
    assert (result.kept["corrupt_touched"] >= 2).all()
    # the steps columns hold the edit's own boundaries: the moved steps, tiling the new thinking
    assert (result.kept["steps_count"] == result.kept["corrupt_units"]).all()
    for text, s0, e0 in result.kept.select("thinking", "steps_start", "steps_end").iter_rows():
        assert "".join(text[a:b] for a, b in zip(s0, e0, strict=True)) == text


# --- the paper's methods: digits (corrupt_data.py), keywords (tag_output.py) ---------------------


def paper_corrupt_numbers(text: str, ratio: float, rng) -> str:  # noqa: ANN001
    """corrupt_data.py's corrupt_numbers (NovaSky-AI/SkyThought, branch corrupt), with its RNG passed in."""
    return re.sub(r"\b\d+(\.\d+)?\b", lambda m: str(rng.randint(0, 10)) if rng.random() < ratio else m.group(),
                  text, flags=re.ASCII)


def test_digits_paper_replacement_matches_the_scripts_statistics() -> None:
    """Per number: replaced with probability ratio by randint(0, 10), which may equal it."""
    import random

    df = mixed()
    number = re.compile(r"\b\d+(?:\.\d+)?\b", re.ASCII)
    for ratio in (0.2, 0.7):
        out = run(CorruptDigits(ratio=ratio, sampling="bernoulli", replacement="paper", seed=1), df)
        units, touched = out["corrupt_units"].sum(), out["corrupt_touched"].sum()
        # the script on the same responses: how many numbers end up different
        rng, changed, total = random.Random(0), 0, 0
        for th, so in df.select("thinking", "solution").iter_rows():
            for text in (th, so):
                old = number.findall(text)
                new = number.findall(paper_corrupt_numbers(text, ratio, rng))
                if len(old) == len(new):  # (a corrupted 1.5 -> 7 keeps the count; skip the rare merge)
                    total += len(old)
                    changed += sum(a != b for a, b in zip(old, new, strict=True))
        ours, theirs = touched / units, changed / total
        assert abs(ours - theirs) < 0.02, (ratio, ours, theirs)
        assert ours < ratio  # a draw can give the number back, so fewer than ratio of them change
    with pytest.raises(ValueError, match="unit: number"):
        CorruptDigits(unit="digit", replacement="paper")


def test_remove_keywords_per_row_draws_rows_with_probability_ratio() -> None:
    df = mixed().filter(pl.col("thinking") != "")
    out = run(RemoveKeywords(ratio=0.5, per="row", seed=3), df)
    drawn = out.filter(pl.col("corrupt_units") > 0)
    assert 0.35 * df.height < drawn.height < 0.65 * df.height
    # a drawn row loses every keyword sentence, an undrawn one keeps its text
    assert (drawn["corrupt_touched"] == drawn["corrupt_units"]).all()
    assert all(sum(count_keywords(t)) == 0 for t in drawn["thinking"])
    rest = out.filter(pl.col("corrupt_units") == 0).join(df.select("id", pl.col("thinking").alias("before")),
                                                        left_on="original_id", right_on="id")
    assert (rest["thinking"] == rest["before"]).all()
    assert RemoveKeywords(per="row").kind() == "remove_keywords:sentence:per_row"


def _rewrite_server(replies: dict[str, tuple[int, str, str]], seen: list[str]):  # noqa: ANN202
    """A loopback OpenAI server answering the reflection-removal prompt with canned rewrites:
    ``replies`` maps a marker found in the prompt to (status, text, finish_reason)."""
    from curate.models.serve import make_server, start_in_thread

    def hook(path, body):  # noqa: ANN001, ANN202
        prompt = body["prompt"]
        seen.append(prompt)
        thinking = prompt.split("Reasoning:\n", 1)[1]
        for marker, (status, text, finish) in replies.items():
            if marker in thinking:
                if status != 200:
                    return status, {"error": {"message": "boom", "type": "server_error"}}, {}
                return 200, {"choices": [{"index": 0, "text": text, "finish_reason": finish}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 5}}, {}
        # default canned rewrite: keep the paragraphs that hold no reflection keyword
        kept = [p for p in thinking.split("\n\n") if not sum(count_keywords(p))]
        return 200, {"choices": [{"index": 0, "text": "\n\n".join(kept) or "Direct.", "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5}}, {}

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    return server, start_in_thread(server)


def test_remove_keywords_model_mode_rewrites_drawn_rows_through_a_cached_backend(tmp_path: Path) -> None:
    """The paper's method: per row with probability ratio, a model removes the reflections."""
    from curate.models import clear_backends

    df = mixed().filter(pl.col("thinking") != "").head(40)
    first_words = df["thinking"].str.slice(0, 60).to_list()
    bad = {first_words[0]: (500, "", "stop"), first_words[1]: (200, "cut off", "length"), first_words[2]: (200, "", "stop")}
    seen: list[str] = []
    server, url = _rewrite_server(bad, seen)
    model = {"backend": "openai", "name_or_path": "rewriter", "base_url": url, "cache": str(tmp_path / "cache.db"),
             "max_retries": 0}
    try:
        op = RemoveKeywords(ratio=1.0, mode="model", per="row", model=model)
        result = op.apply(df, 0)
        calls = len(seen)
        again = RemoveKeywords(ratio=1.0, mode="auto", per="row", model=model).apply(df, 0)  # cache hits
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    out = result.kept
    assert calls == df.height  # every row drawn at ratio 1.0, asked once
    asked = {p.split("Reasoning:\n", 1)[1] for p in seen[:calls]}
    assert asked == set(df["thinking"]) and all("Remove every reflection" in p for p in seen)
    assert len(seen) - calls == 1  # the second run: cache hits, except the error (errors are not cached)
    assert again.kept.select("thinking").equals(out.select("thinking"))
    assert set(out["corrupt_kind"]) == {"remove_keywords:model"}
    by_first = dict(zip(out["original_id"], out["corrupt_touched"], strict=True))
    failed = [df["id"][i] for i in range(3)]
    assert [by_first[i] for i in failed] == [0, 0, 0]  # failed, cut at max_tokens, empty: left unchanged
    assert result.stats["model_failed"] == 3 and result.stats["model_rewritten"] == df.height - 3
    assert result.stats["corruption"] == {"rows": df.height, "target": df.height, "changed": df.height - 3}
    rewritten = out.filter(pl.col("corrupt_touched") > 0)
    assert all(sum(count_keywords(t)) == 0 for t in rewritten["thinking"])
    solution = dict(zip(df["id"], df["solution"], strict=True))
    assert all(solution[o] == s for o, s in zip(out["original_id"], out["solution"], strict=True))


def test_remove_keywords_model_mode_draws_rows_and_needs_a_model(tmp_path: Path) -> None:
    from curate.models import clear_backends

    df = mixed().filter(pl.col("thinking") != "")
    seen: list[str] = []
    server, url = _rewrite_server({}, seen)
    model = {"backend": "openai", "name_or_path": "rewriter", "base_url": url, "cache": False}
    try:
        op = RemoveKeywords(ratio=0.2, mode="model", per="row", model=model, seed=5)
        out = op.apply(df, 0).kept
        requests = op.generation_requests(df)
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    drawn = out.filter(pl.col("corrupt_units") == 1)
    assert len(seen) == drawn.height == len(requests) and 0.1 * df.height < drawn.height < 0.3 * df.height
    # the same rows as the rule-based fallback with per: row draws (same seed, same RNG use)
    rules = RemoveKeywords(ratio=0.2, per="row", seed=5).apply(df, 0).kept
    assert set(rules.filter(pl.col("corrupt_units") > 0)["original_id"]) <= set(drawn["original_id"])
    with pytest.raises(ValueError, match="needs a model"):
        RemoveKeywords(mode="model", per="row")
    with pytest.raises(ValueError, match="per: row"):
        RemoveKeywords(mode="model", model=model)
    assert RemoveKeywords(mode="auto").method() == "sentence"
    assert RemoveKeywords(mode="auto", per="row", model=model).method() == "model"


def test_recipe_model_block_makes_keywords_the_model_rewrite() -> None:
    import yaml

    from curate.recipe import load_recipe

    doc = yaml.safe_load((Path(__file__).resolve().parent.parent / "pipelines/structure_vs_content.yaml").read_text())
    doc["input"]["path"] = str(TRACES)
    doc["model"] = {"backend": "openai", "name_or_path": "gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1"}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_text(yaml.safe_dump(doc))
        with_model = load_recipe(path).pipeline
        del doc["model"]
        path.write_text(yaml.safe_dump(doc))
        without = load_recipe(path).pipeline
    assert with_model.variants["keywords_50"][-1].method() == "model"
    assert without.variants["keywords_50"][-1].method() == "sentence"


# --- steps: the segmentation already on the row --------------------------------------------------


def model_segmented(df: pl.DataFrame) -> pl.DataFrame:
    """Rows segmented as a model might (every third paragraph opens a step), method recorded."""
    from curate.ops.structure.segment import paragraph_starts, spans

    starts, ends = [], []
    for text in df["thinking"]:
        sp = spans(paragraph_starts(text)[::3], len(text)) if text else []
        starts.append([a for a, _ in sp])
        ends.append([b for _, b in sp])
    return df.with_columns(pl.Series("steps_start", starts, dtype=pl.List(pl.Int32)),
                           pl.Series("steps_end", ends, dtype=pl.List(pl.Int32)),
                           pl.Series("steps_count", [len(s) for s in starts], dtype=pl.Int32),
                           pl.lit("model:openai:splitter", dtype=pl.String).alias("steps_method"))


@pytest.mark.parametrize("op", ["shuffle", "delete", "insert_pure"])
def test_structural_ops_use_the_rows_segmentation(op: str) -> None:
    df = model_segmented(mixed().filter(pl.col("thinking") != ""))
    out = run(OPS[op](2, 0.67), df)
    assert (out["steps_method"] == "model:openai:splitter").all()
    before = {r["id"]: r for r in df.iter_rows(named=True)}
    for row in out.iter_rows(named=True):
        old = before[row["original_id"]]
        assert row["corrupt_units"] == old["steps_count"]  # the model's steps, not the rules'
        bodies = [old["thinking"][a:b].rstrip() for a, b in zip(old["steps_start"], old["steps_end"], strict=True)]
        new = [row["thinking"][a:b].rstrip() for a, b in zip(row["steps_start"], row["steps_end"], strict=True)]
        kept = [(pos, o) for pos, o in enumerate(row["corrupt_order"]) if o >= 0]
        assert all(new[pos] == bodies[o] for pos, o in kept)
    # a row whose offsets no longer tile its thinking falls back to the rules (and says so)
    stale = df.head(3).with_columns(pl.col("thinking") + " extra")
    again = run(OPS[op](2, 0.67), stale)
    assert (again["steps_method"] == "rule:transition+inline").all()


def test_content_ops_move_the_rows_step_offsets() -> None:
    df = model_segmented(mixed().filter(pl.col("thinking") != ""))
    for op in (CorruptDigits(ratio=1.0, sampling="bernoulli", replacement="paper"), RemoveKeywords(ratio=1.0)):
        out = run(op, df)
        assert (out["steps_method"] == "model:openai:splitter").all()
        for text, s, e in out.select("thinking", "steps_start", "steps_end").iter_rows():
            assert "".join(text[a:b] for a, b in zip(s, e, strict=True)) == text
        # digits keep every step (numbers change inside them); keyword cuts may empty a step
        if isinstance(op, CorruptDigits):
            assert out["steps_count"].to_list() == df["steps_count"].to_list()
