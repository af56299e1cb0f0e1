"""s1's and LIMO's selection: quality rules, MSC domains, the diversity draw, the reasoning rubric, the recipes."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from curate import Pipeline, read
from curate.errors import RecipeError
from curate.models import clear_backends
from curate.models.serve import make_server, start_in_thread
from curate.ops import ClassifyDomain, ScoreReasoning, SelectDiverse, SelectQuality, SelectTop
from curate.ops.domains import SYSTEM_PROMPT, classify_rules, msc_areas, parse_code
from curate.ops.rubric import parse_rubric
from curate.recipe import run_recipe
from curate.step import build_step

REPO = Path(__file__).resolve().parent.parent


def _invariant(run) -> None:
    for f in run.manifest["funnel"]:
        assert f["kept"] + f["rejected"] == f.get("rows_out", f["rows_in"]), f["name"]


@pytest.fixture(scope="module")
def traces(shared_data: Path) -> pl.DataFrame:
    """Every real Sky-T1 trace beside the repo (six benchmark sets, ~1,500 rows)."""
    return read(shared_data / "traces").to_polars()


def test_s1_recipe_offline_on_shipped_data(tmp_path: Path) -> None:
    run = run_recipe(REPO / "pipelines" / "s1.yaml", out=tmp_path / "s1", progress=False, card=False)
    _invariant(run)
    assert [f["name"] for f in run.manifest["funnel"]] == ["read", "select_quality", "grade_difficulty", "filter",
                                                          "classify_domain", "select_diverse"]
    kept = run.to_polars()
    assert kept.height > 10
    assert (kept["thinking"].str.strip_chars() != "").all() and (kept["difficulty_thinking_tokens"] >= 2000).all()
    assert set(kept["domain_msc"]) <= set(msc_areas()) and kept["domain_msc_title"].is_not_null().all()
    assert sorted(kept["select_draw"]) == list(range(kept.height))  # fewer rows than n=1000: every one drawn
    quality = run.rejects("select_quality")["reject_reason"].to_list()
    assert quality and all(r.startswith(("failed generation: ", "formatting: ")) for r in quality)
    assert "formatting: an [asy] figure in the question" in quality  # real MATH-500 problems with figures
    assert run.rejects("filter")["difficulty_thinking_tokens"].max() < 2000


def test_limo_recipe_offline_on_shipped_data(tmp_path: Path) -> None:
    run = run_recipe(REPO / "pipelines" / "limo.yaml", out=tmp_path / "limo", progress=False, card=False)
    _invariant(run)
    assert [f["name"] for f in run.manifest["funnel"]][1:] == ["grade_difficulty", "filter", "verify",
                                                              "score_reasoning", "select_top"]
    kept = run.to_polars().sort("select_rank")
    assert kept.height >= 5 and kept["verify_correct"].all()
    assert kept["select_rank"].to_list() == list(range(kept.height))
    assert kept["rubric_score"].to_list() == sorted(kept["rubric_score"].to_list(), reverse=True)
    for t in ("elaboration", "self_verification", "exploration", "granularity"):
        assert kept[f"rubric_{t}"].is_between(0, 1).all()


def test_select_top_keeps_the_best_n(traces: pl.DataFrame, tmp_path: Path) -> None:
    steps = [ScoreReasoning(), SelectTop(n=25, by="rubric_score")]
    run = Pipeline(steps, batch_size=200).run(read(traces), tmp_path / "o", progress=False)
    kept, rejected = run.to_polars(), run.rejects("select_top")
    assert kept.height == 25 and kept["rubric_score"].min() >= rejected["rubric_score"].max()
    assert rejected["reject_reason"].str.starts_with(f"not among the 25 highest rubric_score of {traces.height}").all()


def test_rubric_rules_follow_the_traits(traces: pl.DataFrame, tmp_path: Path) -> None:
    """The offline proxies on real traces: AIME chains are more elaborate than MATH-500's, and the
    same chains with their reflection and backtracking phrases removed (remove_keywords, phrase mode)
    lose self-verification and exploration."""
    rows = traces.filter(pl.col("thinking") != "")
    scored = Pipeline([ScoreReasoning()]).run(read(rows), tmp_path / "a", progress=False).to_polars()
    means = scored.group_by("source").agg(pl.col("rubric_elaboration").mean())
    by = dict(zip(*means, strict=True))
    assert by["skythought_correct5k32b_ckpt140_aime24"] > 2 * by["skythought_correct5k27b_math500"]
    stripped = Pipeline([build_step("remove_keywords", {"mode": "phrase", "scope": "thinking"}), ScoreReasoning()]).run(
        read(rows), tmp_path / "b", progress=False).to_polars()
    both = scored.join(stripped, on=["source", "source_id"], suffix="_stripped")
    assert both.height > 400
    # of the chains that show a trait at all (short, markerless chains may show none: nothing to lose)
    verifying = both.filter(pl.col("rubric_self_verification") > 0)
    exploring = both.filter(pl.col("rubric_exploration") > 0)
    assert verifying.height > 400 and exploring.height > 400
    assert (verifying["rubric_self_verification_stripped"] < verifying["rubric_self_verification"]).mean() > 0.9
    assert (exploring["rubric_exploration_stripped"] < exploring["rubric_exploration"]).mean() > 0.85
    assert both["rubric_score_stripped"].mean() < both["rubric_score"].mean()
    empty = Pipeline([ScoreReasoning()]).run(read(traces.filter(pl.col("thinking") == "").head(5)), tmp_path / "c",
                                             progress=False).to_polars()
    assert (empty["rubric_score"] == 0).all()


def test_rules_classifier_agrees_with_math_subjects(shared_data: Path) -> None:
    """The offline MSC rules against MATH-500's own subject labels."""
    rows = [json.loads(line) for line in (shared_data / "benchmarks" / "simplerl_math500_test.jsonl").open()]

    def share(subject: str, codes: set[str]) -> float:
        got = [classify_rules(r["problem"], "97") for r in rows if r["subject"] == subject]
        return sum(c in codes for c in got) / len(got)

    assert share("Number Theory", {"11"}) >= 0.6
    assert share("Geometry", {"51"}) >= 0.75
    assert share("Counting & Probability", {"05", "60"}) >= 0.65


def test_select_diverse_is_s1s_draw(traces: pl.DataFrame, tmp_path: Path) -> None:
    steps = [ClassifyDomain(), SelectDiverse(n=60, seed=1)]
    run = Pipeline(steps, batch_size=300).run(read(traces), tmp_path / "a", progress=False)
    _invariant(run)
    kept = run.to_polars()
    assert kept.height == 60 and sorted(kept["select_draw"]) == list(range(60))
    everything = Pipeline([ClassifyDomain()]).run(read(traces), tmp_path / "all", progress=False).to_polars()
    everything = everything.with_columns(pl.col("thinking").str.count_matches(r"[^\W\d_]+|\d|[^\w\s]|_").alias("len"))
    sizes = everything.group_by("domain_msc").len()
    top, top_n = sizes.sort("len", descending=True).row(0)
    # domains drawn uniformly: the largest domain's share falls, every domain gets about 60/D
    assert kept.filter(pl.col("domain_msc") == top).height / 60 < top_n / everything.height
    drawn = kept.group_by("domain_msc").len()
    fair = 60 / sizes.height
    small = set(sizes.filter(pl.col("len") < fair)["domain_msc"])
    assert all(n <= 3 * fair for d, n in drawn.iter_rows() if d not in small)
    # within a domain, longer traces are favoured (weight 2^-rank): most draws are among the longest
    ranked = everything.with_columns(pl.col("len").rank("ordinal", descending=True).over("domain_msc").alias("rank"))
    ranks = ranked.join(kept.select("id"), on="id")["rank"].to_list()
    assert sorted(ranks)[len(ranks) // 2] <= 3
    # the same draw whatever the input order and batching
    again = Pipeline(steps, batch_size=77).run(read(traces.reverse()), tmp_path / "b", progress=False).to_polars()
    assert set(again["id"]) == set(kept["id"])
    assert dict(zip(*again.select("id", "select_draw"), strict=True)) == dict(zip(*kept.select("id", "select_draw"),
                                                                                   strict=True))
    reasons = set(run.rejects("select_diverse")["reject_reason"])
    assert reasons == {f"not drawn by s1's diversity sampling (n=60 of {traces.height}, by domain_msc, seed=1)"}


def test_select_diverse_preselects_first(traces: pl.DataFrame, tmp_path: Path) -> None:
    aime = traces.filter(pl.col("source").str.contains("aime24"))
    steps = [ClassifyDomain(), SelectDiverse(n=len(aime) + 10, seed=0, preselect={"source": {"in": sorted(set(aime["source"]))}})]
    kept = Pipeline(steps, batch_size=500).run(read(traces), tmp_path / "o", progress=False).to_polars()
    first = kept.filter(pl.col("select_draw") < aime["id"].n_unique())
    assert set(first["source"]) == set(aime["source"]) and kept.height == aime["id"].n_unique() + 10


def test_select_quality_follows_s1s_patterns(math500_sample: Path, tmp_path: Path) -> None:
    real = read(math500_sample).to_polars().filter(pl.col("thinking") != "").head(6)
    problem = real["problem"][0]
    variants = pl.concat([
        real[0:1],
        real[1:2].with_columns(pl.lit(problem + " [asy]draw((0,0)--(1,1));[/asy]").alias("problem")),
        real[2:3].with_columns(pl.lit(problem + " [asy]draw((0,0)--(1,1));[/asy]").alias("problem"),
                               pl.lit("aime_1983_2024").alias("source")),
        real[3:4].with_columns(pl.lit("p1. " + problem).alias("problem")),
        real[4:5].with_columns(pl.lit(problem + " Give **12** digits.").alias("problem")),
        real[5:6].with_columns(pl.lit(False).alias("thinking_closed")),
    ])
    run = Pipeline([SelectQuality()]).run(read(variants), tmp_path / "o", progress=False)
    assert run.to_polars()["id"].to_list() == variants["id"][[0, 2]].to_list()
    assert run.rejects()["reject_reason"].to_list() == [
        "formatting: an [asy] figure in the question", "formatting: p1.-style part numbering in the question",
        "formatting: a bold number (**...**) in the question",
        "failed generation: truncated (thinking never closed or max tokens hit)"]


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


@pytest.fixture
def teacher(math500_sample: Path):
    """A loopback server for the recipes' model blocks: s1's classifier (an explanation ending with
    an MSC code, or none for a few), a solver (a problem's real Sky-T1 trace, or a wrong answer for
    about half of the problems), and LIMO's judge (four ratings that vary by problem)."""
    traces = {r["question"]: r["code"][0] for r in map(json.loads, math500_sample.read_text().splitlines())}
    codes = sorted(msc_areas())
    calls: list[str] = []

    def hook(path: str, body: dict):
        prompt = body["prompt"]
        if prompt.startswith(SYSTEM_PROMPT):
            calls.append("classify")
            question = prompt.split("## Question\n", 1)[1].split("\n\n## Classification rubrics")[0]
            h = _digest(question)
            text = "It is about integers." if h % 11 == 0 else f"Reasoning...\n{codes[h % len(codes)]}"
        elif prompt.startswith("Rate the quality"):
            calls.append("judge")
            h = _digest(prompt)
            text = "\n".join(f"{k}: {(h >> s) % 11}" for k, s in
                             (("Elaboration", 0), ("Self-verification", 4), ("Exploration", 8), ("Granularity", 12)))
        else:
            calls.append("solve")
            problem = prompt.split("\n\nPlease reason step by step")[0]
            right = _digest(problem) % 2 == 0 and problem in traces
            text = traces[problem] if right else "I think the answer is $\\boxed{-987654}$."
        return 200, {"choices": [{"index": j, "text": text, "finish_reason": "stop"} for j in range(body.get("n", 1))],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 10}}, {}

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    url = start_in_thread(server)
    yield url, calls
    server.shutdown()
    server.server_close()
    clear_backends()


def _with_model(name: str, url: str, tmp_path: Path, switch: dict[str, dict]) -> Path:
    """The recipe with a model block, the switches its description names applied, paths made absolute."""
    doc = yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())
    doc["input"]["path"] = [str((REPO / "pipelines" / p).resolve()) for p in doc["input"]["path"]]
    doc["model"] = {"backend": "openai", "name_or_path": "teacher", "base_url": url, "cache": False}
    for entry in doc["steps"]:
        step = next(iter(entry))
        entry[step].update(switch.get(step, {}))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_s1_recipe_with_a_model_block(teacher, tmp_path: Path) -> None:
    url, calls = teacher
    recipe = _with_model("s1", url, tmp_path, {"classify_domain": {"method": "model"},
                                              "grade_difficulty": {"method": "pass_rate", "n": 1, "level_edges": [1.0],
                                                                   "verify_workers": 0}})
    run = run_recipe(recipe, out=tmp_path / "o", progress=False, card=False)
    _invariant(run)
    assert {"solve", "classify"} <= set(calls)
    kept = run.to_polars()
    assert kept.height > 3 and (kept["difficulty_pass_rate"] == 0).all()  # the reference model never solved them
    assert set(kept["domain_classifier"]) == {"openai:teacher"} and kept["domain_msc_raw"].is_not_null().all()
    assert all(parse_code(raw) == code for raw, code in zip(kept["domain_msc_raw"], kept["domain_msc"], strict=True))
    solved = run.rejects("filter")
    assert solved.height > 0 and (solved["difficulty_pass_rate"] == 1).all()
    unparsed = run.rejects("classify_domain")
    assert set(unparsed["reject_reason"]) <= {"the classifier's answer ends with no MSC code"}


def test_limo_recipe_with_a_model_block(teacher, tmp_path: Path) -> None:
    url, calls = teacher
    recipe = _with_model("limo", url, tmp_path, {"grade_difficulty": {"method": "pass_rate", "n": 4, "level_edges": [0.9],
                                                                      "verify_workers": 0},
                                                 "score_reasoning": {"method": "model"}})
    run = run_recipe(recipe, out=tmp_path / "o", progress=False, card=False)
    _invariant(run)
    assert {"solve", "judge"} <= set(calls)
    kept = run.to_polars().sort("select_rank")
    assert kept.height > 3 and (kept["difficulty_pass_rate"] <= 0.1).all() and kept["verify_correct"].all()
    assert set(kept["rubric_method"]) == {"openai:teacher"}
    for row in kept.iter_rows(named=True):
        scores = parse_rubric(row["rubric_raw"])
        assert scores is not None and math.isclose(row["rubric_score"], sum(scores.values()) / 4)
    assert kept["rubric_score"].to_list() == sorted(kept["rubric_score"].to_list(), reverse=True)


def test_a_models_answers_are_read_with_their_reject_reasons() -> None:
    """The judge / classifier plumbing: a parsed answer keeps its row, a failed call or an answer
    without a code is rejected with the reason, and the raw text is kept either way."""
    from curate.models import Completion
    from curate.models.base import failed
    from curate.models.steps import read_answers

    done = [[Completion("Primes.\n11")], failed("HTTP 500 from the server", 1), [Completion("No idea.")]]
    raw, codes, reasons = read_answers(done, parse_code, "classification failed", "no MSC code")
    assert raw == ["Primes.\n11", "", "No idea."] and codes == ["11", None, None]
    assert reasons == [None, "classification failed: HTTP 500 from the server", "no MSC code"]


def test_parsers_and_parameters() -> None:
    assert parse_code("The question is about primes.\n11") == "11"
    assert parse_code("Subject: 05 (Combinatorics).") == "05" and parse_code("No idea.") is None
    assert parse_code("...\n99") is None  # not an MSC area
    assert parse_rubric("Elaboration: 8\nSelf-verification: 6\n**Exploration**: 4\nGranularity = 10") == {
        "elaboration": 0.8, "self_verification": 0.6, "exploration": 0.4, "granularity": 1.0}
    assert parse_rubric("Elaboration: 8\nExploration: 4") is None
    with pytest.raises(RecipeError, match="needs a model"):
        build_step("classify_domain", {"method": "model"})
    with pytest.raises(RecipeError, match="unknown trait"):
        build_step("score_reasoning", {"weights": {"depth": 1.0}})
    with pytest.raises(RecipeError, match="fallback must be an MSC code"):
        build_step("classify_domain", {"fallback": "99"})
    weighted = ScoreReasoning(weights={"self_verification": 1.0})
    assert weighted._weights() == {"elaboration": 0.0, "self_verification": 1.0, "exploration": 0.0, "granularity": 0.0}
