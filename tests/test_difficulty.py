"""grade_difficulty: pass rate from real sampled responses (served over loopback), the tiny model, judge, proxy."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curate import Pipeline, read
from curate.errors import RecipeError
from curate.models import clear_backends
from curate.models.serve import make_server, start_in_thread
from curate.models.tiny import build
from curate.ops import Filter, GradeDifficulty
from curate.ops.difficulty import parse_judgement
from curate.step import build_step

N_PROBLEMS = 24


def _problems(responses: list[dict], k: int = N_PROBLEMS) -> list[dict]:
    return [{"question": r["question"], "solution": r["gt_cot"], "answer": r["gt"]} for r in responses[:k]]


def test_pass_rate_matches_real_sample_labels_and_resumes_from_cache(responses, replay, tmp_path: Path) -> None:
    url, calls = replay
    before = len(calls)  # the server is the session's: other tests' requests came before this one
    model = {"backend": "openai", "name_or_path": "replay", "base_url": url, "cache": str(tmp_path / "gen.sqlite")}
    step = GradeDifficulty(method="pass_rate", model=model, n=8, verify_workers=0)
    try:
        run = Pipeline([step]).run(read(_problems(responses), source="math_cot_100"), out=tmp_path / "a", progress=False)
        df = run.to_polars()
        assert df.height == N_PROBLEMS and len(calls) - before == N_PROBLEMS
        labels = [sum(r["score"]) / len(r["score"]) for r in responses[:N_PROBLEMS]]
        agree = sum(abs(a - b) < 1e-9 for a, b in zip(df["difficulty_pass_rate"].to_list(), labels, strict=True))
        assert agree >= N_PROBLEMS - 2, (df["difficulty_pass_rate"].to_list(), labels)
        assert df["difficulty_samples"].list.len().to_list() == [8] * N_PROBLEMS
        assert (df["difficulty_score"] - (1 - df["difficulty_pass_rate"])).abs().max() < 1e-12
        assert set(df["difficulty_grader"]) == {"openai:replay"} and set(df["difficulty_n"]) == {8}
        assert df["difficulty_pass_rate"].n_unique() > 1 and df["difficulty_level"].min() >= 1
        # a second run elsewhere: every prompt from the cache, no request sent
        again = Pipeline([GradeDifficulty(method="pass_rate", model=model, n=8, verify_workers=0,
                                          keep_pass_rate=[0.1, 0.9])]).run(
            read(_problems(responses), source="math_cot_100"), out=tmp_path / "b", progress=False)
        assert len(calls) - before == N_PROBLEMS
        stats = again.manifest["funnel"][1]["stats"]["generation"]
        assert stats["cache_hits"] == N_PROBLEMS and stats["generated"] == 0
        kept = again.to_polars()["difficulty_pass_rate"]
        assert ((kept > 0.1) & (kept < 0.9)).all() and kept.len() < N_PROBLEMS
        reasons = again.rejects()["reject_reason"].to_list()
        assert reasons and all(r.startswith("pass rate ") and "outside (0.1, 0.9)" in r for r in reasons)
    finally:
        clear_backends()


def test_selection_uses_filter_on_pass_rate(responses, replay, tmp_path: Path) -> None:
    url, _ = replay
    model = {"backend": "openai", "name_or_path": "replay", "base_url": url, "cache": False}
    steps = [GradeDifficulty(method="pass_rate", model=model, n=8, verify_workers=0),
             Filter(where={"difficulty_pass_rate": {"gt": 0.0, "le": 0.5}})]
    try:
        run = Pipeline(steps).run(read(_problems(responses, 12)), out=tmp_path / "o", progress=False)
    finally:
        clear_backends()
    rates = run.to_polars()["difficulty_pass_rate"]
    assert ((rates > 0) & (rates <= 0.5)).all()
    assert run.rejects("filter").height + rates.len() == 12


def test_pass_rate_with_tiny_transformers_model(shared_data: Path, tmp_path: Path) -> None:
    model_dir = build(tmp_path / "tiny", context=160)  # a short context: the longer AMC prompts do not fit
    model = {"backend": "transformers", "name_or_path": str(model_dir), "cache": str(tmp_path / "gen.sqlite")}
    src = read(shared_data / "traces" / "skythought_corrupt07_32b_amc23.jsonl")
    steps = [GradeDifficulty(method="pass_rate", model=model, n=2, max_tokens=8, verify_workers=0)]
    try:
        run = Pipeline(steps).run(src, out=tmp_path / "o", progress=False)
    finally:
        clear_backends()
    df = run.to_polars()
    reasons = run.rejects()["reject_reason"].to_list()
    assert df.height + len(reasons) == 40 and df.height >= 5 and len(reasons) >= 5
    assert all(r.startswith("generation failed: prompt too long") and r.endswith("> context 160") for r in reasons)
    # random weights never state an answer: every sample is a verified miss
    assert df["difficulty_pass_rate"].to_list() == [0.0] * df.height
    assert df["difficulty_samples"].to_list() == [[0.0, 0.0]] * df.height and set(df["difficulty_level"]) == {4}
    assert (df["difficulty_sample_tokens"] <= 8).all()


def test_judge_parses_scores_and_rejects_unparseable(responses, tmp_path: Path) -> None:
    answers = iter(["The problem needs a trick.\n\n**Difficulty:** 6", "Routine.\nDifficulty: 2/10", "I cannot say."])

    def hook(path: str, body: dict):
        return (200, {"choices": [{"index": 0, "text": next(answers)}], "usage": {}}, {})

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    url = start_in_thread(server)
    model = {"backend": "openai", "name_or_path": "judge", "base_url": url, "cache": False, "concurrency": 1}
    try:
        run = Pipeline([GradeDifficulty(method="judge", model=model)]).run(
            read(_problems(responses, 3)), out=tmp_path / "o", progress=False)
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    df = run.to_polars()
    assert df["difficulty_score"].to_list() == [6.0, 2.0] and df["difficulty_level"].to_list() == [2, 1]
    assert df["difficulty_judge_raw"][0].endswith("**Difficulty:** 6")
    assert run.rejects()["reject_reason"].to_list() == ["judge gave no difficulty score: ...I cannot say."]


def test_parse_judgement_formats() -> None:
    assert parse_judgement("Difficulty: 7", "difficulty") == {"score": 7.0}
    assert parse_judgement("Difficulty rating = 4.5\n", "difficulty") == {"score": 4.5}
    assert parse_judgement("On a 1-10 scale this is about\n8", "difficulty") == {"score": 8.0}
    assert parse_judgement("Difficulty: 12", "difficulty") is None
    text = "RV is high.\nReasoning Verbosity: 7\nCognitive Difficulty: **3**"
    assert parse_judgement(text, "omnithought") == {"verbosity": 7.0, "cognitive": 3.0}
    assert parse_judgement("Reasoning Verbosity: 7", "omnithought") is None


def test_proxy_on_real_traces(shared_data: Path, tmp_path: Path) -> None:
    src = read(shared_data / "traces" / "skythought_corrupt07_32b_amc23.jsonl")
    run = Pipeline([GradeDifficulty(method="proxy", level_edges=[1000, 5000])]).run(src, out=tmp_path / "o", progress=False)
    df = run.to_polars()
    chars = df["thinking"].str.len_chars()
    assert df.height == 40 and (df["difficulty_thinking_tokens"] > 0).all()
    # longer thinking, more tokens: the proxy orders traces by length
    assert pl.DataFrame({"c": chars, "t": df["difficulty_thinking_tokens"]}).select(pl.corr("c", "t", method="spearman")).item() > 0.95
    expected = [1 + (t >= 1000) + (t >= 5000) for t in df["difficulty_thinking_tokens"].to_list()]
    assert df["difficulty_level"].to_list() == expected and len(set(expected)) == 3
    assert (df["difficulty_steps"] >= 1).all()


def test_parameters_are_checked() -> None:
    with pytest.raises(RecipeError, match="needs a model"):
        build_step("grade_difficulty", {"method": "pass_rate"})
    with pytest.raises(RecipeError, match="backend must be one of"):
        build_step("grade_difficulty", {"method": "judge", "model": {"backend": "hf", "name_or_path": "x"}})
    with pytest.raises(RecipeError, match="strict|lo < hi"):
        build_step("grade_difficulty", {"method": "pass_rate", "keep_pass_rate": [0.6, 0.1],
                                        "model": {"backend": "vllm", "name_or_path": "x"}})
    with pytest.raises(RecipeError, match="ascending"):
        build_step("grade_difficulty", {"level_edges": [3, 1]})


def test_failed_prompts_rejected_then_resumed_from_cache(responses, replay, tmp_path: Path) -> None:
    """A server that dies halfway: its prompts are rejected with the reason; the re-run asks only for those."""
    url, calls = replay
    start = len(calls)
    healthy = {r["question"] for r in responses[:12]}
    down: list[str] = []

    def hook(path: str, body: dict):
        if not any(body["prompt"].startswith(p) for p in healthy):
            down.append(body["prompt"])
            return (503, {"error": "server going down"}, {})
        return None

    server = make_server(None, hook=lambda path, body: hook(path, body) or _forward(url, body))  # type: ignore[arg-type]
    flaky = start_in_thread(server)
    cache = str(tmp_path / "gen.sqlite")
    problems = read(_problems(responses))
    try:
        model = {"backend": "openai", "name_or_path": "replay", "base_url": flaky, "cache": cache, "max_retries": 0}
        first = Pipeline([GradeDifficulty(method="pass_rate", model=model, n=8, verify_workers=0)]).run(
            problems, out=tmp_path / "o", progress=False)
        assert first.to_polars().height == 12 and len(down) == N_PROBLEMS - 12
        assert set(first.rejects()["reject_reason"]) == {"generation failed: gave up after 1 attempts: HTTP 503: "
                                                         '{"error": "server going down"}'}
        clear_backends()
        model = {**model, "base_url": url}  # the server is back
        second = Pipeline([GradeDifficulty(method="pass_rate", model=model, n=8, verify_workers=0)]).run(
            problems, out=tmp_path / "o", progress=False, overwrite=True)
        assert second.to_polars().height == N_PROBLEMS
        gen = second.manifest["funnel"][1]["stats"]["generation"]
        assert gen == {"cache_hits": 12, "generated": N_PROBLEMS - 12, "errors": 0}
        assert len(calls) - start == N_PROBLEMS  # 12 forwarded the first time, 12 new ones now
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()


def _forward(url: str, body: dict):
    import urllib.request

    req = urllib.request.Request(url + "/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return (200, json.loads(resp.read()), {})


def test_judge_omnithought_pair_of_scores(responses, tmp_path: Path) -> None:
    prompts: list[str] = []

    def hook(path: str, body: dict):
        prompts.append(body["prompt"])
        k = len(prompts)
        return (200, {"choices": [{"index": 0, "text": f"Short.\nReasoning Verbosity: {k}\nCognitive Difficulty: {9 - k}"}],
                      "usage": {}}, {})

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    url = start_in_thread(server)
    model = {"backend": "openai", "name_or_path": "judge", "base_url": url, "cache": False, "concurrency": 1}
    rows = _problems(responses, 3)
    try:
        run = Pipeline([GradeDifficulty(method="judge", rubric="omnithought", model=model)]).run(
            read(rows), out=tmp_path / "o", progress=False)
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    df = run.to_polars()
    assert df["difficulty_verbosity"].to_list() == [1.0, 2.0, 3.0]
    assert df["difficulty_cognitive"].to_list() == [8.0, 7.0, 6.0] == df["difficulty_score"].to_list()
    traces = read(rows).to_polars()  # markerless: reasoning + answer paragraph, or one paragraph of solution
    judged = [t or s for t, s in zip(traces["thinking"], traces["solution"], strict=True)]
    assert all(j and j[:200] in p for j, p in zip(judged, prompts, strict=True))  # the trace is in the prompt
