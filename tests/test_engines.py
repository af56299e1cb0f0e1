"""Engines: the ray engine (a real local Ray cluster) and the distributed global passes give the local answer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import numpy as np
import polars as pl
import pytest
import ray
from polars.testing import assert_frame_equal

from curate import Pipeline, RunResult, read
from curate.engines import LocalEngine, get_engine
from curate.errors import PipelineError
from curate.models import clear_backends
from curate.ops import GradeDifficulty
from curate.step import Step, StepResult, build_step

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the test module


# Ray keeps its sessions, and `ray start` the address later ray.init() calls join (ray_current_cluster),
# in /tmp/ray unless told another temporary folder (`ray.init(_temp_dir=...)`, `ray start --temp-dir`;
# Ray's "Configuring Logging" guide): the tests give it their own, so they leave the machine's Ray alone.
MACHINE_RAY_ADDRESS = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


@contextlib.contextmanager
def ray_temp_dir():
    """A fresh folder for Ray's files, short enough for its unix sockets (107 bytes), removed after."""
    folder = tempfile.mkdtemp(prefix="curate-ray-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """A real Ray cluster on this machine (2 CPUs), shared by the module's tests."""
    with ray_temp_dir() as folder:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=folder)
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def traces(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped real traces in two files, plus re-typed copies of some of them: exact duplicates up
    to case and spacing, and near duplicates with one word of the problem changed."""
    real = read(samples_dir).to_polars()
    exact = real[::6].with_columns(pl.col("problem").str.to_uppercase().str.replace_all(" ", "  "),
                                   (pl.col("id") + "-copy"))
    near = real[1::5].with_columns(pl.col("problem").str.replace(r"(\w+)\W*$", "something"),
                                   (pl.col("id") + "-near"))
    folder = tmp_path_factory.mktemp("traces")
    real.write_parquet(folder / "a-real.parquet")
    pl.concat([exact, near]).write_parquet(folder / "b-copies.parquet")
    return folder


def _steps() -> list[Step]:
    return [
        build_step("exact_dedup", {"mode": "problem_response", "keep": "longest"}),
        build_step("extract_answer", {}),
        build_step("verify", {"keep": "all", "workers": 1}),
        build_step("minhash_dedup", {"keep": "best"}),
        build_step("decontaminate", {"benchmarks": ["math500", "minerva"], "action": "flag"}),
        build_step("filter", {"min_thinking_chars": 200}),
        build_step("sample", {"fraction": 0.8, "seed": 3, "stratify_by": "source"}),
    ]


def _variants() -> dict[str, list[Step]]:
    return {
        "clean": [],
        "wrong_answer": [build_step("corrupt_wrong_answer", {"seed": 1})],  # a driver-side global pass
        "insert": [build_step("insert_steps", {"ratio": 0.3, "seed": 2})],
        "shuffle": [build_step("shuffle_steps", {"ratio": 0.5, "seed": 2})],
    }


def assert_same(a: RunResult, b: RunResult) -> None:
    """The same dataset: rows and order of every config, rejects, funnel counts and step stats."""
    assert a.funnel.drop("seconds").equals(b.funnel.drop("seconds"))
    for fa, fb in zip(a.manifest["funnel"], b.manifest["funnel"], strict=True):
        assert fa.get("stats") == fb.get("stats"), fa["name"]
    for config in a.configs or [None]:
        assert a.to_polars(config).equals(b.to_polars(config)), config
    assert a.rejects().equals(b.rejects())
    assert a.manifest["output"] == b.manifest["output"]
    assert a.manifest["rejects"] == b.manifest["rejects"]
    assert _configs(a) == _configs(b)


def _configs(result: RunResult) -> dict:
    """Each config's rows, files and funnel, without timings."""
    return {name: {**c, "funnel": [{k: v for k, v in f.items() if k != "seconds"} for f in c["funnel"]]}
            for name, c in result.manifest.get("configs", {}).items()}


def test_ray_engine_writes_the_local_dataset(cluster, traces: Path, tmp_path: Path) -> None:
    local = Pipeline(_steps(), variants=_variants(), batch_size=40).run(traces, tmp_path / "local", progress=False)
    distributed = Pipeline(_steps(), variants=_variants(), batch_size=40).run(
        traces, tmp_path / "ray", engine="ray", progress=False)
    assert_same(local, distributed)
    # the comparison is not vacuous: every kind of global work dropped rows
    rejected = {f["name"]: f["rejected"] for f in distributed.manifest["funnel"]}
    assert rejected["exact_dedup"] >= 25 and rejected["minhash_dedup"] >= 20 and rejected["sample"] > 0
    assert distributed.rejects("minhash_dedup")["duplicate_of"].str.ends_with("-near").sum() == 0
    flagged = distributed.to_polars("clean")["decontam_benchmark"].drop_nulls()
    assert flagged.len() > 0 and set(flagged) <= {"math500", "minerva"}
    assert distributed.manifest["configs"]["wrong_answer"]["rows"] > 0
    assert (local.manifest["engine"], distributed.manifest["engine"]) == ("local", "ray")
    assert "ray engine" in (tmp_path / "ray" / "README.md").read_text()
    # the same published shards, byte for byte
    for name in distributed.manifest["output"]["files"]:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


@pytest.mark.parametrize("step", [
    {"exact_dedup": {"mode": "problem", "keep": "first"}},
    {"exact_dedup": {"mode": "problem_response", "keep": "shortest"}},
    {"minhash_dedup": {"mode": "problem", "verify": "jaccard", "keep": "first"}},
    {"minhash_dedup": {"mode": "problem_response", "verify": "signature", "keep": "longest", "threshold": 0.5}},
    {"minhash_dedup": {"mode": "problem", "shingle": "char", "verify": "none", "keep": "shortest", "bands": 9, "rows": 11}},
    {"sample": {"n": 70, "seed": 5}},
    {"sample": {"fraction": 0.3, "seed": 1, "stratify_by": "source"}},
    {"semantic_dedup": {"threshold": 0.9, "keep": "longest"}},
])
def test_global_passes_do_not_depend_on_how_the_input_is_split(step: dict, traces: Path, tmp_path: Path) -> None:
    """A step's pass over parts of 23 rows (3 shuffle buckets, scratch in files as on Ray) gives the
    answer of its pass over the whole input in one part (scratch in memory): same kept rows,
    rejects and counts."""
    (name, params), = step.items()

    def run(engine: LocalEngine, batch_size: int, out: str) -> RunResult:
        return Pipeline([build_step(name, params)], batch_size=batch_size).run(
            traces, tmp_path / out, engine=engine, progress=False, card=False)

    whole = run(LocalEngine(), 10**6, "whole")
    split = run(LocalEngine(buckets=3, scratch="files"), 23, "split")
    if name == "semantic_dedup":  # embeddings of other batches differ in the last float bit
        assert_frame_equal(whole.rejects(), split.rejects(), check_exact=False, abs_tol=1e-6)
        for result in (whole, split):
            result.rejects = lambda *_: pl.DataFrame()  # type: ignore[method-assign]
    assert_same(whole, split)
    assert whole.funnel["rejected"][1] > 0


def test_semantic_dedup_embeds_on_ray_workers(cluster, traces: Path, tmp_path: Path) -> None:
    """Embeddings computed by Ray workers (per part, one model load each), pairs on the driver: the local answer."""
    def run(engine: str, out: str) -> RunResult:
        return Pipeline([build_step("semantic_dedup", {"threshold": 0.9})], batch_size=60).run(
            traces, tmp_path / out, engine=engine, progress=False, card=False)

    local, distributed = run("local", "local"), run("ray", "ray")
    assert_same(local, distributed)
    assert distributed.funnel["rejected"][1] >= 20


def test_a_used_step_ships_without_its_process_resources(traces: Path) -> None:
    """A verify step that already ran here holds a live worker pool; a copy for another process
    leaves it behind (and builds its own), so the same step objects can run on a second engine."""
    step = build_step("verify", {"keep": "all", "workers": 1})
    batch = read(traces).to_polars().head(5)
    first = step.apply(batch, 0)
    assert step._pool is not None
    clone = cloudpickle.loads(cloudpickle.dumps(step))
    assert clone._pool is None and step._pool is not None
    assert clone.apply(batch, 0).kept.equals(first.kept)


def test_distributed_passes_on_empty_input(traces: Path, tmp_path: Path) -> None:
    steps = [build_step("filter", {"min_thinking_chars": 10**9}), build_step("exact_dedup", {}),
             build_step("minhash_dedup", {}), build_step("sample", {"n": 5})]
    result = Pipeline(steps).run(traces, tmp_path / "o", engine=LocalEngine(), progress=False,
                                 card=False)
    assert result.rows == 0 and result.funnel["rows_in"].to_list()[2:] == [0, 0, 0]


@dataclass
class FailsOnce(Step):
    """Raises on the part at ``offset >= 80`` while the flag file exists (a worker dying mid-stage)."""

    name = "_test_fails_once"
    flag: str = ""

    def params(self) -> dict:
        return {}  # the same step (fingerprint) with or without the flag

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        if offset >= 80 and Path(self.flag).exists():
            raise ValueError(f"boom at row {offset}")
        return StepResult(batch)


def test_a_worker_error_surfaces_and_the_run_resumes(cluster, traces: Path, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    pipeline = lambda: Pipeline([build_step("exact_dedup", {}), FailsOnce(str(flag))], batch_size=40)  # noqa: E731
    with pytest.raises(ValueError, match=r"boom at row \d+"):
        pipeline().run(traces, tmp_path / "o", engine="ray", progress=False, card=False)
    stage = next((tmp_path / "o" / ".curate").glob("stage-02-*"))
    assert 0 < len(list(stage.glob("part-*.parquet"))) < 6  # some parts were written before the error
    flag.unlink()
    resumed = pipeline().run(traces, tmp_path / "o", engine="ray", progress=False, card=False)
    reference = pipeline().run(traces, tmp_path / "ref", progress=False, card=False)
    assert_same(resumed, reference)
    assert resumed.to_polars()["id"].is_unique().all()


def test_model_steps_run_on_long_lived_workers(cluster, responses, replay, tmp_path: Path) -> None:
    """A model-backed step on the ray engine: an actor pool calls the (loopback) server and equals local."""
    url, calls = replay
    rows = [{"question": r["question"], "solution": r["gt_cot"], "answer": r["gt"]} for r in responses[:12]]

    def grade(cache: str) -> list[Step]:
        model = {"backend": "openai", "name_or_path": "replay", "base_url": url, "cache": str(tmp_path / cache)}
        return [GradeDifficulty(method="pass_rate", model=model, n=4, verify_workers=0)]

    assert grade("x")[0].worker_resources() == {}
    try:
        local = Pipeline(grade("local.sqlite"), batch_size=5).run(read(rows, source="m"), tmp_path / "a", progress=False)
        before = len(calls)
        distributed = Pipeline(grade("ray.sqlite"), batch_size=5).run(read(rows, source="m"), tmp_path / "b",
                                                                     engine="ray", progress=False)
    finally:
        clear_backends()
    assert len(calls) - before == 12  # the workers generated (their own cache was empty)
    assert distributed.manifest["funnel"][1]["stats"]["generation"]["generated"] == 12  # prompts, 4 samples each
    assert local.to_polars().equals(distributed.to_polars())


def test_engine_choice_errors_are_clear(tmp_path: Path, traces: Path) -> None:
    with pytest.raises(PipelineError, match="unknown engine 'spark'"):
        Pipeline([]).run(traces, tmp_path / "o", engine="spark")
    with pytest.raises(PipelineError, match="address is for engine='ray'"):
        get_engine("local", "auto")
    engine = LocalEngine()
    assert get_engine(engine) is engine


def test_ray_engine_without_ray_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(PipelineError, match=r"pip install 'curate-cot\[ray\]'"):
        get_engine("ray")


@contextlib.contextmanager
def started_head(folder: str):
    """`ray start --head` on loopback, its files (and the address it leaves) in ``folder``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # loopback only; a real cluster may use token auth
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={folder}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and head.poll() is None, "ray start --head did not come up"
                time.sleep(0.3)
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head, its raylet and workers share the process group
        head.wait()


@pytest.fixture()
def head_node():
    """A separate Ray cluster started the way one is on real machines, `ray start --head`, on loopback."""
    with ray_temp_dir() as folder, started_head(folder) as (address, env):
        yield address, env


def _state(path: Path) -> tuple[int, bytes] | None:
    return (path.stat().st_mtime_ns, path.read_bytes()) if path.exists() else None


def test_the_ray_fixtures_leave_the_machines_ray_folder_alone(cluster) -> None:
    """The in-process cluster keeps its files in its own folder; `ray start` writes the address later
    ray.init() calls join (ray_current_cluster) there too, not in /tmp/ray."""
    assert Path(ray.get_runtime_context().get_temp_dir()).name.startswith("curate-ray-")
    before = _state(MACHINE_RAY_ADDRESS)
    with ray_temp_dir() as folder:
        with started_head(folder) as (address, _):
            own, deadline = Path(folder) / "ray_current_cluster", time.time() + 60
            while not own.exists() and time.time() < deadline:  # written once the head is up
                time.sleep(0.2)
            written = own.read_text().strip()
            during = _state(MACHINE_RAY_ADDRESS)
        assert written.endswith(address.rsplit(":", 1)[1])
    assert during == before and _state(MACHINE_RAY_ADDRESS) == before


def test_cli_runs_a_recipe_on_an_existing_cluster(head_node, tmp_path: Path) -> None:
    """`curate run --engine ray --address` joins a running cluster, from another working directory,
    and writes the dataset `--engine local` writes."""
    address, env = head_node
    recipe = Path(__file__).resolve().parent.parent / "pipelines" / "quickstart.yaml"
    outs = {}
    for engine in ("local", "ray"):
        extra = ["--address", address] if engine == "ray" else []
        done = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(recipe), "--out", engine, "--engine",
                               engine, *extra, "--no-progress", "--no-card"], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "wrote 50 rows" in done.stdout
        outs[engine] = pl.read_parquet(tmp_path / engine / "data")
    assert outs["local"].equals(outs["ray"])


def test_generation_through_ray_data_llm_equals_local(cluster, responses, replay, tmp_path: Path) -> None:
    """An openai model with ``ray_data_llm: true``: Ray Data's HTTP processor makes every generation
    in one batch job, the apply workers only read them, and the dataset equals the local one."""
    url, calls = replay
    rows = [{"question": r["question"], "solution": r["gt_cot"], "answer": r["gt"]} for r in responses[:12]]

    def grade(cache: str) -> list[Step]:
        model = {"backend": "openai", "name_or_path": "replay", "base_url": url, "cache": str(tmp_path / cache),
                 "ray_data_llm": True}
        return [GradeDifficulty(method="pass_rate", model=model, n=4, verify_workers=0)]

    try:
        local = Pipeline(grade("local.sqlite"), batch_size=5).run(read(rows, source="m"), tmp_path / "a", progress=False)
        before = len(calls)
        distributed = Pipeline(grade("ray.sqlite"), batch_size=5).run(read(rows, source="m"), tmp_path / "b",
                                                                     engine="ray", progress=False, keep_work=True)
        made = len(calls) - before
        again = Pipeline(grade("ray.sqlite"), batch_size=5).run(read(rows, source="m"), tmp_path / "c",
                                                               engine="ray", progress=False)
    finally:
        clear_backends()
    assert made == 12  # one request per prompt (4 samples each), none from the apply workers
    gen = tmp_path / "b" / ".curate" / "stage-01-grade_difficulty" / "_gen"
    assert sorted(p.name for p in (gen / "out").iterdir()) == ["round-00000-00002"]  # 3 parts, one round
    assert local.to_polars().equals(distributed.to_polars())
    assert local.rejects().equals(distributed.rejects())
    stats = distributed.manifest["funnel"][1]["stats"]["generation"]
    assert stats == local.manifest["funnel"][1]["stats"]["generation"] == {"cache_hits": 0, "generated": 12, "errors": 0}
    # the apply put the batch job's completions in the cache: a new run asks the server for nothing
    assert len(calls) - before == 12
    assert again.manifest["funnel"][1]["stats"]["generation"] == {"cache_hits": 12, "generated": 0, "errors": 0}
    assert again.to_polars().equals(local.to_polars())


def test_vllm_requests_are_the_vllm_backends_own(cluster, tiny_model: Path, responses, tmp_path: Path) -> None:
    """What the vLLM processor is given (no GPU here, so everything short of running it): one row per
    sample with seed + j and the tokens the vllm backend would send; a prompt over the context is
    refused before the job; the engine's output rows come back as the step's completions in order."""
    from ray.data.llm import vLLMEngineProcessorConfig
    from transformers import AutoTokenizer

    from curate.engines import llm
    from curate.models import get_backend
    from curate.models.base import prompt_ids
    from curate.models.vllm_backend import VLLMBackend

    model = {"backend": "vllm", "name_or_path": str(tiny_model), "cache": False, "max_model_len": 512,
             "tensor_parallel_size": 1}
    assert isinstance(get_backend(model), VLLMBackend)  # built lazily: vLLM is not even installed here
    step = GradeDifficulty(method="pass_rate", model=model, n=3, max_tokens=64)
    long = {"question": "Compute " + " + ".join(str(k) for k in range(400)), "solution": "x", "answer": "1"}
    rows = [{"question": r["question"], "solution": r["gt_cot"], "answer": r["gt"]} for r in responses[:4]] + [long]
    src = tmp_path / "part.parquet"
    read(rows, source="m").to_polars().write_parquet(src)
    gen = tmp_path / "_gen"
    try:
        assert llm.collect(step, 7, str(src), gen) == {"rows": 5, "requests": 12}
        requests = pl.read_parquet(llm.part_file(gen, "requests", 7))
        prompts = [p for p, _ in step.generation_requests(pl.read_parquet(src))]
        tokenizer = AutoTokenizer.from_pretrained(tiny_model)
        assert requests["tokens"].to_list() == [prompt_ids(tokenizer, p, False) for p in prompts[:4] for _ in range(3)]
        sampling = [json.loads(b) for b in requests["body"]]
        assert [s["seed"] for s in sampling] == [0, 1, 2] * 4 and {s["n"] for s in sampling} == {1}
        assert requests["j"].to_list() == [0, 1, 2] * 4
        first = requests.to_dicts()[0]  # as the processor's preprocess gets it from Ray Data: numpy tokens
        sent = llm._vllm_in({**first, "tokens": np.asarray(first["tokens"], dtype=np.int32)})
        assert sent == {"tokenized_prompt": first["tokens"], "sampling_params": sampling[0]}
        assert all(type(t) is int for t in sent["tokenized_prompt"])
        refused = llm.completions_of(gen, 7)
        assert len(refused) == 1 and all("prompt too long" in c.error for c in next(iter(refused.values())))

        # the engine's output, as Ray's vLLM stage hands it to the postprocess, in shuffled order
        out = []
        for r in reversed(requests.with_columns(pl.lit("00007").alias("part")).to_dicts()):
            made = 64 if r["j"] == 1 else 5  # sample 1 stops at max_tokens
            out.append(llm._uniform({**llm._vllm_out({**r, "generated_text": f"sample {r['j']}",
                                                        "num_input_tokens": len(r["tokens"]),
                                                        "num_generated_tokens": made}), "__inference_error__": ""}))
        failed = llm._uniform({"part": "00007", "key": "k", "j": 0, "n": 1, "__inference_error__": "CUDA OOM"})
        folder = gen / "out" / "round-00007-00007" / "part=00007"
        folder.mkdir(parents=True)
        pl.DataFrame(out + [failed]).drop("part").write_parquet(folder / "x.parquet")
        got = llm.completions_of(gen, 7)
        first = got[requests["key"][0]]
        assert [c.text for c in first] == ["sample 0", "sample 1", "sample 2"]
        assert [c.finish_reason for c in first] == ["stop", "length", "stop"]
        assert got["k"][0].error == "ray.data.llm: CUDA OOM"
        assert len(got) == 4 + 1 + 1

        with pytest.raises(PipelineError, match=r"vLLM replica of .* needs 1 GPU\(s\) .* the Ray cluster has 0"):
            Pipeline([step]).run(src, tmp_path / "o", engine="ray", progress=False)  # rather than wait forever
        processor = llm.build_processor(model, gpus=2)
        config = processor.config
        assert isinstance(config, vLLMEngineProcessorConfig)
        assert config.concurrency == 2 and config.should_continue_on_error
        assert config.engine_kwargs["max_model_len"] == 512 and "cache" not in config.engine_kwargs
    finally:
        clear_backends()


@pytest.fixture()
def flaky(responses):
    """A loopback server that answers solve prompts with real samples, refuses one problem with a
    400, and answers 503 to everything while ``state["down"]``."""
    from curate.models.serve import make_server, start_in_thread

    by_problem = {r["question"]: r["code"] for r in responses}
    state = {"down": False, "refuse": responses[1]["question"], "calls": 0}

    def hook(path: str, body: dict):
        state["calls"] += 1
        if state["down"]:
            return 503, {"error": {"message": "overloaded"}}, {}
        problem = next(p for p in by_problem if body["prompt"].startswith(p))
        if problem == state["refuse"]:
            return 400, {"object": "error", "message": "This model's maximum context length is 4096 tokens"}, {}
        samples = by_problem[problem][: body["n"]]
        return 200, {"choices": [{"index": i, "text": s} for i, s in enumerate(samples)], "usage": {}}, {}

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    yield start_in_thread(server), state
    server.shutdown()
    server.server_close()


def test_ray_data_llm_failures_reject_or_stop_and_resume(cluster, responses, flaky, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A request the server refuses is rejected with the server's reason; a server that stays down
    stops the stage with a clear error, and the re-run resumes it without redoing the request pass
    (and throws away a round a killed run left half-written)."""
    from curate.engines import llm

    monkeypatch.setattr(llm, "ROUND_REQUESTS", 3)  # a round per part: 2 parts of 3 prompts
    url, state = flaky
    rows = [{"question": r["question"], "solution": r["gt_cot"], "answer": r["gt"]} for r in responses[:6]]
    model = {"backend": "openai", "name_or_path": "m", "base_url": url, "cache": False, "ray_data_llm": True,
             "max_retries": 0, "backoff_s": 0.01}
    steps = [GradeDifficulty(method="pass_rate", model=model, n=2, verify_workers=0)]
    out = tmp_path / "o"
    try:
        state["down"] = True
        with pytest.raises(PipelineError, match=r"ray.data.llm generation pass failed; .*re-run resumes.*maximum retries"):
            Pipeline(steps, batch_size=3).run(read(rows, source="m"), out, engine="ray", progress=False)
        gen = out / ".curate" / "stage-01-grade_difficulty" / "_gen"
        collected = {p.name: p.stat().st_mtime_ns for p in (gen / "requests").iterdir()}
        assert len(collected) == 2 and not list((gen / "out").iterdir())
        budget = [GradeDifficulty(method="pass_rate", model={**model, "max_requests": 100}, n=2, verify_workers=0)]
        with pytest.raises(PipelineError, match="max_requests is not honoured by Ray's HTTP processor"):
            Pipeline(budget).run(read(rows, source="m"), tmp_path / "budget", engine="ray", progress=False)
        killed = gen / "out" / "round-00000-00001.tmp" / "part=00000"  # what a SIGKILL mid-write leaves
        killed.mkdir(parents=True)
        (killed / "half.parquet").write_bytes(b"PAR1 cut short")
        state["down"] = False
        result = Pipeline(steps, batch_size=3).run(read(rows, source="m"), out, engine="ray", progress=False,
                                                   keep_work=True)
    finally:
        clear_backends()
    assert {p.name: p.stat().st_mtime_ns for p in (gen / "requests").iterdir()} == collected
    assert sorted(p.name for p in (gen / "out").iterdir()) == ["round-00000-00000", "round-00001-00001"]
    rejects = result.rejects()
    assert rejects.height == 1 and rejects["problem"][0] == responses[1]["question"]
    assert rejects["reject_reason"][0] == "generation failed: server error: This model's maximum context length is 4096 tokens"
    assert result.to_polars().height == 5


@pytest.mark.parametrize("name, params", [
    ("grade_difficulty", {"method": "pass_rate", "n": 3}),
    ("grade_difficulty", {"method": "judge"}),
    ("shorten", {"method": "rewrite"}),
    ("segment_steps", {"mode": "model"}),
])
def test_generation_requests_are_what_apply_asks(name: str, params: dict, samples_dir: Path) -> None:
    """Every model step's ``generation_requests`` lists exactly the requests its apply sends: given
    those (and nothing else), the apply never reaches the (dead) server."""
    from curate.models import Completion, get_backend

    model = {"backend": "openai", "name_or_path": "m", "base_url": "http://127.0.0.1:9/v1", "cache": False,
             "max_retries": 0}
    step = build_step(name, {**params, "model": model})
    batch = read(samples_dir).to_polars()[:12]
    requests = step.generation_requests(batch)
    backend = get_backend(model)
    answer = "[1] [2]\nDifficulty: 5\n\\boxed{1}"
    made = {backend.key(p, s): [Completion(answer, 10, 5)] * s.n for p, s in requests}
    assert len(made) == len(requests) > 0
    try:
        with backend.given(made):
            step.apply(batch, 0)
        assert backend.stats.generated == len(made) and backend.stats.errors == 0 and backend.stats.requests == 0
    finally:
        clear_backends()


def test_ray_data_llm_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from curate.engines import llm

    monkeypatch.setitem(sys.modules, "ray.data.llm", None)  # as if aiohttp (or the extra) were missing
    monkeypatch.delattr(ray.data, "llm", raising=False)  # an earlier import left it on the package
    with pytest.raises(PipelineError, match=r"pip install 'curate-cot\[ray\]'"):
        llm.build_processor({"backend": "openai", "name_or_path": "m"}, gpus=0)


def test_ray_data_llm_keeps_the_openai_settings(cluster) -> None:
    """Ray's HTTP processor gets the openai backend's own endpoint, key, retries and request shape,
    chat included."""
    from curate.engines import llm
    from curate.models import get_backend

    model = {"backend": "openai", "name_or_path": "m", "base_url": "http://127.0.0.1:9/v1", "chat": True,
             "api_key": "k", "concurrency": 3, "max_retries": 2, "cache": False, "ray_data_llm": True}
    try:
        config = llm.build_processor(model, gpus=0).config
        body = get_backend(model).body("2+2?", GradeDifficulty(method="judge", model=model).sampling())
    finally:
        clear_backends()
    assert config.url == "http://127.0.0.1:9/v1/chat/completions" and config.headers == {"Authorization": "Bearer k"}
    assert (config.concurrency, config.max_retries) == (3, 2)
    assert body["messages"] == [{"role": "user", "content": "2+2?"}] and "prompt" not in body
    row = {"part": "00000", "key": "k", "j": 0, "n": 1,
           "http_response": {"choices": [{"index": 0, "message": {"content": "4"}, "finish_reason": "length"}]}}
    served = json.loads(llm._http_out(True)(row)["completions"])
    assert served == [["4", 0, 0, "length", None]]
