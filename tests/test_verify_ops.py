"""The verify and pair_preferences steps on real traces, and the pool's deadline from outside."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest

from curate import Pipeline, read
from curate.errors import RecipeError
from curate.ops.verify.pool import Failed, WorkerPool, probe
from curate.ops.verify.step import PairPreferences, Verify, _kind
from curate.recipe import parse_recipe
from curate.step import build_step


def _frame(path) -> pl.DataFrame:
    return pl.concat([pl.from_arrow(b.traces) for b in read(path).batches(10_000)])


@pytest.fixture(scope="module")
def math500(math500_sample) -> pl.DataFrame:
    df = _frame(math500_sample)
    scores = [json.loads(e)["score"] for e in df["extra"]]
    return df.with_columns(pl.Series("label", [s[0] if isinstance(s, list) else s for s in scores]))


# --- the pool ------------------------------------------------------------------------------------


def test_pool_kills_a_hung_worker_and_goes_on() -> None:
    items = [("echo", 1), ("hang", 60), ("echo", 2), ("exit", 3), ("raise", "bad"), ("echo", 4)]
    # budgets are CPU time: an echo uses none, so however loaded the machine, only the hang (its
    # 0.5 s budget's wall guard: 2 x 0.5 + 1 = 2 s) and the twice-dying worker are replaced
    with WorkerPool(probe, 2, timeout_s=0.5, wall_factor=2.0, wall_slack_s=1.0) as pool:
        pool.map([("echo", 0)])  # workers started and ready
        t0 = time.monotonic()
        out = pool.map(items)
        wall = time.monotonic() - t0
        assert pool.replaced == 3  # the hang, and the exit twice (retried once in a fresh worker)
        assert pool.map([("echo", 5), ("echo", 6)]) == [5, 6]  # replacements work
    assert out[0] == 1 and out[2] == 2 and out[5] == 4
    assert isinstance(out[1], Failed) and out[1].kind == "timeout" and "wall-clock" in out[1].message
    assert isinstance(out[3], Failed) and out[3].kind == "crash" and "exit code 3" in out[3].message
    assert "also when retried" in out[3].message
    assert isinstance(out[4], Failed) and out[4].kind == "error" and "ValueError: bad" in out[4].message
    assert wall < 60  # the hang costs its guard, not 60 s


def test_pool_budget_is_cpu_time_so_waiting_is_not_a_timeout() -> None:
    """Sleeping 1.5 s within a 1 s budget is fine (on a loaded machine a row waits like this);
    1.5 s of CPU is killed after about 1 s of CPU, long before the wall guard."""
    with WorkerPool(probe, 1, timeout_s=1.0, wall_factor=20.0, wall_slack_s=10.0) as pool:
        pool.start()
        out = pool.map([("hang", 1.5), ("busy", 5.0), ("echo", 7)])
        assert pool.replaced == 1
    assert out[0] == "woke" and out[2] == 7
    assert isinstance(out[1], Failed) and out[1].kind == "timeout" and "1s of CPU time" in out[1].message
    assert out[1].seconds < 10.0  # stopped by its CPU budget, not the 30 s wall guard


def test_pool_retries_a_row_whose_worker_died_once(tmp_path) -> None:
    marker = str(tmp_path / "died-once")
    with WorkerPool(probe, 1, timeout_s=30.0) as pool:
        out = pool.map([("echo", 1), ("exit_once", marker), ("echo", 2)])
        assert pool.replaced == 1
    assert out == [1, "second try", 2]


def test_pool_workers_do_not_import_from_the_working_directory(tmp_path, monkeypatch) -> None:
    """A `timeit.py` (or `json.py`, ...) where curate is started must not shadow the stdlib in
    the workers: they start without the working directory on sys.path."""
    (tmp_path / "timeit.py").write_text(f"open({str(tmp_path / 'IMPORTED')!r}, 'w').write('x')\n"
                                        "raise SystemExit('shadowed')\n")
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "")
    with WorkerPool(probe, 1, timeout_s=30.0) as pool:
        pool.start()
        assert pool.map([("echo", 1)]) == [1]
    verdicts = Verify(keep="all", workers=1).run_tasks(
        [{"kind": "math", "reference": "2", "solution": "so $\\boxed{2}$", "timeout_s": 5}])
    assert verdicts[0]["correct"] is True
    assert not (tmp_path / "IMPORTED").exists()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_pool_workers_are_forks_of_one_zygote_and_none_outlives_close() -> None:
    """One interpreter imports; workers, and the replacement of a killed one, are its forks
    (no second import, no warm spare); close() leaves no process behind."""
    pool = WorkerPool(probe, 2, timeout_s=0.5, wall_factor=2.0, wall_slack_s=1.0)
    try:
        pool.start()
        assert pool.zygote is not None
        zygote = pool.zygote.process.pid
        first = [w.process.pid for w in pool.workers]
        assert [_ppid(pid) for pid in first] == [zygote, zygote]
        out = pool.map([("busy", 3.0), ("echo", 1), ("exit", 5), ("echo", 2)])
        assert out[1] == 1 and out[3] == 2 and pool.replaced == 3  # the busy one, the exit twice
        assert out[0].kind == "timeout" and "exit code 5" in out[2].message
        now = [w.process.pid for w in pool.workers]
        assert not set(now) & set(first) and [_ppid(pid) for pid in now] == [zygote, zygote]
        assert pool.zygote.process.pid == zygote  # the same zygote served every replacement
    finally:
        pool.close()
    assert not [pid for pid in [zygote, *first, *now] if Path(f"/proc/{pid}").exists()]


def test_run_starts_the_verify_pool_before_reading(tmp_path, math500_sample) -> None:
    """The local runner calls ``warm_up`` before the read stage, so the pool's imports overlap it."""
    seen: list[str] = []

    class Watched(Verify):
        def warm_up(self) -> None:
            work = tmp_path / "out" / ".curate"
            seen.append("read parts" if any(work.glob("*read*/part-*")) else "nothing read")
            super().warm_up()
            seen.append("zygote" if self._pool is not None and self._pool.zygote is not None else "none")

    step = Watched(keep="all", workers=1)
    Pipeline([step]).run(read(math500_sample), out=tmp_path / "out", card=False)
    assert seen == ["nothing read", "zygote"]
    inline = Watched(keep="all", workers=0)  # no pool to start
    Pipeline([inline]).run(read(math500_sample), out=tmp_path / "inline", card=False)
    assert seen[2:] == ["nothing read", "none"]


def test_curate_run_launches_the_verify_zygote_before_its_imports_and_the_pool_adopts_it(
        tmp_path, math500_sample, monkeypatch) -> None:
    """``curate run`` starts verify's zygote from the recipe (``curate.ops.EARLY_START``) before it
    imports the pipeline; the step's pool adopts that one, so one zygote serves the run. A recipe
    whose verify checks inline, or one that does not parse, starts none; one never adopted is
    stopped at exit (``_close_early``)."""
    from click.testing import CliRunner

    import curate.ops.verify.pool as pool_module
    from curate.cli import _start_early, main

    made: list[int] = []

    class Counted(pool_module._Zygote):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.process.pid)

    monkeypatch.setattr(pool_module, "_Zygote", Counted)
    launched: list[str] = []
    start = pool_module.start_early
    monkeypatch.setattr(pool_module, "start_early", lambda *a: launched.append("early") or start(*a))

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"input: {{path: {math500_sample}}}\nsteps:\n  - verify: {{keep: all, workers: 1}}\n")
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "out"), "--no-card", "-q"])
    assert result.exit_code == 0, result.output
    assert launched == ["early"] and len(made) == 1  # the early zygote was the run's only one
    assert not pool_module._EARLY  # adopted
    assert not Path(f"/proc/{made[0]}").exists()  # stopped and reaped with the pool

    for text in ("steps:\n  - verify: {workers: 0}\n", "steps: [verify: {keep: all\n", "- not a mapping\n",
                 "steps:\n  - filter: {}\n"):
        recipe.write_text(f"input: {{path: {math500_sample}}}\n" + text)
        _start_early(recipe)
    assert launched == ["early"] and not pool_module._EARLY

    recipe.write_text(f"input: {{path: {math500_sample}}}\nvariants:\n  v: [verify]\nsteps: []\n")
    _start_early(recipe)  # a variant's step counts too; this one is never adopted
    assert launched == ["early", "early"] and len(pool_module._EARLY) == 1
    zygote = next(iter(pool_module._EARLY.values())).process
    pool_module._close_early()
    assert zygote.poll() is not None and not pool_module._EARLY


def test_pool_imap_takes_the_next_items_while_the_last_ones_run() -> None:
    """A stream's items go to workers as they have room: a slow item at the end of one batch
    runs beside the next batch's items, which are taken before the slow one is answered."""
    taken: list[int] = []
    answered_when: list[int] = []

    def stream():
        for k, item in enumerate([("busy", 0.6), ("echo", 1), ("echo", 2), ("echo", 3), ("echo", 4)]):
            taken.append(k)
            yield item, 5.0

    with WorkerPool(probe, 2, timeout_s=5.0) as pool:
        pool.start()
        out = []
        for r in pool.imap(stream()):
            answered_when.append(len(taken))
            out.append(r)
        assert out == ["done", 1, 2, 3, 4]  # item order, whatever order they finished in
        assert answered_when[0] == 5  # every later item was taken while the slow first one ran


def test_pool_stream_that_raises_leaves_the_pool_clean() -> None:
    """An error in the caller's stream ends imap with it; items still in flight are dropped with
    their workers, so the next map gets only its own answers."""
    def stream():
        yield ("busy", 0.3), 5.0
        yield ("echo", 1), 5.0
        raise OSError("part unreadable")

    with WorkerPool(probe, 2, timeout_s=5.0) as pool:
        with pytest.raises(OSError, match="part unreadable"):
            list(pool.imap(stream()))
        assert pool.map([("echo", 7), ("echo", 8), ("echo", 9)]) == [7, 8, 9]


def test_verify_apply_parts_gives_each_part_what_apply_gives_it(math500) -> None:
    """The local runner's stream of parts (one pool fed across parts, empty parts too) returns,
    part by part, exactly the per-part ``apply``'s result."""
    rows = math500.drop("label")
    parts = [rows.slice(0, 7), rows.slice(7, 0), rows.slice(7, 12), rows.slice(19, 1), rows.slice(20, 0)]
    step = Verify(keep="correct", workers=2)
    offsets = [0, 7, 7, 19, 20]
    streamed = list(step.apply_parts(iter(zip(parts, offsets, strict=True))))
    inline = Verify(keep="correct", workers=0)
    assert len(streamed) == len(parts)
    for got, part, offset in zip(streamed, parts, offsets, strict=True):
        want = inline.apply(part, offset)
        assert got.kept.equals(want.kept)
        assert (got.rejected is None) == (want.rejected is None)
        if want.rejected is not None:
            assert got.rejected.equals(want.rejected)
        assert got.stats == want.stats


def test_pool_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(probe, 0, 1.0)
    with pytest.raises(ValueError, match="timeout"):
        WorkerPool(probe, 1, 0)


# --- verify -------------------------------------------------------------------------------------


def test_params_are_validated() -> None:
    with pytest.raises(RecipeError, match="keep must be one of"):
        build_step("verify", {"keep": "best"})
    with pytest.raises(RecipeError, match="domain must be one of"):
        build_step("verify", {"domain": "chess"})
    with pytest.raises(RecipeError, match="timeout_s"):
        build_step("verify", {"timeout_s": 0})
    assert isinstance(build_step("verify", {"keep": "all", "workers": 0}), Verify)


def test_keep_modes_partition_real_traces(math500) -> None:
    batch = math500.head(60)
    annotated = Verify(keep="all", workers=0).apply(batch, 0)
    assert annotated.rejected is None and annotated.kept.height == 60
    verdict = annotated.kept["verify_correct"]
    n_true, n_false = int((verdict == True).sum()), int((verdict == False).sum())  # noqa: E712
    assert n_true > 30 and n_false > 0  # real traces: mostly right, some wrong
    # agreement with the Qwen2.5-Math grader's label; most of the rest are responses with no
    # stated answer, which that grader scores by their last number (see BENCHMARKS.md (Verify))
    assert (verdict == batch["label"]).sum() >= 45

    correct = Verify(keep="correct", workers=0).apply(batch, 0)
    assert correct.kept.height == n_true and correct.kept["verify_correct"].all()
    assert correct.kept.height + correct.rejected.height == 60
    assert correct.rejected["reject_reason"].str.starts_with("incorrect").sum() == n_false
    example = correct.rejected.filter(pl.col("verify_pred").is_not_null())["reject_reason"][0]
    assert " != reference " in example

    wrong = Verify(keep="incorrect", workers=0).apply(batch, 0)
    assert wrong.kept.height == n_false and not wrong.kept["verify_correct"].any()
    assert set(wrong.kept["id"]) == set(correct.rejected.filter(pl.col("verify_correct") == False)["id"])  # noqa: E712


def test_unverifiable_rows_are_never_kept_as_correct(math500) -> None:
    batch = math500.head(10).with_columns(pl.lit(None, dtype=pl.String).alias("reference_answer"))
    res = Verify(keep="correct", workers=0).apply(batch, 0)
    assert res.kept.height == 0
    assert res.rejected["reject_reason"].unique().to_list() == ["unverifiable: no reference answer"]
    kept = Verify(keep="correct", workers=0, keep_unverifiable=True).apply(batch, 0)
    assert kept.kept.height == 10 and kept.kept["verify_correct"].null_count() == 10


def test_pool_timeout_on_real_pathological_rows(shared_data) -> None:
    """A real Minerva row whose math-verify comparison runs for 5+ s (an equation of functions
    with ``\\ddot``): with a 1 s limit it comes back null ('timeout'), the rows around it are
    verified, and the slowest row costs the limit plus a little. The in-worker timer stops it,
    so no worker is killed here (the hang no timer can stop is the probe test above)."""
    df = _frame(shared_data / "traces" / "skythought_correct5k27b_minerva.jsonl")
    slow = df.filter(pl.col("reference_answer") == r"ml\ddot{\theta}(t)-mg\sin\theta(t)=f(t)\cos\theta(t)")
    assert slow.height == 1
    quick = df.filter(pl.col("reference_answer").str.contains(r"^\d+$")).head(6)
    batch = pl.concat([quick.head(3), slow, quick.tail(3), slow])
    step = Verify(keep="all", workers=2, timeout_s=1.0)
    step.start_pool()
    t0 = time.monotonic()
    out = step.apply(batch, 0).kept
    wall = time.monotonic() - t0
    hung = out[[3, 7]]
    assert hung["verify_correct"].null_count() == 2
    assert (hung["verify_error"] == "timeout after 1s of CPU time (comparing answers)").all()
    assert out[[0, 1, 2, 4, 5, 6]]["verify_correct"].null_count() == 0
    assert step._pool is not None and step._pool.replaced == 0
    assert wall < 60  # each slow row costs its 1 s of CPU (wall time depends on the machine's load)


def test_timeout_s_is_documented_as_math_mcq_only() -> None:
    """verify.timeout_s does not limit code rows; its help says which parameters do."""
    from curate.step import param_specs

    helps = {p["name"]: p["help"] for p in param_specs(Verify)}
    assert "code_test_timeout_s" in helps["timeout_s"] and "code_row_timeout_s" in helps["timeout_s"]
    assert "CPU" in helps["timeout_s"] and "CPU" in helps["code_test_timeout_s"]


def test_auto_domain_routing() -> None:
    gpqa = "Which one?\n\nA. 10^-4 ev\nB. 10^-8 ev\nC. 10^-9 ev\nD. 10^-11 ev"
    assert _kind("auto", {"domain": "science", "reference_answer": "A", "problem": gpqa}) == "mcq"
    assert _kind("auto", {"domain": "math", "reference_answer": "(C)", "problem": gpqa}) == "mcq"
    assert _kind("auto", {"domain": "math", "reference_answer": "3", "problem": "2+1?"}) == "math"
    assert _kind("auto", {"domain": "code", "reference_answer": None, "problem": "x"}) == "code"
    assert _kind("auto", {"domain": "other", "test_cases": [{"input": "1", "output": "1"}]}) == "code"
    assert _kind("math", {"domain": "code"}) == "math"


# --- pair_preferences -----------------------------------------------------------------------------


def test_pairs_from_real_samples(shared_data, tmp_path) -> None:
    """simpleRL MATH: 8 sampled answers per problem with correct and wrong ones mixed."""
    src = read(shared_data / "responses" / "simplerl_math_cot_100.jsonl")
    df = pl.concat([pl.from_arrow(b.traces) for b in src.batches(1000)]).head(160)  # 20 problems
    annotated = Verify(keep="all", workers=0).apply(df, 0).kept
    res = Pipeline([PairPreferences(max_pairs_per_problem=2)], batch_size=50).run(annotated, out=tmp_path / "pairs")
    pairs = res.to_polars()
    groups = annotated.group_by("problem").agg(
        (pl.col("verify_correct") == True).sum().alias("good"),  # noqa: E712
        (pl.col("verify_correct") == False).sum().alias("bad"),  # noqa: E712
    )
    expected = sum(min(g, b, 2) for g, b in groups.select("good", "bad").iter_rows())
    assert expected > 0 and pairs.height == expected
    assert pairs["verify_correct"].all()
    by_id = {r["id"]: r for r in annotated.iter_rows(named=True)}
    for row in pairs.iter_rows(named=True):
        partner = by_id[row["pair_rejected_id"]]
        assert partner["problem"] == row["problem"] and partner["verify_correct"] is False
        assert partner["solution"] == row["pair_rejected_solution"]
    rejects = res.rejects("pair_preferences")
    assert rejects.height == 160 - pairs.height
    assert (rejects["reject_reason"] == "used as the rejected side of a pair").sum() == pairs.height


def test_recipe_names_and_yaml(tmp_path) -> None:
    recipe = parse_recipe({
        "input": {"path": "x.jsonl"},
        "steps": [{"verify": {"domain": "math", "keep": "all", "timeout_s": 2, "workers": 0}},
                  {"pair_preferences": {"max_pairs_per_problem": 1}}],
        "output": {"path": str(tmp_path / "o")},
    })
    names = [s.name for s in recipe.pipeline.steps]
    assert names == ["verify", "pair_preferences"]
    recipe.pipeline.plan()  # pair_preferences reads what verify writes


def test_recipe_file_and_accuracy_report(shared_data, tmp_path) -> None:
    """pipelines/verify.yaml validates; a run's per-source accuracy counts every verified row."""
    from curate.ops.verify.report import verify_report
    from curate.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "pipelines" / "verify.yaml")
    assert [s.name for s in recipe.pipeline.steps] == ["verify"]
    assert recipe.pipeline.steps[0].keep == "correct"
    src = read(shared_data / "traces" / "skythought_corrupt07_32b_amc23.jsonl")
    res = Pipeline([Verify(keep="correct", workers=0)]).run(src, out=tmp_path / "v")
    report = verify_report(res)
    row = report.row(0, named=True)
    assert row["source"] == "skythought_corrupt07_32b_amc23" and row["rows"] == 40
    assert row["correct"] == res.rows and row["correct"] + row["incorrect"] + row["unverifiable"] == 40
    frame = _frame(shared_data / "traces" / "skythought_corrupt07_32b_amc23.jsonl")
    labels = [json.loads(e)["score"] for e in frame["extra"]]
    assert row["correct"] == sum(bool(s[0] if isinstance(s, list) else s) for s in labels)  # all 40 agree


def test_accuracy_per_source_is_one_computation_for_summary_report_and_card(shared_data, tmp_path) -> None:
    """`curate run`'s summary, the verify report and the dataset card show the same per-source
    counts and accuracies, all from ``source_accuracy``; nothing judged prints n/a, not a number."""
    pytest.importorskip("huggingface_hub")
    import io
    from contextlib import redirect_stdout

    from click.testing import CliRunner

    from curate.cli import _echo_accuracy, main
    from curate.ops.verify.report import source_accuracy, verify_report
    from curate.pipeline import RunResult

    traces = shared_data / "traces"
    recipe = tmp_path / "v.yaml"
    recipe.write_text(f"input: {{path: [{traces / 'skythought_corrupt07_32b_amc23.jsonl'}, "
                      f"{traces / 'skythought_correct5k32b_ckpt140_aime24.jsonl'}]}}\n"
                      "steps:\n  - verify: {domain: math, keep: correct, workers: 0}\n")
    out = tmp_path / "v"
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = RunResult(out, json.loads((out / "manifest.json").read_text()))
    verdicts = pl.concat([result.to_polars().select("source", "verify_correct"),
                          result.rejects("verify").select("source", "verify_correct")])
    card = (out / "README.md").read_text()
    report = verify_report(result)
    assert report["source"].to_list() == sorted(set(verdicts["source"])) and report.height == 2
    for source, rows in verdicts.group_by("source"):
        c, i = int(rows["verify_correct"].sum()), int((~rows["verify_correct"]).sum())
        u = rows["verify_correct"].null_count()
        assert 0 < c < rows.height  # a real mix of right and wrong answers
        assert (f"  verify [{source[0]}]: accuracy {c / (c + i):.1%} ({c} correct, {i} incorrect, "
                f"{u} unverifiable)") in res.output
        assert report.filter(pl.col("source") == source[0]).row(0)[1:] == (rows.height, c, i, u, round(c / (c + i), 4))
        assert f"| step 1 | {source[0]} | {rows.height} | {c} | {i} | {u} | {c / rows.height:.1%} |" in card
    both = source_accuracy({"b": {"correct": 1, "incorrect": 3}, None: {"unverifiable": 2}})
    assert both["source"].to_list() == [None, "b"] and both["rows"].to_list() == [2, 4]
    assert both["accuracy"][1] == 0.25 and both["correct_share"].to_list() == [0.0, 0.25]
    buf = io.StringIO()
    with redirect_stdout(buf):  # click.echo writes to sys.stdout
        _echo_accuracy([{"name": "verify", "stats": {"by_source": {"s": {"correct": 0, "incorrect": 0,
                                                                          "unverifiable": 3}}}}])
    assert buf.getvalue() == "  verify [s]: accuracy n/a (0 correct, 0 incorrect, 3 unverifiable)\n"
