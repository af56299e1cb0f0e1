"""Stage round trips: parts written behind the read, shards read ahead, old trees deleted aside."""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from curate import Pipeline, read
from curate.engines import LocalEngine
from curate.io.outdir import TRASH_NAME
from curate.ops import Decontaminate, ExactDedup, ExtractAnswer, Filter, MinHashDedup
from curate.step import Step, StepResult, reject_where


def _steps() -> list:
    return [ExtractAnswer(), Filter(min_thinking_chars=2000)]


def test_shards_split_across_parts_hold_every_row_once_in_order(samples_dir, tmp_path):
    one = Pipeline(_steps(), batch_size=16).run(read(samples_dir), out=tmp_path / "one", progress=False, card=False)
    many = Pipeline(_steps(), batch_size=16).run(read(samples_dir), out=tmp_path / "many", progress=False,
                                                 card=False, shard_bytes=40_000)
    files = many.manifest["output"]["files"]
    assert len(files) >= 3, files
    sizes = [pq.ParquetFile(tmp_path / "many" / f).metadata.num_rows for f in files]
    assert sum(sizes) == one.rows > 0  # every row once, in shards of one size (the last: what is left)
    assert len(set(sizes[:-1])) == 1 and 0 < sizes[-1] <= sizes[0], sizes
    assert many.to_polars().equals(one.to_polars())
    # a shard starts and ends inside parts of 16 rows: the slices are right at both ends
    assert any(s % 16 for s in sizes)


@pytest.mark.parametrize("batch_size", [20, None])  # fixed parts; read batches of 10 joined in twos
def test_a_failed_write_behind_the_read_stops_the_run_and_the_rerun_resumes(samples_dir, tmp_path, monkeypatch,
                                                                             batch_size):
    from curate.engines import parts

    monkeypatch.setattr(parts, "READ_BATCH_ROWS", 10)
    monkeypatch.setattr(parts, "PART_MAX_ROWS", 20)
    reference = Pipeline(_steps(), batch_size=20).run(read(samples_dir), out=tmp_path / "ref", progress=False,
                                                      card=False)
    out = tmp_path / "ds"
    real = pq.write_table
    calls = []

    def failing(table, where, **kw):
        if "stage-00-read" in str(where) and ".part-" in str(where):  # the read's parts (the first
            calls.append(where)  # step's are written beside them: it takes each part as it is read)
            if len(calls) == 3:  # the third read part, written while the fourth batch is read
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(where))
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="Input/output error"):
        Pipeline(_steps(), batch_size=batch_size).run(read(samples_dir), out=out, progress=False, card=False)
    assert len(calls) == 3
    read_stage = out / ".curate" / "stage-00-read"
    written = sorted(p.name for p in read_stage.glob("part-*.parquet"))
    assert written == ["part-00000-00000.parquet", "part-00000-00001.parquet"], written
    assert not list(read_stage.glob(".*.tmp")), "a failed write leaves no partial file"
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(pq, "write_table", real)
    again = Pipeline(_steps(), batch_size=batch_size).run(read(samples_dir), out=out, progress=False, card=False)
    assert again.to_polars().equals(reference.to_polars())
    assert again.funnel.drop("seconds").equals(reference.funnel.drop("seconds"))
    assert again.rejects().sort("id").equals(reference.rejects().sort("id"))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failed_write_behind_a_step_stops_the_run_and_the_rerun_resumes(samples_dir, tmp_path, monkeypatch,
                                                                          threads):
    """A step's parts are written on a helper thread while the next is applied: a failed write
    stops the run with the parts before it (each with its rejects) and no partial file, and the
    rerun makes the same dataset."""
    engine = LocalEngine(threads=threads)
    reference = Pipeline(_steps(), batch_size=20).run(read(samples_dir), out=tmp_path / "ref", progress=False,
                                                      card=False, engine=engine)
    out = tmp_path / "ds"
    real = pq.write_table
    calls = []

    def failing(table, where, **kw):
        if "stage-01-" in str(where) and os.path.basename(str(where)).startswith(".part-"):
            calls.append(where)
            if len(calls) == 3:  # the third part of the first step, written while the fourth is applied
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(where))
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="Input/output error"):
        Pipeline(_steps(), batch_size=20).run(read(samples_dir), out=out, progress=False, card=False, engine=engine)
    stage = next((out / ".curate").glob("stage-01-*"))
    written = sorted(p.name for p in stage.glob("part-*.parquet"))
    assert written == ["part-00000.parquet", "part-00001.parquet"], written
    assert not list(stage.glob(".*.tmp")), "a failed write leaves no partial file"
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(pq, "write_table", real)
    again = Pipeline(_steps(), batch_size=20).run(read(samples_dir), out=out, progress=False, card=False,
                                                  engine=engine)
    assert again.to_polars().equals(reference.to_polars())
    assert again.funnel.drop("seconds").equals(reference.funnel.drop("seconds"))
    assert again.rejects().sort("id").equals(reference.rejects().sort("id"))


def test_old_trees_are_moved_aside_and_gone_when_the_run_ends(samples_dir, math500_sample, tmp_path):
    out = tmp_path / "ds"
    Pipeline(_steps(), batch_size=16).run(read(samples_dir), out=out, progress=False, card=False)
    old_parts = {p.name for p in (out / ".curate-cache").rglob("part-*.parquet")}
    assert old_parts
    left = out / TRASH_NAME / "stage-01-extract_answer-0123456789ab"  # as a run killed mid-delete leaves it
    left.mkdir(parents=True)
    (left / "part-00000.parquet").write_bytes(b"PAR1 old")
    # another input: every old stage and the old dataset go, in the background
    result = Pipeline(_steps(), batch_size=16).run(read(math500_sample), out=out, progress=False, card=False,
                                                   overwrite=True)
    assert not (out / TRASH_NAME).exists()
    assert result.to_polars().height == result.rows == pl.read_parquet(out / "data").height
    assert set(result.to_polars()["source"]) == {"skythought_correct5k27b_math500"}
    stages = sorted(p.name for p in (out / ".curate-cache").iterdir())
    assert stages == ["stage-00-read", "stage-01-extract_answer", "stage-02-filter"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".curate-cache", ".curate.lock"]


# --- parts applied in one stream: on threads for a thread-safe step ----------------------------


@dataclass
class _Slow(Step):
    """A thread-safe step whose parts finish out of order (later parts sooner), recording threads."""

    name = "slow_test_step"
    thread_safe = True

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        _THREADS.add(threading.get_ident())
        time.sleep(0.05 if offset == 0 else 0.002)
        drop = pl.Series([len(t) % 3 == 0 for t in batch["problem"]])
        return reject_where(batch, drop, "problem length divisible by 3")


_THREADS: set[int] = set()


def test_a_thread_safe_steps_parts_on_threads_give_the_one_thread_dataset(samples_dir, tmp_path):
    """Parts applied three at a time, finishing out of order, are written in order: the same
    data and rejects as one thread, every part applied once, on more than one thread."""
    def run(threads: int, name: str):
        _THREADS.clear()
        result = Pipeline([Decontaminate(benchmarks=["math500"]), _Slow()], batch_size=8).run(
            read(samples_dir), out=tmp_path / name, progress=False, card=False, engine=LocalEngine(threads=threads))
        return result, set(_THREADS)

    one, used_one = run(1, "one")
    many, used_many = run(3, "many")
    assert len(used_one) == 1 and len(used_many) > 1
    assert one.rows > 0 and many.to_polars().equals(one.to_polars())
    for step in ("decontaminate", "slow_test_step"):
        assert many.rejects(step).height > 0
        assert many.rejects(step).equals(one.rejects(step))
    assert [f["kept"] for f in many.manifest["funnel"]] == [f["kept"] for f in one.manifest["funnel"]]


def test_a_part_failing_on_a_thread_stops_the_run_and_the_rerun_resumes(samples_dir, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    calls: list[int] = []
    real = _Slow.apply

    def failing(self, batch, offset):
        calls.append(offset)
        if offset == 24:
            raise RuntimeError("part 3 failed")
        return real(self, batch, offset)

    monkeypatch.setattr(_Slow, "apply", failing)
    with pytest.raises(RuntimeError, match="part 3 failed"):
        Pipeline([_Slow()], batch_size=8).run(read(samples_dir), out=out, progress=False, card=False,
                                             engine=LocalEngine(threads=2))
    stage = out / ".curate" / "stage-01-slow_test_step"
    written = sorted(p.name for p in stage.glob("part-*.parquet"))
    assert written[:3] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert "part-00003.parquet" not in written
    monkeypatch.setattr(_Slow, "apply", real)
    calls.clear()
    resumed = Pipeline([_Slow()], batch_size=8).run(read(samples_dir), out=out, progress=False, card=False,
                                                    engine=LocalEngine(threads=2))
    fresh = Pipeline([_Slow()], batch_size=8).run(read(samples_dir), out=tmp_path / "fresh", progress=False,
                                                  card=False, engine=LocalEngine(threads=1))
    assert resumed.to_polars().equals(fresh.to_polars())
    assert resumed.rejects("slow_test_step").equals(fresh.rejects("slow_test_step"))


@pytest.mark.parametrize("step", [ExactDedup, MinHashDedup])
def test_a_dedups_planned_apply_on_threads_gives_the_one_thread_dataset(step, samples_dir, tmp_path):
    """Each input file twice: the second copies are dropped, whichever thread applies their part."""
    data = tmp_path / "in"
    data.mkdir()
    for f in sorted(samples_dir.glob("*.jsonl")):
        for copy in ("a", "b"):
            (data / f"{copy}_{f.name}").write_bytes(f.read_bytes())
    runs = [Pipeline([step()], batch_size=16).run(read(data), out=tmp_path / f"t{n}", progress=False, card=False,
                                                  engine=LocalEngine(threads=n)) for n in (1, 3)]
    one, many = runs
    assert one.rows == 180 and many.to_polars().equals(one.to_polars())
    assert many.rejects(step.name).height == 180
    assert many.rejects(step.name).equals(one.rejects(step.name))


def _read_parts(out) -> list[int]:
    folder = out / ".curate-cache" / "stage-00-read"
    return [pq.ParquetFile(p).metadata.num_rows for p in sorted(folder.glob("part-*.parquet"))]


def test_without_a_batch_size_parts_are_sized_by_content_and_the_rows_are_the_same(samples_dir, tmp_path,
                                                                                   monkeypatch):
    from curate.engines import parts

    fixed = Pipeline(_steps(), batch_size=7).run(read(samples_dir), out=tmp_path / "fixed", progress=False,
                                                 card=False)
    auto = Pipeline(_steps()).run(read(samples_dir), out=tmp_path / "auto", progress=False, card=False)
    assert _read_parts(tmp_path / "auto") == [120, 60]  # short rows: one part per input file
    assert auto.manifest["recipe"]["batch_size"] is None
    assert auto.to_polars().equals(fixed.to_polars()) and auto.rejects().equals(fixed.rejects())

    # long rows: a part closes at about PART_MAX_BYTES (~8 KB a row here) before it reaches PART_MAX_ROWS
    monkeypatch.setattr(parts, "READ_BATCH_ROWS", 8)
    monkeypatch.setattr(parts, "PART_MAX_BYTES", 200_000)
    small = Pipeline(_steps()).run(read(samples_dir), out=tmp_path / "small", progress=False, card=False)
    sizes = _read_parts(tmp_path / "small")
    assert sum(sizes) == 180 and max(sizes) <= 32 and len(sizes) >= 6, sizes  # not 120 and 60
    assert small.to_polars().equals(fixed.to_polars())
    monkeypatch.setattr(parts, "PART_MAX_ROWS", 16)  # and at PART_MAX_ROWS before the byte limit
    rows = Pipeline(_steps()).run(read(samples_dir), out=tmp_path / "rows", progress=False, card=False)
    assert _read_parts(tmp_path / "rows") == [16] * 7 + [8] + [16] * 3 + [12]
    assert rows.to_polars().equals(fixed.to_polars())


def test_joined_read_batches_keep_their_rejects_and_counts(tmp_path):
    from curate.engines.parts import joined

    lines = [b'{"problem": "p%d", "thinking": "t", "solution": "s"}' % i for i in range(10)]
    lines[3] = b"{not json"
    lines[7] = b'{"problem": "p7"}'
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    source = read(tmp_path / "in.jsonl")
    batches = list(joined(source.batches(3), source.schema(), max_rows=6, max_bytes=1 << 30))
    assert [b.rows for b in batches] == [6, 4]  # candidate rows: kept rows and rejects
    assert [b.traces.num_rows for b in batches] == [5, 3]
    assert [r["line"] for b in batches for r in b.rejects.to_pylist()] == [4, 8]
    assert [r["problem"] for b in batches for r in b.traces.select(["problem"]).to_pylist()] == [
        f"p{i}" for i in range(10) if i not in (3, 7)]


@dataclass
class _Pooled(Step):
    """A step that keeps workers (as a model step or verify does): it keeps the input's rows."""

    name = "pooled_test_step"

    def worker_resources(self) -> dict[str, float] | None:
        return {}

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        return StepResult(batch)


def test_parts_stay_at_1024_rows_when_a_step_keeps_a_model_or_a_worker_pool(tmp_path):
    """A killed model or verify stage redoes at most one part: 1,024 rows, however short."""
    data = tmp_path / "short.jsonl"
    data.write_text("".join(f'{{"problem": "p{i}", "thinking": "t", "solution": "s"}}\n' for i in range(1500)))
    runs = {"auto": Pipeline([Filter()]), "pooled": Pipeline([Filter(), _Pooled()]),
            "pooled variant": Pipeline([Filter()], variants={"v": [_Pooled()]}),
            "fixed": Pipeline([_Pooled()], batch_size=600)}
    assert [p.part_rows for p in runs.values()] == [None, 1024, 1024, 600]
    for name, pipeline in runs.items():
        out = tmp_path / name.replace(" ", "_")
        result = pipeline.run(read(data), out=out, progress=False, card=False)
        assert result.rows == 1500
        want = {"auto": [1500], "pooled": [1024, 476], "pooled variant": [1024, 476], "fixed": [600, 600, 300]}
        assert _read_parts(out) == want[name], name


@dataclass
class _Seen(Step):
    """Records, as each part is applied, how many of this stage's parts are on disk."""

    out: str = ""
    model: dict | None = None  # a model block makes it a model step (``model_settings``)
    name = "seen_test_step"

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        stage = next(iter(sorted((Path(self.out) / ".curate").glob("stage-01-*"))), None)
        _ON_DISK.append(len(list(stage.glob("part-*.parquet"))) if stage else 0)
        return StepResult(batch)


_ON_DISK: list[int] = []


def test_a_model_steps_part_is_on_disk_before_the_next_part_asks_the_model(samples_dir, tmp_path, monkeypatch):
    """A step's parts are written behind the next part's apply, except a model step's: killed
    between the two, a part written behind would be generated, and paid for, twice. With part
    writes made slow, the model step finds every earlier part on disk; the other step does not."""
    real = pq.write_table

    def slow(table, where, **kw):
        if "stage-01-" in str(where) and os.path.basename(str(where)).startswith(".part-"):
            time.sleep(0.3)
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", slow)
    seen = {}
    for label, model in (("model", {"backend": "echo"}), ("plain", None)):
        _ON_DISK.clear()
        out = tmp_path / label
        Pipeline([_Seen(out=str(out), model=model)], batch_size=20).run(read(samples_dir), out=out, progress=False,
                                                                         card=False)
        seen[label] = list(_ON_DISK)
    assert len(seen["model"]) >= 3
    assert seen["model"] == list(range(len(seen["model"])))  # part k applied with parts 0..k-1 written
    assert seen["plain"][1:] != list(range(1, len(seen["plain"])))  # written behind: not yet there


@dataclass
class _Gate(Step):
    """Opens ``_GATE`` when it applies the first part; the read waits for it after its first part."""

    name = "gate_test_step"

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        if offset == 0:
            _GATE.set()
        return StepResult(batch)


_GATE = threading.Event()


def test_the_first_step_applies_each_part_while_the_read_goes_on(samples_dir, tmp_path, monkeypatch):
    """The read stage hands its parts to the first step as it reads them (no round trip through
    the stage's files first): part 0 is applied while the read holds part 1 back, and the dataset,
    funnel and rejects equal those of a run whose stages ran one after the other."""
    from curate import pipeline

    real_read_split = pipeline.read_split
    waited: list[bool] = []

    def gated_read_split(source, s, folder, schema, batch_size, on_part=None):
        def announce(path, table):
            if on_part is not None:
                on_part(path, table)
            if not waited:  # after the first part: wait (at most 10 s) until the step has applied it
                waited.append(_GATE.wait(10))

        return real_read_split(source, s, folder, schema, batch_size, announce)

    _GATE.clear()
    monkeypatch.setattr(pipeline, "read_split", gated_read_split)
    steps = [_Gate(), *_steps()]
    streamed = Pipeline(steps, batch_size=16).run(read(samples_dir), out=tmp_path / "streamed", progress=False,
                                                  card=False)
    assert waited == [True]
    monkeypatch.setattr(pipeline._Run, "_can_stream", lambda self, fp: False)
    staged = Pipeline(steps, batch_size=16).run(read(samples_dir), out=tmp_path / "staged", progress=False,
                                                card=False)
    assert streamed.to_polars().equals(staged.to_polars())
    assert streamed.funnel.drop("seconds").equals(staged.funnel.drop("seconds"))
    assert streamed.rejects().equals(staged.rejects())
    assert streamed.rows == staged.rows > 0


@dataclass
class _Fails(Step):
    """Raises on the part at row offset ``at``."""

    at: int = 32
    name = "fails_test_step"

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        if offset == self.at:
            raise RuntimeError(f"failed at row {offset}")
        return StepResult(batch)


def test_a_first_step_that_fails_mid_read_stops_the_read_and_the_rerun_resumes(samples_dir, tmp_path):
    """The step fails on its third part while the read goes on: the run raises the step's error
    (the read's thread stops, none is left behind), and the rerun reads and applies what is
    missing and makes the dataset a clean run makes."""
    reference = Pipeline([_Fails(at=-1), *_steps()], batch_size=16).run(read(samples_dir), out=tmp_path / "ref",
                                                                         progress=False, card=False)
    out = tmp_path / "ds"
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="failed at row 32"):
        Pipeline([_Fails(at=32), *_steps()], batch_size=16).run(read(samples_dir), out=out, progress=False,
                                                                card=False)
    assert not [t for t in threading.enumerate() if t.name == "curate-stream" and t.name not in before]
    step_parts = sorted(p.name for p in (out / ".curate" / "stage-01-fails_test_step").glob("part-*.parquet"))
    assert step_parts == ["part-00000.parquet", "part-00001.parquet"]
    again = Pipeline([_Fails(at=-1), *_steps()], batch_size=16).run(read(samples_dir), out=out, progress=False,
                                                                     card=False)
    assert again.to_polars().equals(reference.to_polars())
    assert again.funnel.drop("seconds").equals(reference.funnel.drop("seconds"))


@dataclass
class _Miscounts(Step):
    """An ``apply_parts`` that gives ``extra`` results more (or fewer, when negative) than parts."""

    extra: int = 0
    name = "miscounts_test_step"

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        return StepResult(batch)

    def apply_parts(self, parts):
        for batch, offset in parts:
            yield self.apply(batch, offset)
            if self.extra < 0:  # after the first part
                return
        for _ in range(self.extra):
            yield StepResult(batch)


@pytest.mark.parametrize("extra, message", [(-1, "apply_parts stopped before part 1"),
                                            (1, "apply_parts returned more results than parts")])
def test_an_apply_parts_that_miscounts_its_parts_stops_the_run(samples_dir, tmp_path, extra, message):
    """A step whose ``apply_parts`` drops or adds a result is an error naming the step, not a
    dataset with rows lost or made up."""
    from curate.errors import PipelineError

    with pytest.raises(PipelineError, match=f"step 1 'miscounts_test_step': {message}"):
        Pipeline([_Miscounts(extra=extra)], batch_size=16).run(read(samples_dir), out=tmp_path / "ds",
                                                               progress=False, card=False)


def test_a_streamed_steps_seconds_leave_out_its_wait_for_the_read(samples_dir, tmp_path, monkeypatch):
    """The funnel's seconds for the first step are its own work: with the read slowed to 0.5 s a
    part, a step that does nothing reports far less than the 0.5 s per part it waited."""
    from curate import pipeline

    real_read_split = pipeline.read_split

    def slow_read_split(source, s, folder, schema, batch_size, on_part=None):
        def announce(path, table):
            time.sleep(0.5)
            if on_part is not None:
                on_part(path, table)

        return real_read_split(source, s, folder, schema, batch_size, announce)

    monkeypatch.setattr(pipeline, "read_split", slow_read_split)
    result = Pipeline([Filter()], batch_size=50).run(read(samples_dir), out=tmp_path / "ds", progress=False,
                                                      card=False)
    funnel = {r["name"]: r for r in result.funnel.to_dicts()}
    parts = len(list((tmp_path / "ds" / ".curate-cache" / "stage-01-filter").glob("part-*.parquet")))
    assert parts >= 3
    assert funnel["filter"]["seconds"] < 0.25 * parts  # it waited 0.5 s for each
