"""A new global step written outside curate (only this module): its own split pass, run by the
local engine and by Ray, same dataset; and engines/ knows no operator."""

from __future__ import annotations

import ast
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import polars as pl
import pytest

import curate.engines
from curate import Pipeline, RunResult, read
from curate.globalpass import PassContext
from curate.step import Step, StepResult, build_step, reject_where

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the test module


@dataclass
class KeepLongestThinking(Step):
    """Keep the ``k`` rows with the longest thinking (ties: the earlier row), drop the rest."""

    name = "_test_keep_longest_thinking"
    needs_global_pass = True
    reads = ("thinking",)

    k: int = 10

    def plan(self, ctx: PassContext) -> None:
        """Each part's own top k (one unit per part, on the engine), then the k-th of those here."""
        done = ctx.done()
        if done is None:
            store = ctx.scratch  # memory here, files under the stage's _fit/ on Ray

            def part_top(s: KeepLongestThinking, item: tuple[int, str, int]) -> dict[str, Any]:
                k, path, offset = item
                keys = s._keys(pl.read_parquet(path, columns=["thinking"]), offset)
                store.put(f"top/{k:05d}", keys.sort(["len", "pos"], descending=[True, False]).head(s.k))
                return {"rows": keys.height}

            ctx.map(part_top, ctx.items(), state=self, on_result=ctx.told())
            found = [store.get(key) for key in store.keys("top")]
            best = pl.concat(found).sort(["len", "pos"], descending=[True, False]).head(self.k)
            done = {"cut": best.tail(1).row(0) if best.height else None}
            ctx.finish(done, ["top"])
        self._cut = done["cut"]

    @staticmethod
    def _keys(batch: pl.DataFrame, offset: int) -> pl.DataFrame:
        return pl.DataFrame({"len": batch["thinking"].fill_null("").str.len_chars().cast(pl.Int64),
                             "pos": np.arange(offset, offset + batch.height, dtype=np.int64)})

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        if self._cut is None:
            return reject_where(batch, pl.Series([True] * batch.height), "not among the longest")
        keys, (n, p) = self._keys(batch, offset), self._cut
        keep = (keys["len"] > n) | ((keys["len"] == n) & (keys["pos"] <= p))
        return reject_where(batch, ~keep, f"not among the {self.k} longest thinking")


def _expected(traces: pl.DataFrame, k: int) -> list[str]:
    """The ids the step must keep, in input order, by a plain sort of the whole input."""
    order = traces.with_row_index("pos").with_columns(pl.col("thinking").fill_null("").str.len_chars().alias("n"))
    chosen = order.sort(["n", "pos"], descending=[True, False]).head(k)["pos"]
    return order.filter(pl.col("pos").is_in(chosen.implode()))["id"].to_list()


def _run(engine: Any, samples_dir: Path, out: Path) -> RunResult:
    steps = [build_step("filter", {"min_thinking_chars": 100}), KeepLongestThinking(k=17)]
    return Pipeline(steps, batch_size=13).run(samples_dir, out, engine=engine, progress=False, card=False)


def test_a_global_step_written_outside_curate_runs_its_own_pass(samples_dir: Path, tmp_path: Path) -> None:
    result = _run("local", samples_dir, tmp_path / "local")
    kept = result.to_polars()
    source = read(samples_dir).to_polars().filter(pl.col("thinking").str.len_chars() >= 100)
    assert kept.height == 17 and kept["id"].to_list() == _expected(source, 17)
    assert result.funnel["rejected"][2] == source.height - 17 > 0


def test_the_same_global_step_on_ray_writes_the_local_dataset(samples_dir: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    folder = tempfile.mkdtemp(prefix="curate-ray-")  # not the machine's /tmp/ray (short: unix sockets)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=folder)
    try:
        distributed = _run("ray", samples_dir, tmp_path / "ray")
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    local = _run("local", samples_dir, tmp_path / "local")
    assert local.to_polars().equals(distributed.to_polars()) and local.to_polars().height == 17
    assert local.rejects().equals(distributed.rejects())
    assert local.funnel.drop("seconds").equals(distributed.funnel.drop("seconds"))


def test_engines_import_nothing_from_ops() -> None:
    """curate/engines/ knows steps only through what `Step` declares."""
    bad = []
    for path in sorted(Path(curate.engines.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n == "curate.ops" or n.startswith("curate.ops.")]
    assert not bad, bad
