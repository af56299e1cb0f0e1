"""The runner: funnel accounting, atomic layout, determinism, resume after a kill, chain checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


def test_finished_run_is_not_redone_and_other_recipe_needs_overwrite(math500_sample, tmp_path):
    out = tmp_path / "ds"
    first = Pipeline([Filter(min_thinking_chars=200)]).run(read(math500_sample), out=out)
    again = Pipeline([Filter(min_thinking_chars=200)]).run(read(math500_sample), out=out)
    assert again.manifest["created"] == first.manifest["created"]
    with pytest.raises(PipelineError, match="overwrite"):
        Pipeline([Filter(min_thinking_chars=3000)]).run(read(math500_sample), out=out)
    third = Pipeline([Filter(min_thinking_chars=3000)]).run(read(math500_sample), out=out, overwrite=True)
    assert third.rows < first.rows


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


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_killed_run_resumes_without_losing_or_duplicating_rows(engine, samples_dir, tmp_path):
    """SIGKILL the whole run mid-stage (for ray: the driver, and with it the Ray it started)."""
    script = tmp_path / "job.py"
    script.write_text(_KILLABLE)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
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
