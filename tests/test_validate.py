"""`curate validate` on CPU: a two-config variant dataset of real traces, a tiny Qwen2 student,
validation.json rows per config, the card's validation table and plot, and a resumed second call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("math_verify")
pytest.importorskip("matplotlib")
pytest.importorskip("huggingface_hub")

REPO = Path(__file__).resolve().parent.parent
# 2 optimizer steps on 288-token traces; 2 problems per benchmark, 8 generated tokens each.
TRAIN_ARGS = ["--method", "lora", "--cutoff", "288", "--pack-len", "576", "--global-batch", "4",
              "--max-steps", "2", "--lora-rank", "4", "--no-gradient-checkpointing", "--fp32"]
EVAL_ARGS = ["--benchmarks", "aime24,amc23", "--limit", "2", "--max-tokens", "8"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> Path:
    from curate import Pipeline, read
    from curate.card import write_card
    from curate.ops import Sample, ShuffleSteps

    out = tmp_path_factory.mktemp("validate") / "svc"
    Pipeline([Sample(n=12, seed=0)], variants={"clean": [], "shuffle_100": [ShuffleSteps(ratio=1.0)]}).run(
        read(REPO / "curate" / "data" / "samples"), out=out)
    write_card(out, license="apache-2.0")
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from curate.train.tiny import build_chat_model

    return build_chat_model(tmp_path_factory.mktemp("tiny"))


def test_validate_trains_and_scores_every_config_then_resumes(variants: Path, tiny: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from curate.cli import main

    runs = tmp_path / "runs"
    assert "No validation results recorded yet" in (variants / "README.md").read_text()
    res = CliRunner().invoke(main, ["validate", str(variants), "--model", str(tiny), "--out", str(runs),
                                    *TRAIN_ARGS, *EVAL_ARGS, "--no-progress"])
    assert res.exit_code == 0, res.output

    record = json.loads((variants / "validation.json").read_text())
    rows = record["results"]
    assert [r["config"] for r in rows] == ["clean", "shuffle_100"]
    for r in rows:
        scores = json.loads((runs / r["config"] / "eval" / "scores.json").read_text())["scores"]
        for b in ("aime24", "amc23"):
            assert scores[b]["problems"] == 2
            assert r[f"{b}_pass@1"] == round(scores[b]["accuracy"], 4)
            lo, hi = (float(x) for x in r[f"{b}_ci95"].split("–"))
            assert 0.0 <= lo <= r[f"{b}_pass@1"] <= hi <= 1.0 and hi - lo > 0.3  # 2 problems: a wide interval
        assert r["mean_pass@1"] == pytest.approx((r["aime24_pass@1"] + r["amc23_pass@1"]) / 2, abs=1e-4)
        assert r["train_steps"] == 2 and r["train_traces"] > 0
        train_record = json.loads((runs / r["config"] / "train_config.json").read_text())
        assert train_record["config"] == r["config"]  # each config trained on its own rows
        assert (runs / r["config"] / "final" / "adapter_config.json").exists()
    assert record["model"] == str(tiny.resolve()) and record["train"]["lora_rank"] == 4
    assert record["eval"]["limit"] == 2 and record["benchmarks"] == ["aime24", "amc23"]
    # The two configs really differ: the shuffled traces are not the clean ones.
    clean, shuffled = (json.loads((runs / c / "train_config.json").read_text())["data"] for c in ("clean", "shuffle_100"))
    assert clean["traces"] == shuffled["traces"] == 12

    text = (variants / "README.md").read_text()
    assert "## Validation results" in text and "No validation results recorded yet" not in text
    assert "| config | mean_pass@1 | aime24_pass@1 | aime24_ci95 |" in text
    assert "| clean |" in text and "| shuffle_100 |" in text
    assert "![Variants](plots/variants.png)" in text
    assert (variants / "plots" / "variants.png").read_bytes()[:4] == b"\x89PNG"
    assert "license: apache-2.0" in text  # regenerating the card kept its license

    # Second call: nothing is trained or evaluated again, and the file comes out the same.
    import curate.train.validate as v

    def boom(*args, **kwargs):
        raise AssertionError("redone although its outputs exist")

    monkeypatch.setattr(v, "train", boom)
    monkeypatch.setattr(v, "evaluate", boom)
    before = (variants / "validation.json").read_text()
    again = v.validate(variants, str(tiny), runs, train_cfg=_train_cfg(), eval_cfg=_eval_cfg(), progress=False)
    assert again.trained == [] and again.evaluated == [] and again.reused == ["clean", "shuffle_100"]
    assert (variants / "validation.json").read_text() == before

    # Other training settings on the same run folders: refused, not silently reused.
    with pytest.raises(ValueError, match="trained with other settings.*lora_rank"):
        v.validate(variants, str(tiny), runs, train_cfg=_train_cfg(lora_rank=8), eval_cfg=_eval_cfg(),
                   progress=False)


def test_validate_a_dataset_without_variants_uses_the_default_config(tiny: Path, tmp_path: Path) -> None:
    from curate import Pipeline, read
    from curate.ops import Sample
    from curate.train.eval import EvalConfig
    from curate.train.validate import validate

    data = tmp_path / "plain"
    Pipeline([Sample(n=6, seed=1)]).run(read(REPO / "curate" / "data" / "samples"), out=data)
    res = validate(data, str(tiny), tmp_path / "runs", train_cfg=_train_cfg(max_steps=1),
                   eval_cfg=EvalConfig(benchmarks=("amc23", "gpqa"), limit=1, max_tokens=4), progress=False)
    assert res.trained == ["default"] and [r["config"] for r in res.rows] == ["default"]
    row = res.rows[0]
    # One scored benchmark (gpqa ships as a fingerprint only): no mean column, amc23 is the plotted metric.
    assert list(row)[:3] == ["config", "amc23_pass@1", "amc23_ci95"]
    counts = json.loads((tmp_path / "runs" / "default" / "train_config.json").read_text())["data"]
    assert counts["traces"] == 6 and row["train_traces"] == counts["packed"] > 0  # all 6 rows exported
    record = json.loads((data / "validation.json").read_text())
    assert "gpqa" in record["skipped"] and "gpqa_pass@1" not in row
    assert "| default |" in (data / "README.md").read_text() and (data / "plots" / "variants.png").exists()


def _train_cfg(**changes):
    from curate.train.sft import TrainConfig

    base = {"method": "lora", "cutoff": 288, "pack_len": 576, "global_batch": 4, "max_steps": 2, "lora_rank": 4,
            "gradient_checkpointing": False, "bf16": False}
    return TrainConfig(**{**base, **changes})


def _eval_cfg():
    from curate.train.eval import EvalConfig

    return EvalConfig(benchmarks=("aime24", "amc23"), limit=2, max_tokens=8)
