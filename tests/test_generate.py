"""generate, choose, reformat: teacher sampling, rejection sampling and reformatting against a loopback server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
import yaml

from curate import Pipeline, read
from curate.errors import PipelineError, RecipeError
from curate.io.markers import split_response
from curate.models import Completion, clear_backends
from curate.models.serve import make_server, start_in_thread
from curate.ops import Choose, Generate, Reformat, Verify
from curate.ops.generate import BudgetExhausted
from curate.recipe import run_recipe
from curate.step import build_step

REPO = Path(__file__).resolve().parent.parent
SOLVE_TAIL = "\n\nPlease reason step by step"


def _problems(responses: list[dict], k: int) -> list[dict]:
    """Real MATH problems with their reference answers, as a problems file's rows."""
    return [{"question": r["question"], "solution": r["gt_cot"], "answer": r["gt"]} for r in responses[:k]]


def _model(url: str, **extra) -> dict:
    return {"backend": "openai", "name_or_path": "replay", "base_url": url, "cache": False, **extra}


def test_generate_expands_problems_into_samples(responses, replay, tmp_path: Path) -> None:
    url, calls = replay
    before = len(calls)
    try:
        run = Pipeline([Generate(model=_model(url), n=4, temperature=0.6, seed=3)], batch_size=4).run(
            read(_problems(responses, 6), source="m"), tmp_path / "o", progress=False)
    finally:
        clear_backends()
    assert len(calls) - before == 6 and {c["n"] for c in calls[before:]} == {4}  # one request per problem
    entry = run.manifest["funnel"][1]
    assert (entry["rows_in"], entry["kept"], entry["rejected"], entry["rows_out"]) == (6, 24, 0, 24)
    assert entry["stats"]["generation"] == {"cache_hits": 0, "generated": 6, "errors": 0,
                                            "prompt_tokens": 6 * 50, "completion_tokens": 6 * 4 * 300}
    df = run.to_polars()
    assert df["generate_sample"].to_list() == [0, 1, 2, 3] * 6
    assert df["source_id"][:4].to_list() == [f"{df['source_id'][0].split(':s')[0]}:s{j}" for j in range(4)]
    for k, r in enumerate(responses[:6]):  # each row holds one of the problem's real samples, in order
        rows = df[4 * k: 4 * k + 4]
        assert (rows["problem"] == r["question"]).all() and (rows["reference_answer"] == r["gt"]).all()
        splits = [split_response(s) for s in r["code"][:4]]  # markerless: reasoning + answer paragraph
        assert rows["thinking"].to_list() == [s.thinking for s in splits]
        assert rows["solution"].to_list() == [s.solution for s in splits]
        assert all(s.solution and s.solution in c for s, c in zip(splits, r["code"][:4], strict=True))
    assert set(df["teacher"]) == set(df["generate_model"]) == {"openai:replay"}
    assert set(df["finish_reason"]) == {"stop"} and (df["generate_completion_tokens"] == 300).all()
    sampling = json.loads(df["generate_sampling"][0])
    assert (sampling["n"], sampling["temperature"], sampling["seed"]) == (4, 0.6, 3)
    assert df["id"].n_unique() == df.select("problem", "thinking", "solution").n_unique()


def test_failed_requests_reject_every_sample_with_the_reason(responses, tmp_path: Path) -> None:
    bad = responses[1]["question"]

    def hook(path: str, body: dict):
        if body["prompt"].startswith(bad):
            return 400, {"error": {"message": "This model's maximum context length is 4096 tokens"}}, {}
        problem = body["prompt"].split(SOLVE_TAIL)[0]
        text = next(r["code"][0] for r in responses if r["question"] == problem)
        return 200, {"choices": [{"index": j, "text": text, "finish_reason": "length" if j else "stop"}
                                 for j in range(body["n"])], "usage": {"completion_tokens": 20}}, {}

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    url = start_in_thread(server)
    try:
        run = Pipeline([Generate(model=_model(url, max_retries=0), n=2)]).run(
            read(_problems(responses, 3), source="m"), tmp_path / "o", progress=False)
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    entry = run.manifest["funnel"][1]
    assert (entry["rows_in"], entry["kept"], entry["rejected"], entry["rows_out"]) == (3, 4, 2, 6)
    rejects = run.rejects("generate")
    assert (rejects["problem"] == bad).all() and rejects["generate_sample"].to_list() == [0, 1]
    assert rejects["reject_reason"].str.starts_with("generation failed: HTTP 400").all()
    assert run.to_polars()["finish_reason"].to_list() == ["stop", "length"] * 2  # recorded, not dropped


def test_rejection_sampling_chooses_among_verified_samples(responses, replay, tmp_path: Path) -> None:
    """8 real samples per problem with the graders' labels: verify + choose keep what the labels say."""
    url, _ = replay
    src = read(_problems(responses, 12), source="m")

    def run(keep: str):
        steps = [Generate(model=_model(url), n=8), Verify(keep="all", workers=0), Choose(keep=keep)]
        return Pipeline(steps, batch_size=5).run(src, tmp_path / keep, progress=False)

    try:
        runs = {keep: run(keep) for keep in ("first", "shortest", "all")}
    finally:
        clear_backends()
    labels = {r["question"]: [bool(s) for s in r["score"]] for r in responses[:12]}
    verified = runs["all"].to_polars()
    solvable = {p for p, ls in labels.items() if any(ls)}
    assert set(verified["problem"]) <= set(labels) and len(set(verified["problem"])) >= len(solvable) - 1
    first = runs["first"].to_polars()
    assert first["problem"].n_unique() == first.height == verified["problem"].n_unique()
    for row in first.iter_rows(named=True):  # the earliest correct sample of its problem
        same = verified.filter(pl.col("problem") == row["problem"])
        assert row["generate_sample"] == same["generate_sample"].min() and row["choose_correct"] == same.height
    shortest = runs["shortest"].to_polars()
    for row in shortest.iter_rows(named=True):
        same = verified.filter(pl.col("problem") == row["problem"])
        assert row["choose_tokens"] == same["choose_tokens"].min()
    assert shortest["choose_tokens"].sum() <= first["choose_tokens"].sum()
    for result in runs.values():  # kept + rejected == rows in, at every step after generate
        for f in result.manifest["funnel"][2:]:
            assert f["kept"] + f["rejected"] == f["rows_in"]
        assert result.manifest["funnel"][1]["rows_out"] == 12 * 8
    reasons = set(runs["first"].rejects("choose")["reject_reason"])
    assert any(r.startswith("not a correct sample") for r in reasons)
    assert any(r.startswith("another correct sample of this problem is kept (first of") for r in reasons)


def _sky_t1(content: str) -> str:
    """A canned rewrite in Sky-T1's layout: the content as thought, its last paragraph as solution."""
    last = content.strip().split("\n\n")[-1]
    return (f"<|begin_of_thought|>\n\n{content}\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n{last}\n\n"
            "<|end_of_solution|>")


def test_reformat_keeps_only_rewrites_that_verify(math500_sample: Path, tmp_path: Path) -> None:
    rows = read(math500_sample).to_polars().filter(pl.col("solution").str.contains("boxed")).head(4)
    answers = iter([
        lambda c: _sky_t1(c),  # kept
        lambda c: _sky_t1(c).replace("\\boxed{", "\\boxed{98765+"),  # the answer changed: rejected
        lambda c: c,  # no markers: rejected
        lambda c: "<think>\n" + c + "\n</think>\n\n" + c.split("\n\n")[-1],  # the other layout: rejected
    ])

    def hook(path: str, body: dict):
        content = body["prompt"].split("Content to be converted:\n", 1)[1]
        return 200, {"choices": [{"index": 0, "text": next(answers)(content), "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 100, "completion_tokens": 40}}, {}

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    url = start_in_thread(server)
    try:
        run = Pipeline([Reformat(model=_model(url, concurrency=1))]).run(read(rows), tmp_path / "o", progress=False)
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    kept = run.to_polars()
    assert kept["id"].to_list() == rows["id"][:1].to_list()
    assert kept["thinking_closed"].to_list() == [True] and kept["reformat_layout"].to_list() == ["sky-t1"]
    assert kept["solution"][0] == rows["solution"][0].strip().split("\n\n")[-1]
    assert (kept["reformat_prompt_tokens"][0], kept["reformat_completion_tokens"][0]) == (100, 40)
    reasons = run.rejects("reformat")["reject_reason"].to_list()
    assert reasons[0].startswith("reformatted trace does not verify")
    assert reasons[1:] == ["rewrite lacks the sky-t1 layout (its thinking block is missing or never closed)"] * 2


def _serve_recipe_traces(rows: list[dict], block_at: int | None = None):
    """A loopback teacher: a problem's sample 0 is its real Sky-T1 trace, sample 1 another problem's
    (a real wrong answer); rewrites wrap the content in Sky-T1's markers. With ``block_at``, the
    generation request of that number waits (a run killed mid-request) and is never answered."""
    traces = {r["question"]: r["code"][0] for r in rows}
    order = list(traces)
    answered: list[str] = []
    reformats: list[str] = []
    arrived = threading.Event()
    release = threading.Event()
    lock = threading.Lock()

    def hook(path: str, body: dict):
        prompt = body["prompt"]
        if "Content to be converted:\n" in prompt:
            reformats.append(prompt)
            text = _sky_t1(prompt.split("Content to be converted:\n", 1)[1])
            return 200, {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": {}}, {}
        problem = prompt.split(SOLVE_TAIL)[0]
        with lock:
            seen = len(answered) + 1
        if block_at is not None and seen == block_at and not release.is_set():
            arrived.set()
            release.wait(60)
            return 503, {"error": {"message": "gone"}}, {}
        other = order[(order.index(problem) + 1) % len(order)]
        texts = [traces[problem], traces[other]][: body["n"]]
        with lock:
            answered.append(problem)
        return 200, {"choices": [{"index": j, "text": t, "finish_reason": "stop"} for j, t in enumerate(texts)],
                     "usage": {"prompt_tokens": 80, "completion_tokens": 500 * len(texts)}}, {}

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    return server, start_in_thread(server), answered, reformats, arrived, release


def _recipe(tmp_path: Path, url: str, data: Path, **generate) -> Path:
    """pipelines/rejection_sampling.yaml pointed at the loopback teacher and a slice of the sample."""
    doc = yaml.safe_load((REPO / "pipelines" / "rejection_sampling.yaml").read_text())
    doc["input"]["path"] = str(data)
    doc["model"].update(base_url=url, cache=str(tmp_path / "gen.sqlite"), concurrency=1, max_retries=0)
    doc["batch_size"] = 10
    doc["steps"][0]["generate"].update(n=2, max_tokens=4096, **generate)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def sample30(math500_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    lines = math500_sample.read_text().splitlines()[:30]
    path = tmp_path_factory.mktemp("rs") / "math500_30.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [json.loads(line) for line in lines]


def test_rejection_sampling_recipe_resumes_after_a_kill(sample30, tmp_path: Path) -> None:
    """generate -> verify -> choose -> reformat as one recipe: killed mid-generation (SIGKILL), run
    again, no problem is sent to the teacher twice and the dataset equals an uninterrupted run's."""
    data, rows = sample30
    server, url, answered, reformats, arrived, release = _serve_recipe_traces(rows, block_at=15)
    recipe = _recipe(tmp_path, url, data, chunk=1)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", str(recipe), "--out", str(tmp_path / "o"),
                              "--no-progress", "--no-card"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert arrived.wait(120), child.stderr.read().decode()[-2000:] if child.poll() is not None else "no request"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        release.set()
    first = list(answered)
    assert len(first) == 14 and not (tmp_path / "o" / "manifest.json").exists()
    assert (tmp_path / "o" / ".curate" / "stage-01-generate" / "part-00000.parquet").exists()  # batch 1 finished
    try:
        resumed = run_recipe(recipe, out=tmp_path / "o", progress=False, card=False)
        second = answered[len(first):]
        server2, url2, answered2, _, _, _ = _serve_recipe_traces(rows)
        (tmp_path / "fresh").mkdir()
        straight = run_recipe(_recipe(tmp_path / "fresh", url2, data, chunk=1), out=tmp_path / "straight",
                              progress=False, card=False)
        server2.shutdown()
        server2.server_close()
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    assert not set(first) & set(second) and sorted(first + second) == sorted(r["question"] for r in rows)
    assert len(answered2) == 30
    assert resumed.to_polars().equals(straight.to_polars())
    assert resumed.rejects().equals(straight.rejects())
    names = [f["name"] for f in resumed.manifest["funnel"]]
    assert names == ["read", "generate", "verify", "choose", "reformat"]
    gen, verify, choose, reformat = resumed.manifest["funnel"][1:]
    assert gen["rows_out"] == 60 and gen["kept"] + gen["rejected"] == 60
    assert verify["rows_in"] == 60 and choose["kept"] == reformat["rows_in"] > 10
    kept = resumed.to_polars()
    assert kept["problem"].n_unique() == kept.height and kept["verify_correct"].all()
    assert set(kept["reformat_layout"]) == {"sky-t1"} and kept["thinking_closed"].all()
    assert (kept["generate_sample"] == 0).all()  # sample 1 is another problem's answer: never correct


def test_token_budget_stops_cleanly_and_a_rerun_resumes(sample30, tmp_path: Path) -> None:
    """A budget of 12k completion tokens a run (1k per problem, checked before each chunk of 4):
    each run stops with a clear error once it is spent, keeps what it made, and the next run goes on
    from there; no problem is ever generated twice."""
    data, rows = sample30
    server, url, answered, _, _, _ = _serve_recipe_traces(rows)
    recipe = _recipe(tmp_path, url, data, chunk=4, budget_tokens=12_000)
    progress = []
    try:
        for _ in range(5):
            try:
                done = run_recipe(recipe, out=tmp_path / "o", progress=False, card=False)
                break
            except BudgetExhausted as e:
                assert "token budget spent" in str(e) and "run again" in str(e)
                assert not (tmp_path / "o" / "manifest.json").exists()
                progress.append(len(answered))
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    assert progress == [14, 28]  # 10 + 4, then 6 + 8 new problems (what the first run made is cached)
    assert len(answered) == 30 and len(set(answered)) == 30
    assert done.manifest["funnel"][1]["rows_out"] == 60


def test_parameters_and_requests_are_checked(samples_dir: Path) -> None:
    with pytest.raises(RecipeError, match="needs a model"):
        build_step("generate", {})
    with pytest.raises(RecipeError, match="n must be >= 1"):
        build_step("generate", {"n": 0, "model": {"backend": "openai", "name_or_path": "m"}})
    with pytest.raises(RecipeError, match="layout must be one of"):
        build_step("reformat", {"layout": "xml", "model": {"backend": "openai", "name_or_path": "m"}})
    with pytest.raises(RecipeError, match="keep must be one of"):
        build_step("choose", {"keep": "longest"})
    assert isinstance(BudgetExhausted("x"), PipelineError)


@pytest.mark.parametrize("name, params", [
    ("generate", {"n": 3}),
    ("reformat", {}),
    ("classify_domain", {"method": "model"}),
    ("score_reasoning", {"method": "model"}),
])
def test_generation_requests_are_what_apply_asks(name: str, params: dict, samples_dir: Path) -> None:
    """Each new model step lists exactly the requests its apply sends (what the ray engine's
    generation pass makes ahead): given those, the apply never reaches the (dead) server."""
    from curate.models import get_backend

    model = {"backend": "openai", "name_or_path": "m", "base_url": "http://127.0.0.1:9/v1", "cache": False,
             "max_retries": 0}
    step = build_step(name, {**params, "model": model})
    batch = read(samples_dir).to_polars()[:6]
    requests = step.generation_requests(batch)
    backend = get_backend(model)
    answer = "Elaboration: 5\nSelf-verification: 5\nExploration: 5\nGranularity: 5\n\\boxed{1}\n11"
    made = {backend.key(p, s): [Completion(answer, 10, 5)] * s.n for p, s in requests}
    try:
        with backend.given(made):
            result = step.apply(batch, 0)
        assert backend.stats.generated == len(made) > 0 and backend.stats.requests == 0
        assert result.kept.height + (0 if result.rejected is None else result.rejected.height) == \
            step.output_rows(batch.height)
    finally:
        clear_backends()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real Ray cluster on this machine (2 CPUs), its files under the test's own temporary folder."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def test_ray_engine_writes_the_local_dataset(cluster, sample30, tmp_path: Path) -> None:
    """The recipe on the ray engine, its generations (generate's and reformat's) made by Ray Data's
    HTTP processor ahead of the apply (``ray_data_llm``): the same rows, rejects and funnel as local."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    data, rows = sample30
    server, url, answered, reformats, _, _ = _serve_recipe_traces(rows)
    results = {}
    try:
        for engine in ("local", "ray"):
            folder = tmp_path / engine
            folder.mkdir()
            recipe = yaml.safe_load(_recipe(folder, url, data).read_text())
            recipe["model"]["ray_data_llm"] = True
            (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
            before = len(answered)
            results[engine] = run_recipe(folder / "recipe.yaml", out=folder / "o", engine=engine, progress=False,
                                         card=False)
            assert len(answered) - before == 30  # each problem generated once, on either engine
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    local, distributed = results["local"], results["ray"]
    assert local.to_polars().equals(distributed.to_polars())
    assert local.rejects().equals(distributed.rejects())
    assert local.funnel.drop("seconds").equals(distributed.funnel.drop("seconds"))
    assert [f.get("rows_out") for f in local.manifest["funnel"]] == [f.get("rows_out") for f in distributed.manifest["funnel"]]
    assert local.to_polars().height > 10
