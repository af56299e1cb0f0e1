"""Engines: the ray engine (a real local Ray cluster) and the distributed global passes give the local answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import polars as pl
import pytest
import ray

from curate import Pipeline, RunResult, read
from curate.engines import LocalEngine, get_engine
from curate.errors import PipelineError
from curate.models import clear_backends
from curate.ops import GradeDifficulty
from curate.step import REGISTRY, Step, StepResult, build_step

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the test module


@pytest.fixture(scope="module")
def cluster():
    """A real Ray cluster on this machine (2 CPUs), shared by the module's tests."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
def test_distributed_global_passes_equal_the_in_memory_fit(step: dict, traces: Path, tmp_path: Path) -> None:
    """The passes the ray engine distributes, run unit by unit here: same kept rows, rejects and counts."""
    (name, params), = step.items()

    def run(engine: LocalEngine, out: str) -> RunResult:
        return Pipeline([build_step(name, params)], batch_size=23).run(traces, tmp_path / out, engine=engine,
                                                                       progress=False, card=False)

    local = run(LocalEngine(), "local")
    split = run(LocalEngine(distributed_fits=True, buckets=3), "split")
    assert_same(local, split)
    assert local.funnel["rejected"][1] > 0


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
    result = Pipeline(steps).run(traces, tmp_path / "o", engine=LocalEngine(distributed_fits=True), progress=False,
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


REGISTRY.pop(FailsOnce.name)  # a test's step, not an operator `curate ops` should list


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
    with pytest.raises(PipelineError, match=r"pip install 'curate\[ray\]'"):
        get_engine("ray")


@pytest.fixture()
def head_node():
    """A separate Ray cluster started the way one is on real machines, `ray start --head`, on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # loopback only; a real cluster may use token auth
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
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
        # `ray start` left its address for later ray.init() calls to join: forget the dead cluster
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


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
