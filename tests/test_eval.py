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
    from curate.models.tiny import build

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = build(tmp_path / "tiny", chat=True)
        data = tmp_path / "data"
        curate.run_recipe(REPO / "pipelines" / "long_cot_sample.yaml", out=data)
        runner = CliRunner()
        res = runner.invoke(main, ["train", str(data), "--model", str(tiny), "--method", "lora",
                                   "--out", str(tmp_path / "run"), "--cutoff", "800",
                                   "--global-batch", "8", "--max-steps", "2", "--lora-rank", "4",
                                   "--no-progress"])  # gradient checkpointing on (the default)
        assert res.exit_code == 0, res.output
        trained = re.search(r"trained 2 steps on (\d+) traces", res.output)
        assert trained and 35 <= int(trained.group(1)) <= 50  # of 50: a trace whose prompt fills the cutoff has no target
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
    # The run was prompted as it was trained: the sample's Sky-T1 markers and system prompt.
    trained = json.loads((tmp_path / "run" / "train_config.json").read_text())["template"]
    asked = json.loads((tmp_path / "eval" / "scores.json").read_text())["template"]
    assert asked == trained and trained["style"] == "sky-t1"


def _harness_rows(path: Path, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    return rows[:n] if n else rows


def test_generations_from_the_papers_harness_agree_with_its_own_scores(shared_data, tmp_path):
    """`curate eval --generations` on real Qwen2.5-Math / SkyThought eval outputs of the paper's
    students: every record matches its bundled benchmark item, and the verdicts agree with the
    harness's own `score` (AMC23 and AIME24: all of them)."""
    pytest.importorskip("math_verify")
    import polars as pl
    from click.testing import CliRunner

    from curate.cli import main

    traces = shared_data / "traces"
    math500 = tmp_path / "math500_head.jsonl"  # the first 120 MATH-500 outputs (the whole file is in BENCHMARKS.md)
    math500.write_text("".join(json.dumps(r) + "\n" for r in _harness_rows(traces / "skythought_correct5k27b_math500.jsonl", 120)))
    files = [traces / "skythought_corrupt07_32b_amc23.jsonl", traces / "skythought_reflection10_32b_aime24.jsonl", math500]
    res = CliRunner().invoke(main, ["eval", "--generations", *map(str, files), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())["scores"]
    assert set(scores) == {"amc23", "aime24", "math500"}
    assert (scores["amc23"]["problems"], scores["amc23"]["of"]) == (40, 40)
    assert scores["amc23"]["accuracy"] == scores["amc23"]["harness_accuracy"] == 0.775  # the harness's 77.5
    assert scores["aime24"]["agreement"] == 1.0 and scores["aime24"]["accuracy"] == pytest.approx(10 / 30)
    assert scores["math500"]["problems"] == 120 and scores["math500"]["agreement"] >= 0.8
    gens = pl.read_parquet(tmp_path / "ev" / "generations.parquet")
    assert gens.height == 190 and gens["harness_correct"].null_count() == 0
    # Where only the harness says correct, the response has no marked answer (no \boxed): the
    # Qwen2.5-Math harness then takes the last number in the text, curate's grader does not.
    only_harness = gens.filter(pl.col("harness_correct") & ~pl.col("correct"))
    assert only_harness.height > 0
    assert (only_harness["error"].str.contains("no answer found").sum() >= 0.7 * only_harness.height)
    assert "amc23" in res.output and "agreement 100.0%" in res.output


def test_generations_in_other_layouts_and_unmatched_ones(tmp_path, math500_sample):
    """A vLLM dump (the prompt with a chat template and a system prompt around the problem) and
    lighteval details (doc.query, model_response.text) score like the harness layout; a record
    that matches no benchmark item, or a problem given twice, is an error naming file and line."""
    pytest.importorskip("math_verify")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.train.generations import score_generations
    from curate.train.template import SKY_T1

    rows = _harness_rows(math500_sample, 12)
    harness = tmp_path / "harness.jsonl"
    harness.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chat = "<|im_start|>system\n{s}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    vllm = tmp_path / "vllm.jsonl"
    vllm.write_text("".join(json.dumps({"prompt": chat.format(s=SKY_T1.system_prompt, q=r["question"]),
                                        "outputs": [{"text": r["code"][0]}]}) + "\n" for r in rows))
    lighteval = tmp_path / "details.parquet"
    pq.write_table(pa.Table.from_pylist([{"doc": {"query": "Problem: " + r["question"] + "\nAnswer:"},
                                          "model_response": {"text": [r["code"][0]]}} for r in rows]), lighteval)
    got = [score_generations([f], tmp_path / f.stem)["math500"] for f in (harness, vllm, lighteval)]
    assert all(g["problems"] == 12 for g in got)
    assert got[0]["accuracy"] == got[1]["accuracy"] == got[2]["accuracy"] > 0
    assert "agreement" in got[0] and "agreement" not in got[1]  # only the harness file carries verdicts

    stray = tmp_path / "stray.jsonl"
    stray.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"problem": "What is the colour of a zebra's dream?",
                                                             "response": "\\boxed{7}"}) + "\n")
    with pytest.raises(ValueError, match=r"1 of 2 generations match no item.*stray.jsonl:2"):
        score_generations([stray], tmp_path / "x")
    with pytest.raises(ValueError, match=r"vllm.jsonl:1: math500 item .* already given at .*harness.jsonl:1"):
        score_generations([harness, vllm], tmp_path / "y")
    empty = tmp_path / "noresp.jsonl"
    empty.write_text(json.dumps({"problem": rows[0]["question"]}) + "\n")
    with pytest.raises(ValueError, match="noresp.jsonl:1: no response field"):
        score_generations([empty], tmp_path / "z")
