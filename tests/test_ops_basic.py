"""The first operators on real traces: exact dedup, filter, answer extraction, sampling."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from curate import Pipeline, read
from curate.answers import extract_answer, extract_boxed
from curate.ops import ExactDedup, ExtractAnswer, Filter, Sample


@pytest.fixture(scope="module")
def rows(math500_sample) -> list[dict]:
    return [json.loads(line) for line in math500_sample.read_text().splitlines()]


def _planted(rows: list[dict]) -> list[dict]:
    """Real rows plus copies that differ only in case and whitespace, and one that differs in text."""
    out = [dict(r) for r in rows[:30]]
    for i, r in enumerate(rows[:5]):
        dup = dict(r, idx=1000 + i)
        dup["code"] = ["  " + r["code"][0].replace(" ", "  ").replace("the ", "THE ") + "\n\n"]
        out.append(dup)
    near = dict(rows[5], idx=2000)
    text = rows[5]["code"][0]
    cut = text.rfind("<|end_of_solution|>")
    cut = len(text) if cut < 0 else cut
    near["code"] = [text[:cut] + " One more sentence." + text[cut:]]
    out.append(near)
    return out


def test_exact_dedup_drops_normalised_copies_and_names_the_original(rows, tmp_path):
    data = _planted(rows)
    result = Pipeline([ExactDedup()]).run(read(data), out=tmp_path / "a")
    kept = result.to_polars()
    assert kept.height == 31  # 30 originals + the changed one
    rejects = result.rejects("exact_dedup")
    assert sorted(rejects["source_id"].to_list()) == [f"{1000 + i}:0" for i in range(5)]
    by_id = dict(zip(kept["source_id"], kept["id"]))
    for src, dup_of in zip(rejects["source_id"], rejects["duplicate_of"]):
        original = src.replace("100", "", 1) if src != "1000:0" else "0:0"
        assert dup_of == by_id[original]
    assert all(r.startswith("exact duplicate (normalised problem+response) of ") for r in rejects["reject_reason"])


def test_exact_dedup_problem_mode_and_keep_policies(rows, tmp_path):
    data = [dict(r) for r in rows[:20]]
    longer = dict(rows[3], idx=99)
    longer["code"] = [rows[3]["code"][0] + "\n\nA longer second attempt at the same problem."]
    data.append(longer)
    first = Pipeline([ExactDedup(mode="problem")]).run(read(data), out=tmp_path / "first").to_polars()
    assert first.height == 20 and "99:0" not in first["source_id"].to_list()
    longest = Pipeline([ExactDedup(mode="problem", keep="longest")]).run(read(data), out=tmp_path / "long").to_polars()
    assert "99:0" in longest["source_id"].to_list() and "3:0" not in longest["source_id"].to_list()
    # problem+response mode keeps both: the responses differ
    both = Pipeline([ExactDedup()]).run(read(data), out=tmp_path / "both").to_polars()
    assert both.height == 21


def test_filter_reasons_name_the_first_failed_condition(math500_sample, tmp_path):
    result = Pipeline([
        ExtractAnswer(),
        Filter(min_thinking_chars=3000, max_solution_chars=1500, where={"answer_method": {"in": ["boxed"]}}),
    ]).run(read(math500_sample), out=tmp_path / "f")
    kept = result.to_polars()
    assert kept.height > 0
    assert (kept["thinking"].str.len_chars() >= 3000).all() and (kept["solution"].str.len_chars() <= 1500).all()
    assert set(kept["answer_method"]) == {"boxed"}
    reasons = result.rejects("filter")["reject_reason"].to_list()
    assert any(re.match(r"thinking has \d+ chars < min_thinking_chars=3000", r) for r in reasons)
    assert any("chars > max_solution_chars=1500" in r for r in reasons)
    assert result.funnel["rejected"][2] == len(reasons)


def test_filter_truncated_and_domains(shared_data, tmp_path):
    src = read(shared_data / "traces" / "skythought_correct5k32b_ckpt140_aime24.jsonl")
    result = Pipeline([Filter(require_closed_thinking=True, domains=["math"])]).run(src, out=tmp_path / "t")
    # 30 AIME traces, 11 never close their thinking block (SOURCES.md: 30 begin, 19 end markers)
    assert result.rows == 19
    assert set(result.rejects()["reject_reason"]) == {"thinking block never closed (truncated)"}


def test_extract_answer_agrees_with_the_harness_on_boxed_solutions(rows):
    agree = total = 0
    for r in rows:
        from curate.io.markers import split_response

        _, solution, _, _ = split_response(r["code"][0])
        if "\\boxed" not in solution:
            continue
        ours, method = extract_answer(solution)
        assert method == "boxed"
        total += 1
        norm = lambda s: s.replace(" ", "").replace("\\\\", "\\").replace("\\!", "")  # noqa: E731
        agree += norm(ours) == norm(r["pred"][0])
    assert total > 50
    assert agree / total >= 0.9, (agree, total)


@pytest.mark.parametrize(
    ("text", "expected", "method"),
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}", "boxed"),
        (r"\boxed{a} then later \boxed{\left(3, \frac{\pi}{2}\right)}", r"\left(3, \frac{\pi}{2}\right)", "boxed"),
        (r"the result is \boxed 5", "5", "boxed"),
        ("**Final Answer**: $42$.", "42", "final_answer"),
        ("**Final Answer**\n\n\\[ x = 17 \\]", "x = 17", "final_answer"),
        ("So the answer is $17$.", "17", "answer_is"),
        ("we get 3 apples and then 1,234 pears", "1234", "last_number"),
        (r"unbalanced \boxed{12", "12", "last_number"),
        ("no numbers at all", None, None),
    ],
)
def test_answer_extraction_cases(text, expected, method):
    assert extract_answer(text) == (expected, method)


def test_boxed_nested_braces():
    assert extract_boxed(r"\boxed{\{1, 2\} \cup \{3\}}") == r"\{1, 2\} \cup \{3\}"


def test_sample_is_stratified_and_seeded(samples_dir, tmp_path):
    result = Pipeline([Sample(n=30, seed=7, stratify_by="source")]).run(read(samples_dir), out=tmp_path / "s")
    counts = dict(result.to_polars().group_by("source").len().iter_rows())
    # 120 math500 + 60 minerva rows: proportional shares of 30 are 20 and 10
    assert counts == {"skythought_correct5k27b_math500": 20, "skythought_correct5k27b_minerva": 10}
    frac = Pipeline([Sample(fraction=0.25, seed=7)]).run(read(samples_dir), out=tmp_path / "f")
    assert frac.rows == 45
    assert result.rejects()["reject_reason"][0] == "not sampled (n=30 of 180, seed=7, stratified by source)"


def test_sample_choice_does_not_depend_on_input_order(samples_dir, tmp_path):
    df = read(samples_dir).to_polars()
    forward = Pipeline([Sample(n=25, seed=3)]).run(read(df), out=tmp_path / "a").to_polars()
    backward = Pipeline([Sample(n=25, seed=3)], batch_size=11).run(read(df.reverse()), out=tmp_path / "b").to_polars()
    assert set(forward["id"]) == set(backward["id"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Sample(), "exactly one of n or fraction"),
        (lambda: Sample(fraction=1.5), "fraction must be in"),
        (lambda: Filter(domains=["maths"]), "'maths' is not one of"),
        (lambda: Filter(where={"x": {"approx": 1}}), "unknown operator 'approx'"),
        (lambda: Filter(min_thinking_chars=-1), "must be >= 0"),
        (lambda: ExactDedup(mode="response"), "mode must be one of"),
        (lambda: ExtractAnswer(methods=["magic"]), "unknown magic"),
    ],
)
def test_bad_parameters_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_filter_where_null_fails_comparison(tmp_path, math500_sample):
    df = read(math500_sample).to_polars().head(4).with_columns(
        pl.Series("score_x", [0.9, None, 0.1, 0.5]))
    result = Pipeline([Filter(where={"score_x": {"ge": 0.5}})]).run(read(df), out=tmp_path / "w")
    assert result.to_polars()["score_x"].to_list() == [0.9, 0.5]
    assert sorted(result.rejects()["reject_reason"].to_list()) == [
        "score_x=0.1 fails score_x >= 0.5", "score_x=null fails score_x >= 0.5"]
