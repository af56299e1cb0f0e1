"""shorten: truncate after the first concluded answer, shortest correct per problem, model rewrite — on real traces."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from curate import Pipeline, read
from curate.errors import RecipeError
from curate.models import clear_backends
from curate.models.serve import make_server, start_in_thread
from curate.ops import Shorten, Verify
from curate.ops.shorten import first_answer_end
from curate.step import build_step


@pytest.fixture(scope="module")
def math500(math500_sample: Path) -> pl.DataFrame:
    return read(math500_sample).to_polars()


def test_truncate_keeps_verified_prefix_and_saves_tokens(math500: pl.DataFrame, tmp_path: Path) -> None:
    rows = math500.filter(pl.col("thinking_closed")).head(30)  # real Sky-T1 MATH-500 traces with markers
    run = Pipeline([Shorten(), Verify(keep="all", workers=0)]).run(read(rows), out=tmp_path / "o", progress=False)
    df = run.to_polars().join(math500.select("id", pl.col("thinking").alias("orig")), on="id")
    before = Pipeline([Verify(keep="all", workers=0)]).run(read(rows), out=tmp_path / "v", progress=False)
    was = dict(zip(*before.to_polars().select("id", "verify_correct"), strict=True))
    cut = df.filter(pl.col("shorten_applied"))
    assert df.height == 30 and cut.height >= 10  # over-thinking after the answer is common in these traces
    for row in cut.iter_rows(named=True):
        assert row["orig"].startswith(row["thinking"]) and len(row["thinking"]) < len(row["orig"])
        assert row["verify_correct"] is True and was[row["id"]] is True  # still verifies, as before
        assert row["shorten_tokens_after"] <= 0.95 * row["shorten_tokens_before"] + 1
        last = row["thinking"].rsplit("\n\n", 1)[-1]
        assert all(d in last for d in re.findall(r"\d+", row["reference_answer"]))
    kept = df.filter(~pl.col("shorten_applied"))
    assert (kept["thinking"] == kept["orig"]).all() and kept["shorten_note"].is_not_null().all()
    assert (kept["shorten_tokens_after"] == kept["shorten_tokens_before"]).all()
    saved = 1 - df["shorten_tokens_after"].sum() / df["shorten_tokens_before"].sum()
    assert saved > 0.1
    assert run.manifest["funnel"][1]["stats"]["shorten"]["shortened"] == cut.height


def test_truncate_never_cuts_at_a_wrong_answer(math500: pl.DataFrame) -> None:
    rows = math500.filter(pl.col("thinking").str.len_chars() > 0).head(15)
    found = 0
    for row in rows.iter_rows(named=True):
        end, _ = first_answer_end(row["thinking"], row["reference_answer"])
        found += end is not None
        assert first_answer_end(row["thinking"], "98765")[0] is None  # an answer no trace states
    assert found >= 5


def test_shortest_correct_per_problem(shared_data: Path, tmp_path: Path) -> None:
    src = read(shared_data / "responses" / "simplerl_math_cot_100.jsonl")  # 8 real samples per problem
    run = Pipeline([Verify(keep="all", workers=0), Shorten(method="shortest_correct")]).run(
        src, out=tmp_path / "o", progress=False)
    everything = Pipeline([Verify(keep="all", workers=0)]).run(src, out=tmp_path / "all", progress=False).to_polars()
    tok = Shorten(method="shortest_correct")
    everything = everything.with_columns(pl.Series("tokens", tok._response_tokens(everything)))
    best = (everything.filter(pl.col("verify_correct")).group_by("problem")
            .agg(pl.col("tokens").min().alias("best"), pl.len().alias("correct")))
    kept = run.to_polars()
    assert kept.height == best.height == kept["problem"].n_unique()
    assert kept["verify_correct"].all()
    joined = kept.join(best, on="problem")
    assert (joined["shorten_tokens_after"] == joined["best"]).all()
    assert joined["best"].sum() < everything.filter(pl.col("verify_correct"))["tokens"].mean() * kept.height
    rejects = run.rejects("shorten")
    assert kept.height + rejects.height == 800
    no_correct = everything["problem"].n_unique() - best.height
    assert rejects.filter(pl.col("reject_reason") == "no correct trace of this problem").height == 8 * no_correct
    assert rejects["reject_reason"].str.starts_with("a shorter correct trace").any()


def test_rewrite_kept_only_when_it_verifies(math500: pl.DataFrame, tmp_path: Path) -> None:
    rows = math500.filter((pl.col("thinking").str.len_chars() > 3000) & pl.col("solution").str.contains("boxed")).head(3)
    refs = rows["reference_answer"].to_list()
    firsts = [t.split("\n\n")[0] for t in rows["thinking"].to_list()]
    answers = iter([
        (200, {"choices": [{"index": 0, "text": firsts[0] + f"\n\nSo the answer is $\\boxed{{{refs[0]}}}$.",
                            "finish_reason": "stop"}], "usage": {}}, {}),
        (200, {"choices": [{"index": 0, "text": firsts[1] + "\n\nSo the answer is $\\boxed{98765}$.",
                            "finish_reason": "stop"}], "usage": {}}, {}),
        (400, {"error": {"message": "This model's maximum context length is 4096 tokens"}}, {}),
    ])
    server = make_server(None, hook=lambda path, body: next(answers))  # type: ignore[arg-type]
    url = start_in_thread(server)
    model = {"backend": "openai", "name_or_path": "rewriter", "base_url": url, "cache": False, "concurrency": 1}
    try:
        run = Pipeline([Shorten(method="rewrite", model=model)]).run(read(rows), out=tmp_path / "o", progress=False)
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    df = run.to_polars()
    assert df["shorten_applied"].to_list() == [True, False, False]
    assert df["thinking"][0].startswith(firsts[0]) and df["thinking"][1:].to_list() == rows["thinking"][1:].to_list()
    assert df["shorten_tokens_after"][0] < df["shorten_tokens_before"][0]
    assert len(df["thinking"][0]) < len(rows["thinking"][0]) / 3
    assert df["shorten_note"][1].startswith("rewrite does not verify") and "HTTP 400" in df["shorten_note"][2]


def test_parameters_are_checked() -> None:
    with pytest.raises(RecipeError, match="needs a model"):
        build_step("shorten", {"method": "rewrite"})
    with pytest.raises(RecipeError, match="method must be one of"):
        build_step("shorten", {"method": "summarise"})
    assert build_step("shorten", {"method": "shortest_correct"}).needs_global_pass
    assert not build_step("shorten", {}).needs_global_pass


def test_recipes_load() -> None:
    from curate.recipe import load_recipe

    repo = Path(__file__).resolve().parent.parent
    shorten = load_recipe(repo / "pipelines" / "shorten.yaml")
    assert [s.name for s in shorten.pipeline.steps] == ["shorten", "verify"]
    difficulty = load_recipe(repo / "pipelines" / "difficulty.yaml")
    grade = difficulty.pipeline.steps[0]
    assert grade.name == "grade_difficulty" and grade.method == "pass_rate" and grade.model["backend"] == "transformers"
