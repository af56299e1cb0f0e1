"""The runner: funnel accounting, atomic layout, determinism, resume after a kill, chain checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import Pipeline, PipelineError, StepResult, read
from curate.ops import ExactDedup, ExtractAnswer, Filter, Sample
from curate.pipeline import EmptyResultError, EmptyResultWarning
from curate.step import Step

REPO = Path(__file__).resolve().parent.parent


def standard_steps() -> list[Step]:
    return [ExactDedup(), ExtractAnswer(), Filter(min_thinking_chars=2000), Sample(n=40, seed=0, stratify_by="source")]


def test_run_writes_hub_layout_manifest_and_consistent_funnel(samples_dir, tmp_path):
    result = Pipeline(standard_steps(), batch_size=64).run(read(samples_dir), out=tmp_path / "ds")
    out = tmp_path / "ds"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert not (out / ".curate").exists(), "work folder is removed after success"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and (out / "plots" / "funnel.png").exists()
    funnel = result.funnel
    assert funnel["name"].to_list() == ["read", "exact_dedup", "extract_answer", "filter", "sample"]
    for row in funnel.iter_rows(named=True):
        assert row["kept"] + row["rejected"] == row["rows_in"], row
    assert funnel["rows_in"][1:].to_list() == funnel["kept"][:-1].to_list()
    assert funnel["rows_in"][0] == 180  # every line of the two sample files
    assert result.rows == 40 == result.to_polars().height
    # the filter really dropped short-reasoning rows, with a reason naming the parameter
    rejects = result.rejects("filter")
    assert rejects.height == funnel.filter(pl.col("name") == "filter")["rejected"][0] > 0
    assert all("min_thinking_chars=2000" in r for r in rejects["reject_reason"])
    assert set(rejects["reject_step"]) == {"filter"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["steps"][3] == {"sample": {"n": 40, "fraction": None, "seed": 0, "stratify_by": "source"}}
    assert manifest["seeds"] == {"4:sample": 0}
    assert manifest["input"]["fingerprint"] and manifest["libraries"]["pyarrow"] == pa.__version__
    md = pq.read_schema(out / manifest["output"]["files"][0]).metadata[b"curate"]
    assert json.loads(md)["schema_version"] == "1.0"
    # annotation columns follow the core columns, typed
    schema = pq.read_schema(out / manifest["output"]["files"][0])
    assert schema.names[-1] == "answer_method" and schema.field("thinking_closed").type == pa.bool_()


def test_same_seed_same_output_any_batch_size(samples_dir, tmp_path):
    a = Pipeline(standard_steps(), batch_size=1000).run(read(samples_dir), out=tmp_path / "a").to_polars()
    b = Pipeline(standard_steps(), batch_size=7).run(read(samples_dir), out=tmp_path / "b").to_polars()
    assert a["id"].to_list() == b["id"].to_list()
    assert a.equals(b)
    other = [ExactDedup(), ExtractAnswer(), Filter(min_thinking_chars=2000), Sample(n=40, seed=1, stratify_by="source")]
    c = Pipeline(other).run(read(samples_dir), out=tmp_path / "c").to_polars()
    assert set(c["id"]) != set(a["id"])


def test_empty_pipeline_imports_and_validates(math500_sample, tmp_path):
    result = Pipeline([]).run(read(math500_sample), out=tmp_path / "ds")
    assert result.funnel.height == 1 and result.rows == 120
    df = result.to_polars()
    assert df["id"].n_unique() == 120 and set(df["domain"]) == {"math"}


def test_finished_run_is_not_redone_and_other_input_needs_overwrite(samples_dir, math500_sample, tmp_path):
    out = tmp_path / "ds"
    first = Pipeline([Filter(min_thinking_chars=200)]).run(read(math500_sample), out=out)
    again = Pipeline([Filter(min_thinking_chars=200)]).run(read(math500_sample), out=out)
    assert again.manifest["created"] == first.manifest["created"] and again.reused and not first.reused
    with pytest.raises(PipelineError, match="another input; pass overwrite"):
        Pipeline([Filter(min_thinking_chars=200)]).run(read(samples_dir), out=out)
    other = Pipeline([Filter(min_thinking_chars=200)]).run(read(samples_dir), out=out, overwrite=True)
    assert other.funnel["rows_in"][0] == 180 and not other.reused


@dataclass
class Tally(Step):
    """Counts the rows it sees, per instance label, in a class-level log (which steps ran)."""

    name = "test_tally"
    label: str = ""
    seen = {}  # noqa: RUF012 - shared on purpose: the test reads it

    def apply(self, batch, offset):
        Tally.seen[self.label] = Tally.seen.get(self.label, 0) + batch.height
        return StepResult(batch)


def test_editing_step_k_of_a_finished_run_reruns_k_to_n_only(math500_sample, tmp_path):
    """The README's promise: change one step and only it and the steps after it run again,
    also after the run finished, with no --overwrite; the result equals a fresh run."""
    def steps(min_chars: int) -> list[Step]:
        return [Tally("a"), Tally("b"), Filter(min_thinking_chars=min_chars), Tally("c"), Tally("d")]

    out = tmp_path / "ds"
    Tally.seen.clear()
    first = Pipeline(steps(200), batch_size=50).run(read(math500_sample), out=out)
    assert Tally.seen == {"a": 120, "b": 120, "c": first.rows, "d": first.rows}
    assert not (out / ".curate").exists() and (out / ".curate-cache").is_dir()
    Tally.seen.clear()
    edited = Pipeline(steps(3000), batch_size=50).run(read(math500_sample), out=out)
    assert set(Tally.seen) == {"c", "d"}, "steps 1-2 came from the finished run"
    assert edited.manifest["computed"] == ["03-filter", "04-test_tally", "05-test_tally"]
    assert 0 < edited.rows < first.rows
    fresh = Pipeline(steps(3000), batch_size=50).run(read(math500_sample), out=tmp_path / "fresh")
    assert edited.to_polars().equals(fresh.to_polars())
    assert edited.rejects("filter").height == fresh.rejects("filter").height == 120 - edited.rows
    assert [f["kept"] for f in edited.manifest["funnel"]] == [f["kept"] for f in fresh.manifest["funnel"]]
    # back to the first recipe: the stages at and after the edit are recomputed, not the ones before
    Tally.seen.clear()
    back = Pipeline(steps(200), batch_size=50).run(read(math500_sample), out=out)
    assert set(Tally.seen) == {"c", "d"} and back.rows == first.rows
    # a step removed: its stage is dropped from the cache, which holds exactly the last run's stages
    Pipeline(steps(200)[:3], batch_size=50).run(read(math500_sample), out=out)
    assert sorted(p.name for p in (out / ".curate-cache").iterdir()) == [
        "stage-00-read", "stage-01-test_tally", "stage-02-test_tally", "stage-03-filter"]
    # overwrite (as resume=False) recomputes every step; cache=False keeps no stages
    Tally.seen.clear()
    Pipeline(steps(200)[:3], batch_size=50).run(read(math500_sample), out=out, overwrite=True, cache=False)
    assert Tally.seen == {"a": 120, "b": 120}
    assert not (out / ".curate-cache").exists() and not (out / ".curate").exists()
    Tally.seen.clear()
    Pipeline(steps(200)[:3], batch_size=50).run(read(math500_sample), out=out, overwrite=True, resume=False)
    assert Tally.seen == {"a": 120, "b": 120}


def test_refuses_to_write_into_a_foreign_folder(math500_sample, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not a curate dataset"):
        Pipeline([]).run(read(math500_sample), out=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_chain_is_checked_before_any_work(math500_sample, tmp_path):
    steps = [Filter(where={"verify_correct": {"eq": True}})]
    with pytest.raises(PipelineError, match=r"step 1 'filter' reads column\(s\) verify_correct"):
        Pipeline(steps).run(read(math500_sample), out=tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    # a column an earlier step writes is fine
    ok = Pipeline([ExtractAnswer(), Filter(where={"answer_method": {"eq": "boxed"}})]).run(
        read(math500_sample), out=tmp_path / "ok")
    assert set(ok.to_polars()["answer_method"]) == {"boxed"}
    assert all("fails answer_method ==" in r for r in ok.rejects("filter")["reject_reason"])


@dataclass
class LosesRows(Step):
    name = "test_loses_rows"

    def apply(self, batch, offset):
        return StepResult(batch.head(1), None)


@dataclass
class UndeclaredColumn(Step):
    name = "test_undeclared"

    def apply(self, batch, offset):
        return StepResult(batch.with_columns(pl.lit(1).alias("surprise")))


@dataclass
class MissingDeclared(Step):
    name = "test_missing_declared"
    writes = {"test_score": pa.float64()}

    def apply(self, batch, offset):
        return StepResult(batch)


@dataclass
class Scored(Step):
    name = "test_scored"
    detail: bool = False

    @property
    def writes(self):  # type: ignore[override]
        return {"test_score": pa.float64(), **({"test_detail": pa.string()} if self.detail else {})}

    def apply(self, batch, offset):
        out = batch.with_columns(pl.lit(1.0).alias("test_score"))
        return StepResult(out.with_columns(pl.lit("d").alias("test_detail")) if self.detail else out)


@dataclass
class Understated(Scored):
    name = "test_understated"
    writes = {"test_score": pa.float64()}  # noqa: RUF012 - declares less than it writes


def test_columns_a_step_writes_follow_its_parameters(math500_sample, tmp_path):
    """`writes` read on the instance: the chain check and the output schema see the parameters' columns."""
    reads_detail = Filter(where={"test_detail": {"eq": "d"}})
    with pytest.raises(PipelineError, match="reads column.s. test_detail"):
        Pipeline([Scored(), reads_detail]).plan()
    out = Pipeline([Scored(detail=True), reads_detail]).run(read(math500_sample), out=tmp_path / "ds")
    assert {"test_score", "test_detail"} <= set(out.to_polars().columns)
    with pytest.raises(PipelineError, match="undeclared column"):  # writes more than it declares
        Pipeline([Understated(detail=True)]).run(read(math500_sample), out=tmp_path / "understated")


@dataclass
class OldStyle(Step):
    name = "test_old_style"

    def columns_written(self):
        return {"test_score": pa.float64()}


def test_a_step_with_the_old_columns_written_is_an_error_not_a_guess():
    with pytest.raises(TypeError, match="OldStyle defines columns_written.*declare the output columns as `writes`"):
        OldStyle().writes  # noqa: B018
    with pytest.raises(TypeError, match="columns_written"):
        Pipeline([OldStyle()]).plan()


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (LosesRows(), "rows would be lost"),
        (UndeclaredColumn(), "undeclared column"),
        (MissingDeclared(), "did not produce column 'test_score'"),
    ],
)
def test_misbehaving_steps_are_caught(step, message, math500_sample, tmp_path):
    with pytest.raises(PipelineError, match=message):
        Pipeline([step]).run(read(math500_sample), out=tmp_path / "ds")


_KILLABLE = textwrap.dedent(
    """
    import sys, time
    from dataclasses import dataclass
    from curate import Pipeline, read, StepResult
    from curate.step import Step
    from curate.ops import ExactDedup, Sample

    @dataclass
    class Slow(Step):
        name = "test_slow"
        delay: float = 0.0
        def params(self):
            return {}  # the same step however slow: the rerun resumes its stage
        def apply(self, batch, offset):
            time.sleep(self.delay)
            return StepResult(batch)

    Pipeline([ExactDedup(), Slow(float(sys.argv[3])), Sample(n=50, seed=3)], batch_size=10).run(
        read(sys.argv[1]), out=sys.argv[2], progress=False, engine=sys.argv[4])
    """
)


@pytest.fixture()
def ray_tmpdir():
    """A folder for the Ray a run starts (RAY_TMPDIR), so it leaves /tmp/ray alone; short for its sockets."""
    with tempfile.TemporaryDirectory(prefix="curate-ray-", ignore_cleanup_errors=True) as folder:
        yield folder


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_killed_run_resumes_without_losing_or_duplicating_rows(engine, samples_dir, tmp_path, ray_tmpdir):
    """SIGKILL the whole run mid-stage (for ray: the driver, and with it the Ray it started)."""
    script = tmp_path / "job.py"
    script.write_text(_KILLABLE)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmpdir}
    proc = subprocess.Popen([sys.executable, str(script), str(samples_dir), str(out), "0.3", engine], env=env)
    slow_stage = out / ".curate" / "stage-02-test_slow"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(slow_stage.glob("part-*.parquet"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(slow_stage.glob("part-*.parquet")))
    assert 4 <= done_before < 18, "the kill must land mid-stage"
    assert not (out / "manifest.json").exists()

    resumed = subprocess.run([sys.executable, str(script), str(samples_dir), str(out), "0", engine], env=env, check=True)
    assert resumed.returncode == 0
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, str(script), str(samples_dir), str(reference), "0", "local"], env=env, check=True)
    got = pl.read_parquet(out / "data" / "train-00000-of-00001.parquet")
    want = pl.read_parquet(reference / "data" / "train-00000-of-00001.parquet")
    assert got.equals(want)
    m1 = json.loads((out / "manifest.json").read_text())
    m2 = json.loads((reference / "manifest.json").read_text())
    strip = lambda f: [(r["name"], r["rows_in"], r["kept"], r["rejected"]) for r in f]  # noqa: E731
    assert strip(m1["funnel"]) == strip(m2["funnel"])
    rej1 = pl.read_parquet(out / "rejects" / "03-sample.parquet").sort("id")
    rej2 = pl.read_parquet(reference / "rejects" / "03-sample.parquet").sort("id")
    assert rej1.equals(rej2) and rej1.height == 130


def test_resume_reuses_finished_stages(math500_sample, tmp_path):
    calls = []

    @dataclass
    class Counting(Step):
        name = "test_counting"

        def apply(self, batch, offset):
            calls.append(offset)
            return StepResult(batch)

    out = tmp_path / "ds"
    Pipeline([Counting(), ExtractAnswer()], batch_size=50).run(read(math500_sample), out=out, keep_work=True)
    assert len(calls) == 3
    # manifest gone (as after a crash in the final write): rerun redoes only the final write
    (out / "manifest.json").unlink()
    Pipeline([Counting(), ExtractAnswer()], batch_size=50).run(read(math500_sample), out=out, keep_work=True)
    assert len(calls) == 3
    # a changed later step does not rerun an unchanged earlier one
    (out / "manifest.json").unlink()
    Pipeline([Counting(), ExtractAnswer(fallback_to_thinking=False)], batch_size=50).run(
        read(math500_sample), out=out, keep_work=True)
    assert len(calls) == 3


def test_reads_its_own_output_back_with_annotations(math500_sample, tmp_path):
    first = Pipeline([ExtractAnswer()]).run(read(math500_sample), out=tmp_path / "a")
    shard = tmp_path / "a" / first.manifest["output"]["files"][0]
    second = Pipeline([Filter(require_answer=True)]).run(read(shard), out=tmp_path / "b")
    df = second.to_polars()
    assert "answer_method" in df.columns and df["answer"].null_count() == 0
    assert second.funnel["rows_in"][0] == 120


def test_variants_share_one_base_and_write_one_config_each(math500_sample, tmp_path):
    calls = []

    @dataclass
    class CountingBase(Step):
        name = "test_counting_base"

        def apply(self, batch, offset):
            calls.append(batch.height)
            return StepResult(batch)

    pipeline = Pipeline(
        [CountingBase(), ExactDedup()],
        variants={"clean": [], "boxed": [ExtractAnswer(), Filter(where={"answer_method": {"eq": "boxed"}})]},
    )
    result = pipeline.run(read(math500_sample), out=tmp_path / "fam")
    assert sum(calls) == 120, "the base steps ran once for both variants"
    assert result.configs == ["clean", "boxed"]
    files = sorted(str(p.relative_to(tmp_path / "fam")) for p in (tmp_path / "fam" / "data").rglob("*.parquet"))
    assert files == ["data/boxed/train-00000-of-00001.parquet", "data/clean/train-00000-of-00001.parquet"]
    clean, boxed = result.to_polars("clean"), result.to_polars("boxed")
    assert clean.height == 120 and "answer_method" not in clean.columns
    assert 0 < boxed.height < 120 and set(boxed["answer_method"]) == {"boxed"}
    assert set(boxed["id"]) <= set(clean["id"])
    vfunnel = result.manifest["configs"]["boxed"]["funnel"]
    assert [f["name"] for f in vfunnel] == ["extract_answer", "filter"] and vfunnel[0]["step"] == 3
    assert vfunnel[1]["kept"] == boxed.height and vfunnel[1]["rejected"] == 120 - boxed.height
    rejected = [r for r in result.manifest["rejects"] if r.get("config") == "boxed"]
    assert rejected == [{"step": "filter", "path": "rejects/boxed/04-filter.parquet", "rows": 120 - boxed.height,
                         "config": "boxed"}]
    with pytest.raises(ValueError, match="pass config="):
        result.to_polars()
    # the chain of each variant is checked before any work
    bad = Pipeline([ExactDedup()], variants={"v": [Filter(where={"verify_correct": {"eq": True}})]})
    with pytest.raises(PipelineError, match="variant 'v': step 2 'filter' reads"):
        bad.run(read(math500_sample), out=tmp_path / "bad")
    with pytest.raises(ValueError, match="names a folder"):
        Pipeline([], variants={"../x": []})


def test_step_stats_are_summed_into_the_funnel(samples_dir, tmp_path):
    @dataclass
    class CountsBySource(Step):
        name = "test_counts_by_source"

        def apply(self, batch, offset):
            counts = {}
            for src in batch["source"]:
                counts[src] = counts.get(src, 0) + 1
            return StepResult(batch, None, {"by_source": {s: {"rows": n} for s, n in counts.items()}, "batches": 1})

    result = Pipeline([CountsBySource()], batch_size=25).run(read(samples_dir), out=tmp_path / "s")
    stats = result.stats("test_counts_by_source")
    assert stats["by_source"] == {"skythought_correct5k27b_math500": {"rows": 120},
                                  "skythought_correct5k27b_minerva": {"rows": 60}}
    assert stats["batches"] == 8  # 180 rows in batches of 25 (the reader starts a batch per file)
    assert "stats" not in result.funnel.columns


def test_a_step_that_drops_every_row_is_said_loudly_and_strict_raises(math500_sample, tmp_path):
    steps = [ExtractAnswer(), Filter(min_thinking_chars=10**9)]
    with pytest.warns(EmptyResultWarning) as caught:
        result = Pipeline(steps).run(read(math500_sample), out=tmp_path / "empty")
    said = [str(w.message) for w in caught]
    assert any("step 2 'filter' dropped all 120 rows it saw (top reject reason: 'thinking has # chars < "
               "min_thinking_chars=#', 120 rows, e.g. 'thinking has " in m for m in said), said
    assert any(m.endswith("the run wrote 0 rows") for m in said)
    assert result.warnings[0].startswith("step 2 'filter' dropped all 120 rows")
    with pytest.raises(EmptyResultError, match="step 2 'filter' dropped all 120 rows"):
        Pipeline(steps).run(read(math500_sample), out=tmp_path / "strict", strict=True)
    assert (tmp_path / "strict" / "manifest.json").exists(), "the folder is written before strict raises"
    assert "WARNING step 2 'filter' dropped all" in (tmp_path / "strict" / "run.log").read_text()
    # a variant that comes out empty while the base does not
    with pytest.warns(EmptyResultWarning, match="variant 'none': step 2 'filter' dropped all 120"):
        fam = Pipeline([ExtractAnswer()], variants={"all": [], "none": [Filter(min_thinking_chars=10**9)]}).run(
            read(math500_sample), out=tmp_path / "fam")
    assert fam.warnings == [fam.warnings[0], "variant 'none' has 0 rows"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n{nor this\n")
    with pytest.warns(EmptyResultWarning, match="the reader rejected all 2 input rows .top reject reason: "
                                                "'malformed JSON"):
        Pipeline([]).run(read(bad, format="messages"), out=tmp_path / "bad")
    ok = Pipeline([Filter(min_thinking_chars=200)]).run(read(math500_sample), out=tmp_path / "ok", strict=True)
    assert ok.rows > 0 and ok.warnings == []


class _RecordingBar:
    """Stands in for tqdm: records every bar's updates."""

    bars: list[_RecordingBar] = []  # noqa: RUF012

    def __init__(self, total=None, desc="", **_):
        self.desc, self.total, self.updates = desc, total, []
        _RecordingBar.bars.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def close(self):
        pass


def test_the_verify_bar_moves_row_by_row_within_a_part(math500_sample, tmp_path, monkeypatch):
    from curate.ops import Verify

    monkeypatch.setattr("curate.pipeline.progress_bar", _RecordingBar)
    _RecordingBar.bars = []
    data = read(math500_sample).to_polars().head(40)
    Pipeline([ExtractAnswer(), Verify(workers=1)], batch_size=1000).run(read(data), out=tmp_path / "v")
    (bar,) = [b for b in _RecordingBar.bars if b.desc.endswith("verify")]
    assert bar.total == 40 and sum(bar.updates) == 40
    assert len([n for n in bar.updates if n > 0]) >= 20, f"one part, yet the bar moved {bar.updates}"


# --- one writer, no partial files, filesystem failures ---------------------------------------------


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(samples_dir, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_KILLABLE)
    out = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, str(script), str(samples_dir), str(out), "0.3", "local"], env=env)
    try:
        stage = out / ".curate" / "stage-02-test_slow"
        deadline = time.time() + 120
        while time.time() < deadline and not list(stage.glob("part-*.parquet")):
            time.sleep(0.05)
        with pytest.raises(PipelineError, match=rf"{out} is being written by another curate run \(pid {first.pid} "):
            Pipeline([ExactDedup()]).run(read(samples_dir), out=out, progress=False)
        assert first.poll() is None, "the first run goes on"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # a killed holder leaves no stale lock: the same job resumes and finishes
    subprocess.run([sys.executable, str(script), str(samples_dir), str(out), "0", "local"], env=env, check=True)
    assert pl.read_parquet(out / "data").height == 50


def test_a_manifest_whose_shards_are_missing_is_not_trusted(math500_sample, tmp_path):
    out = tmp_path / "ds"
    first = Pipeline([ExtractAnswer()]).run(read(math500_sample), out=out, progress=False)
    shard = out / first.manifest["output"]["files"][0]
    shard.unlink()
    with pytest.warns(UserWarning, match=r"shard data/train-00000-of-00001.parquet listed in manifest.json is missing"):
        again = Pipeline([ExtractAnswer()]).run(read(math500_sample), out=out, progress=False)
    assert shard.exists() and again.to_polars().equals(first.to_polars())


def test_partial_files_are_removed_when_a_run_starts(math500_sample, tmp_path):
    out = tmp_path / "ds"
    Pipeline([ExtractAnswer()], batch_size=50).run(read(math500_sample), out=out, progress=False, keep_work=True)
    (out / "manifest.json").unlink()  # as if killed while writing the shards:
    partial = [out / "data" / ".train-00000-of-00001.parquet.4242.tmp",
               out / ".curate" / "stage-01-extract_answer" / ".part-00001.parquet.4243.tmp"]
    for p in partial:
        p.write_bytes(b"PAR1 half a file")
    Pipeline([ExtractAnswer()], batch_size=50).run(read(math500_sample), out=out, progress=False)
    assert not any(p.exists() for p in partial)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]


def test_the_work_folder_goes_after_a_finished_run_and_its_stages_become_the_cache(math500_sample, tmp_path):
    out = tmp_path / "ds"
    Pipeline([ExtractAnswer()]).run(read(math500_sample), out=out, progress=False)
    assert not (out / ".curate").exists()
    assert len(list((out / ".curate-cache").glob("stage-*"))) == 2  # read, extract_answer
    kept = tmp_path / "kept"
    Pipeline([ExtractAnswer()]).run(read(math500_sample), out=kept, progress=False, keep_work=True)
    assert len(list((kept / ".curate").glob("stage-*"))) == 2 and not (kept / ".curate-cache").exists()


def _cli_run(tmp_path: Path, sample: Path, out: Path):
    from click.testing import CliRunner

    from curate.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"input: {{path: {sample}}}\nsteps:\n  - extract_answer: {{}}\n")
    return CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--no-progress", "--no-card"])


@pytest.mark.parametrize(("errno_", "says"), [
    ("ENOSPC", "no space left on the device holding {out} (writing "),
    ("EROFS", "{out} is on a read-only file system; choose another --out"),
])
def test_filesystem_failures_are_one_line_and_the_rerun_resumes(math500_sample, tmp_path, monkeypatch, errno_, says):
    import errno

    out = tmp_path / "ds"
    real = pq.write_table
    calls = []

    def failing(table, where, **kw):
        calls.append(where)
        if len(calls) == 2:  # the second part: some work is done already
            raise OSError(getattr(errno, errno_), os.strerror(getattr(errno, errno_)), str(where))
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", failing)
    res = _cli_run(tmp_path, math500_sample, out)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.output.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: " + says.format(out=out.resolve())), res.output
    assert res.output.strip().endswith(errors[0]), "the error is the run's last line"
    monkeypatch.setattr(pq, "write_table", real)
    res = _cli_run(tmp_path, math500_sample, out)
    assert res.exit_code == 0 and "wrote 120 rows" in res.output, res.output


def test_out_below_a_file_is_one_line(math500_sample, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = _cli_run(tmp_path, math500_sample, afile / "ds")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.strip() == f"error: --out {afile / 'ds'}: {afile} is a file, not a folder; choose another --out"
    res = _cli_run(tmp_path, math500_sample, afile)  # click itself says so for --out a file
    assert res.exit_code == 2 and "is a file" in res.output and "Traceback" not in res.output
    with pytest.raises(PipelineError, match=rf"--out {afile}: {afile} is a file, not a folder"):
        Pipeline([]).run(read(math500_sample), out=afile, progress=False)


def _start_stoppable_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`curate run` verifying code rows whose programs wait (a 60 s wall guard each), started in a
    session of its own as a terminal would; returns once its verify workers are running rows."""
    rows = [{"problem": f"Echo the number {i}.", "thinking": "Read it and print it.", "domain": "code",
             "solution": "```python\nimport time\ntime.sleep(600)\n```",
             "test_cases": [{"input": f"{i}\n", "output": f"{i}\n"}]} for i in range(4)]
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "stop.yaml"
    recipe.write_text(f"input: {{path: {data}}}\nsteps:\n  - verify: {{workers: 2, code_test_timeout_s: 20}}\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", str(recipe), "--out", str(out), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stage = out / ".curate" / "stage-01-verify" / "_meta.json"
    deadline = time.time() + 120
    while time.time() < deadline and not stage.exists():
        time.sleep(0.05)
    assert stage.exists() and proc.poll() is None
    time.sleep(4.0)  # the pool starts and its workers run the programs (which wait 60 s)
    assert proc.poll() is None
    return proc, out


def test_sigterm_stops_a_run_with_a_message(tmp_path):
    proc, out = _start_stoppable_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM; a `curate run` resumes where it stopped" in err and "Traceback" not in err, err
    assert not (out / "manifest.json").exists()


def test_ctrl_c_to_the_group_prints_no_worker_tracebacks(tmp_path):
    proc, _ = _start_stoppable_run(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_failed_write_leaves_no_partial_file(math500_sample, tmp_path, monkeypatch):
    """A full disk mid-write: the temporary file is deleted, not left beside the shards."""
    import errno

    from curate.io.write import write_parquet_atomic

    real = pq.write_table

    def half_then_full(table, where, **kw):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(pq, "write_table", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_parquet_atomic(pa.table({"x": [1]}), tmp_path / "part.parquet")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(pq, "write_table", real)
