"""Benchmark evaluation: scoring real Sky-T1 responses, the Wilson interval, and `curate eval` end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "curate" / "data" / "samples" / "skythought_correct5k27b_math500.jsonl"


def test_wilson_interval():
    from curate.train.eval import wilson

    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0.0, 30)[0] == 0.0 and 0.11 < wilson(0.0, 30)[1] < 0.12
    assert wilson(1.0, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)


def test_scoring_agrees_with_the_harness_on_real_responses():
    pytest.importorskip("math_verify")
    from curate.train.eval import score

    rows = [json.loads(line) for line in SAMPLE.open(encoding="utf-8")][:60]
    verdicts = [(score(r["code"][0], r["gt"]), bool(r["score"][0])) for r in rows]
    both = sum(v["correct"] and h for v, h in verdicts)
    assert both >= 30  # the harness marks 42 of these 60 correct; truncated ones have no answer to find
    # Where we disagree by saying "correct", the harness was wrong: our extracted answer is the reference.
    for (v, h), r in zip(verdicts, rows):
        if v["correct"] and not h:
            assert v["pred"].replace(" ", "") == r["gt"].replace(" ", "")
    # A response whose answer is changed is scored wrong.
    wrong = score(rows[0]["code"][0].replace("\\boxed{", "\\boxed{7+"), rows[0]["gt"])
    assert not wrong["correct"]


def test_eval_end_to_end_on_a_trained_adapter(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("math_verify")
    import polars as pl
    from click.testing import CliRunner

    import curate
    from curate.cli import main
    from curate.train.tiny import build_chat_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = build_chat_model(tmp_path / "tiny")
        data = tmp_path / "data"
        curate.run_recipe(REPO / "pipelines" / "quickstart.yaml", out=data)
        runner = CliRunner()
        res = runner.invoke(main, ["train", str(data), "--model", str(tiny), "--method", "lora",
                                   "--out", str(tmp_path / "run"), "--cutoff", "288", "--pack-len", "576",
                                   "--global-batch", "8", "--max-steps", "2", "--lora-rank", "4",
                                   "--no-progress"])  # gradient checkpointing on (the default)
        assert res.exit_code == 0, res.output
        trained = re.search(r"trained 2 steps on (\d+) traces", res.output)
        assert trained and 40 <= int(trained.group(1)) <= 50  # of 50: a trace whose prompt fills the cutoff has no target
        res = runner.invoke(main, ["eval", str(tmp_path / "run"), "--benchmarks", "aime24,amc23,gpqa",
                                   "--limit", "3", "--max-tokens", "8", "--out", str(tmp_path / "eval")])
        assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(before)
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())["scores"]
    assert set(scores) == {"aime24", "amc23", "gpqa"} and "skipped" in scores["gpqa"]
    for name in ("aime24", "amc23"):
        s = scores[name]
        assert s["problems"] == 3 and 0.0 <= s["ci95"][0] <= s["accuracy"] <= s["ci95"][1] <= 1.0
        assert s["output_tokens"] == 3 * 8  # random weights never stop early
    gens = pl.read_parquet(tmp_path / "eval" / "generations.parquet")
    assert gens.height == 6 and set(gens["benchmark"]) == {"aime24", "amc23"}
    assert gens.filter(pl.col("benchmark") == "aime24")["reference"].to_list()[0] is not None
    assert (gens["completion_tokens"] == 8).all() and gens["text"].str.len_chars().min() > 0
    assert (tmp_path / "eval" / "merged" / "config.json").exists()  # the adapter was merged for serving
