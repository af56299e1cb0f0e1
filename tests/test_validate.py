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
pytest.importorskip("PIL")
pytest.importorskip("huggingface_hub")

REPO = Path(__file__).resolve().parent.parent
# 2 optimizer steps of 4 traces cut at 800 tokens (the Sky-T1 system prompt alone is ~560 tokens of the
# tiny tokenizer); 2 problems per benchmark, 8 generated tokens each.
TRAIN_ARGS = ["--method", "lora", "--cutoff", "800", "--global-batch", "4",
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
    from curate.models.tiny import build

    return build(tmp_path_factory.mktemp("tiny"), chat=True)


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
    # One template from training to evaluation, the dataset's own (Sky-T1 markers and system prompt),
    # recorded with the batch unit and the optimizer.
    from curate.train.template import SKY_T1_SYSTEM

    assert record["template"]["style"] == "sky-t1" and record["template"]["system_prompt"] == SKY_T1_SYSTEM
    for c in ("clean", "shuffle_100"):
        trained = json.loads((runs / c / "train_config.json").read_text())["template"]
        asked = json.loads((runs / c / "eval" / "scores.json").read_text())["template"]
        assert trained == asked == record["template"]
    assert record["batch_unit"] == "sequences" and record["optimizer"]["betas"] == [0.9, 0.999]
    assert record["preset"] is None and not any(k.endswith("_paper") for r in rows for k in r)
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

    base = {"method": "lora", "cutoff": 800, "global_batch": 4, "max_steps": 2, "lora_rank": 4,
            "gradient_checkpointing": False, "bf16": False}
    return TrainConfig(**{**base, **changes})


def _eval_cfg():
    from curate.train.eval import EvalConfig

    return EvalConfig(benchmarks=("aime24", "amc23"), limit=2, max_tokens=8)


def test_the_eval_prompt_is_the_training_prompt(variants: Path, tiny: Path, tmp_path: Path) -> None:
    """Through both code paths: the prompt tokens the trainer masks for a trace are exactly the tokens
    evaluation sends for that problem; with another system prompt or markers they are not."""
    from transformers import AutoTokenizer

    from curate.train.data import IGNORE, load_chats, tokenize_chat
    from curate.train.eval import EvalConfig, resolve_template
    from curate.train.template import Template, dataset_template

    tok = AutoTokenizer.from_pretrained(tiny)
    template = dataset_template(variants, "clean")
    chat = load_chats(variants, "clean", style=template.style, system_prompt=template.system_prompt)[0]
    assert chat["messages"][-1]["content"].startswith("<|begin_of_thought|>")  # the dataset's markers
    ex = tokenize_chat(tok, chat["messages"], 10**6)
    trained_prompt = ex.input_ids[:next(i for i, x in enumerate(ex.labels) if x != IGNORE)]
    problem = chat["messages"][-2]["content"]

    run = tmp_path / "run"  # what `curate train` records, read back by evaluation
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"template": template.to_json()}))
    asked = resolve_template(str(run), EvalConfig())
    assert tok(asked.prompt(tok, problem), add_special_tokens=False)["input_ids"] == trained_prompt
    other = resolve_template(str(run), EvalConfig(system_prompt="Think step by step."))
    assert tok(other.prompt(tok, problem), add_special_tokens=False)["input_ids"] != trained_prompt
    # With a ChatML (Qwen2.5) chat template this is, character for character, the paper's harness
    # prompt: prompt type "Sky-T1" in SkyThought@corrupt skythought/Qwen2.5-Math/evaluation/utils.py.
    import ast
    import warnings

    from curate.train.template import SKY_T1_SYSTEM

    source = (REPO / "tests" / "data" / "skythought_corrupt" / "utils.py.txt").read_text()
    with warnings.catch_warnings():  # the harness file has regexes in plain strings ("\\p")
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        tree = ast.parse(source)
    templates = next(n.value for n in tree.body
                     if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PROMPT_TEMPLATES")
    harness = ast.literal_eval(templates.values[[k.value for k in templates.keys].index("Sky-T1")])[0]
    assert SKY_T1_SYSTEM in harness
    assert asked.prompt(tok, problem) == harness.format(input=problem)
    # A model that is not a run folder gets Sky-T1's template, the paper's evaluation prompt.
    assert resolve_template(str(tiny), EvalConfig()).key() == template.key()
    assert Template("think", None).key() != template.key()


def test_train_and_eval_templates_that_differ_are_refused(variants: Path, tiny: Path, tmp_path: Path) -> None:
    from curate.train.eval import EvalConfig
    from curate.train.validate import check_templates, validate

    with pytest.raises(ValueError, match="evaluation system prompt differs from the training one"):
        validate(variants, str(tiny), tmp_path / "runs", train_cfg=_train_cfg(),
                 eval_cfg=EvalConfig(benchmarks=("amc23",), system_prompt="Be brief."), progress=False)
    with pytest.raises(ValueError, match="evaluation template .* differs"):
        validate(variants, str(tiny), tmp_path / "runs", train_cfg=_train_cfg(),
                 eval_cfg=EvalConfig(benchmarks=("amc23",), template={"style": "think", "system_prompt": None}),
                 progress=False)
    t = {"style": "sky-t1", "system_prompt": "A"}
    check_templates({"template": t}, {"template": {**t, "source": "other"}}, tmp_path)  # same key: fine
    with pytest.raises(ValueError, match="trained with template"):
        check_templates({"template": t}, {"template": {"style": "think", "system_prompt": "A"}}, tmp_path)


def test_table2_preset_is_the_papers_configuration_field_by_field() -> None:
    """The preset against the paper's own files (tests/data/skythought_corrupt, copied from
    NovaSky-AI/SkyThought@corrupt) and transformers' TrainingArguments defaults for what they leave out."""
    import dataclasses
    import re

    import yaml
    from transformers import TrainingArguments

    from curate.train.eval import EvalConfig
    from curate.train.presets import TABLE2
    from curate.train.sft import TrainConfig

    data = REPO / "tests" / "data" / "skythought_corrupt"
    paper = yaml.safe_load((data / "qwen2_full_sft_32B.yaml").read_text())
    gpus = 8  # skythought/train/README.md: "on 8 H100 GPUs"; bash_launch_*.sh: --gres gpu:8
    hf = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    train = TrainConfig(**TABLE2.train)
    expected = {
        "method": paper["finetuning_type"], "lr": paper["learning_rate"], "epochs": paper["num_train_epochs"],
        "warmup_ratio": paper["warmup_ratio"], "cutoff": paper["cutoff_len"],
        "global_batch": paper["per_device_train_batch_size"] * paper["gradient_accumulation_steps"] * gpus,
        "micro_batch": paper["per_device_train_batch_size"], "packing": bool(paper.get("packing", False)),
        "bf16": paper["bf16"], "adam_beta1": hf["adam_beta1"], "adam_beta2": hf["adam_beta2"],
        "adam_eps": hf["adam_epsilon"], "weight_decay": hf["weight_decay"], "max_grad_norm": hf["max_grad_norm"],
    }
    assert paper["lr_scheduler_type"] == "cosine"  # the only schedule the trainer has
    for name, value in expected.items():
        assert getattr(train, name) == value, name
    assert set(TABLE2.train) == set(expected)
    assert (train.global_batch, train.adam_beta2, train.packing, train.method) == (96, 0.999, False, "full")

    script = (data / "eval.sh").read_text()
    flags = dict(re.findall(r"--(\w+) (\S+)", script))
    names = re.search(r'^DATA_NAME="([^"]+)"', script, re.M).group(1).split()
    ev = EvalConfig(**TABLE2.eval)
    assert set(ev.benchmarks) == set(names) == {"math500", "aime24", "amc23", "olympiadbench"}
    assert ev.temperature == float(flags["temperature"]) and ev.top_p == float(flags["top_p"])
    assert ev.n == int(flags["n_sampling"]) and ev.seed == int(flags["seed"])
    assert ev.max_tokens == int(flags["max_tokens_per_call"]) == 32768
    assert set(TABLE2.eval) == {"benchmarks", "temperature", "top_p", "n", "seed", "max_tokens"}


def test_table2_script_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    """bench/validate_table2.py --dry-run: the family from the recipe, the preset on two configs with a
    tiny model, and the table with the sourced reference numbers beside the run's."""
    from bench.validate_table2 import main

    table = main(["--dry-run", "--configs", "clean,digits_70", "--out", str(tmp_path / "t2")])
    text = table.read_text()
    assert "| config | mean | mean (paper) | math500 | math500 (paper) |" in text
    digits = next(line for line in text.splitlines() if line.startswith("| digits_70 |"))
    assert "85.6" in digits and "77.5" in digits and "54.8" in digits  # the harness's own metrics files
    family = tmp_path / "t2" / "family"
    record = json.loads((family / "validation.json").read_text())
    assert record["preset"] == "table2" and [r["config"] for r in record["results"]] == ["clean", "digits_70"]
    assert record["benchmarks"] == ["math500", "aime24", "amc23", "olympiadbench"]
    assert record["train"]["method"] == "full" and record["train"]["lr"] == 1e-5
    assert record["train"]["packing"] is False and record["train"]["adam_beta2"] == 0.999
    assert "Sky-T1-math-corrupt-0.7-32B" in record["reference_sources"]["digits_70"]
    row = record["results"][1]
    assert row["math500_paper"] == 0.856 and row["aime24_paper"] is None
    card = (family / "README.md").read_text()
    assert "math500_paper" in card and "Sky-T1-math-corrupt-0.7-32B" in card


def test_validate_preset_on_the_command_line_lets_explicit_options_win(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import curate.train.validate as v
    from curate.cli import main

    got: dict = {}

    def capture(dataset, model, out, **kw):
        got.update(kw)
        raise ValueError("captured")

    monkeypatch.setattr(v, "validate", capture)
    res = CliRunner().invoke(main, ["validate", str(tmp_path), "--model", "m", "--preset", "table2",
                                    "--max-tokens", "8", "--cutoff", "1024"])
    assert "captured" in res.output
    t, e = got["train_cfg"], got["eval_cfg"]
    assert (t.method, t.lr, t.epochs, t.global_batch, t.packing, t.adam_beta2) == ("full", 1e-5, 3.0, 96, False, 0.999)
    assert t.cutoff == 1024 and e.max_tokens == 8  # given explicitly: they win over the preset
    assert e.benchmarks == ("math500", "aime24", "amc23", "olympiadbench") and e.temperature == 0.0
    assert got["preset"] == "table2"


def test_the_template_follows_the_dataset(tmp_path: Path) -> None:
    """Sky-T1 rows with their own system prompt keep it; R1-style <think> rows get <think> and no system
    prompt; the shipped Sky-T1 harness sample gets Sky-T1's own prompt; overrides are recorded as given."""
    from curate import Pipeline, read
    from curate.train.template import SKY_T1_SYSTEM, dataset_template

    own = "Answer inside <|begin_of_thought|> <|end_of_thought|>, then the solution."
    sky = [{"system": own, "conversations": [
        {"from": "user", "value": f"What is {i}+{i}?"},
        {"from": "assistant", "value": f"<|begin_of_thought|>\n\nadd {i} and {i}\n\n<|end_of_thought|>\n\n"
                                       f"<|begin_of_solution|>\n\n\\boxed{{{2 * i}}}\n\n<|end_of_solution|>"}]}
           for i in range(3)]
    r1 = [{"prompt": f"What is {i}?", "response": f"<think>\nhmm {i}\n</think>\n\\boxed{{{i}}}"} for i in range(3)]
    for name, rows in (("sky", sky), ("r1", r1)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        Pipeline([]).run(read(tmp_path / f"{name}.jsonl"), out=tmp_path / name)
    t = dataset_template(tmp_path / "sky")
    assert (t.style, t.system_prompt) == ("sky-t1", own)
    t = dataset_template(tmp_path / "r1")
    assert (t.style, t.system_prompt) == ("think", None)
    samples = tmp_path / "samples"
    Pipeline([]).run(read(REPO / "curate" / "data" / "samples"), out=samples)
    assert dataset_template(samples).key() == {"style": "sky-t1", "system_prompt": SKY_T1_SYSTEM}
    t = dataset_template(samples, style="think", system_prompt="")
    assert (t.style, t.system_prompt) == ("think", "") and t.source.startswith("given")
