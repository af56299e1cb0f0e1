"""Recipes mirror the Python API; the CLI runs them and reports user mistakes in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from curate import Pipeline, RecipeError, load_recipe, read, run_recipe
from curate.catalog import render_catalog
from curate.cli import main
from curate.extras import distribution, missing_extras
from curate.ops import (
    ClassifyDomain,
    Decontaminate,
    ExactDedup,
    ExtractAnswer,
    Filter,
    GradeDifficulty,
    MinHashDedup,
    Sample,
    ScoreReasoning,
    SemanticDedup,
    Verify,
)
from curate.schema import json_schema_text

REPO = Path(__file__).resolve().parent.parent


def write_recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(body)
    return path


def test_quickstart_recipe_equals_the_python_pipeline(tmp_path):
    recipe = load_recipe(REPO / "pipelines" / "quickstart.yaml")
    assert [type(s) for s in recipe.pipeline.steps] == [ExactDedup, Decontaminate, ExtractAnswer, Filter, Verify, Sample]
    from_yaml = run_recipe(REPO / "pipelines" / "quickstart.yaml", out=tmp_path / "yaml")
    python = Pipeline([
        ExactDedup(mode="problem_response"),
        Decontaminate(benchmarks="all", action="drop"),
        ExtractAnswer(),
        Filter(max_thinking_chars=4000, require_answer=True),
        Verify(domain="math", keep="correct"),
        Sample(n=50, seed=0, stratify_by="source"),
    ]).run(read([REPO / "curate" / "data" / "samples",
                 REPO / "curate" / "data" / "real" / "responses" / "simplerl_math_cot_100.jsonl.gz"]),
           out=tmp_path / "py")
    assert from_yaml.to_polars().equals(python.to_polars())
    assert from_yaml.manifest["recipe"] == python.manifest["recipe"]
    assert from_yaml.rows == 50


def test_empty_steps_is_valid(tmp_path, math500_sample):
    path = write_recipe(tmp_path, f"input: {{path: {math500_sample}}}\nsteps: []\noutput: {{path: {tmp_path / 'o'}}}\n")
    assert run_recipe(path).rows == 120


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("steps: []\n", "missing key 'input'"),
        ("input: {path: x.jsonl}\n", "missing key 'steps'"),
        ("input: {path: x.jsonl}\nsteps: []\nouptut: {path: o}\n", "unknown top-level key(s) ouptut"),
        ("input: {path: x.jsonl, fromat: auto}\nsteps: []\n", "input: unknown key(s) fromat"),
        ("input: {path: x.jsonl}\nsteps:\n  - exact_dedupe: {}\n", "steps[0]: unknown step 'exact_dedupe'"),
        ("input: {path: x.jsonl}\nsteps:\n  - filter: {min_thinking_chars: many}\n",
         "steps[0]: filter.min_thinking_chars: expected int | None, got 'many'"),
        ("input: {path: x.jsonl}\nsteps:\n  - filter: {min_think: 3}\n", "filter: unknown parameter 'min_think'"),
        ("input: {path: x.jsonl}\nsteps:\n  - sample: {seed: 1}\n", "sample: give exactly one of n or fraction"),
        ("input: {path: x.jsonl}\nsteps:\n  - filter: {}\n    extract_answer: {}\n", "one key, the step name"),
        ("input: {path: x.jsonl}\nsteps:\n  - filter: [1]\n", "expected a mapping"),
        ("input: [unclosed\n", "not valid YAML"),
    ],
)
def test_recipe_errors_name_the_key(tmp_path, body, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, body))
    assert message in str(err.value)
    assert "recipe.yaml" in str(err.value)


@pytest.mark.parametrize(
    ("make", "entry", "message"),
    [
        (lambda: ExactDedup(mode="x"), "exact_dedup: {mode: x}",
         "exact_dedup: mode must be one of problem_response, problem, got 'x'"),
        (lambda: Verify(keep="some"), "verify: {keep: some}", "verify: keep must be one of correct, all, incorrect, got 'some'"),
        (lambda: Filter(min_thinking_chars="many"), "filter: {min_thinking_chars: many}",
         "filter.min_thinking_chars: expected int | None, got 'many'"),
        (lambda: MinHashDedup(bands="4"), "minhash_dedup: {bands: '4'}", "minhash_dedup.bands: expected int, got '4'"),
        (lambda: GradeDifficulty(level_edges=[1, "2"]), "grade_difficulty: {level_edges: [1, '2']}",
         "grade_difficulty.level_edges: expected list[float] | None, got [1, '2']"),
    ],
)
def test_python_and_recipes_check_parameter_types_alike(tmp_path, make, entry, message):
    """One check from the dataclass types: the same error, naming step and field, before the step's own rules."""
    with pytest.raises(ValueError) as built:
        make()
    assert str(built.value) == message
    with pytest.raises(RecipeError) as loaded:
        load_recipe(write_recipe(tmp_path, f"input: {{path: x.jsonl}}\nsteps:\n  - {entry}\n"))
    assert str(loaded.value) == f"{tmp_path / 'recipe.yaml'}: steps[0]: {message}"


def test_input_paths_are_relative_to_the_recipe(tmp_path, math500_sample):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.jsonl").write_bytes(math500_sample.read_bytes())
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("input: {path: t.jsonl}\nsteps: []\n")
    assert run_recipe(path, out=tmp_path / "o").rows == 120


def test_cli_run_keeps_the_collector_off_what_was_loaded_before(tmp_path, monkeypatch, math500_sample):
    """``curate run`` freezes the objects alive when the run starts (the imported libraries: the
    cyclic collector skips them) and collects less often; when it ends both are undone, so a
    process that goes on (a test runner, a notebook) collects as before; at exit it freezes."""
    import atexit
    import gc

    import curate.recipe

    seen, exits = [], []
    real, threshold = curate.recipe.run_recipe, gc.get_threshold()
    monkeypatch.setattr(curate.recipe, "run_recipe",
                        lambda *a, **k: seen.append((gc.get_freeze_count(), gc.get_threshold())) or real(*a, **k))
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: exits.append(fn))
    (tmp_path / "r.yaml").write_text(f"input: {{path: {math500_sample}}}\nsteps: []\n")
    res = CliRunner().invoke(main, ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert seen and seen[0][0] > 10_000  # frozen during the run: polars, pyarrow, numpy and the rest
    assert seen[0][1] == (10_000, 20, 20)  # and collected less often
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == threshold and gc.freeze in exits


def test_cli_run_inspect_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(REPO / "pipelines" / "long_cot_sample.yaml"), "--out", "qs"])
    assert res.exit_code == 0, res.output
    assert "wrote 50 rows to qs" in res.output
    manifest = json.loads((tmp_path / "qs" / "manifest.json").read_text())
    assert manifest["command"] == f"curate run {REPO / 'pipelines' / 'long_cot_sample.yaml'} --out qs"
    res = runner.invoke(main, ["inspect", "qs", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["rows"] == 50 and summary["funnel"][0]["rows_in"] == 180
    assert summary["lengths"][1]["min"] >= 200  # the filter's min_thinking_chars held
    res = runner.invoke(main, ["inspect", "qs"])
    assert "Funnel" in res.output and "exact_dedup" in res.output
    res = runner.invoke(main, ["export", "qs", "sft.jsonl"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 50
    assert rows[0]["messages"][1]["content"].startswith("<think>\n")


def test_cli_user_errors_are_one_line(tmp_path):
    runner = CliRunner()
    bad = write_recipe(tmp_path, "input: {path: x.jsonl}\nsteps:\n  - filter: {min_think: 3}\n")
    res = runner.invoke(main, ["run", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and "Traceback" not in res.output
    missing = write_recipe(tmp_path, "input: {path: nowhere.jsonl}\nsteps: []\n")
    res = runner.invoke(main, ["run", str(missing), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "nowhere.jsonl: no such file" in res.output


def test_cli_ops_lists_every_operator_with_parameters():
    res = CliRunner().invoke(main, ["ops"])
    assert res.exit_code == 0
    for name in ("exact_dedup", "filter", "sample", "extract_answer"):
        assert name in res.output
    assert "min_thinking_chars" in res.output
    res = CliRunner().invoke(main, ["ops", "sample"])
    assert "stratify_by" in res.output and "global" in res.output


def test_catalog_matches_the_code():
    current = (REPO / "CATALOG.md").read_text()
    assert current == render_catalog(REPO / "pipelines"), "CATALOG.md drifted: run `curate catalog`"


def test_catalog_names_every_column_a_parameter_adds():
    """Where `writes` follows the parameters, CATALOG.md shows the defaults' columns and names the rest."""
    model = {"backend": "openai", "name_or_path": "judge"}
    steps = [ScoreReasoning(method="model", model=model), ClassifyDomain(method="model", model=model),
             Decontaminate(action="flag"), GradeDifficulty(method="pass_rate", model=model),
             GradeDifficulty(method="judge", rubric="omnithought", model=model)]
    catalog = (REPO / "CATALOG.md").read_text()
    for step in steps:
        section = catalog.split(f"### `{step.name}`")[1].split("\n### ")[0]
        assert "- writes (with the default parameters): " in section
        assert [c for c in step.writes if f"`{c}`" not in section] == [], step.name


def test_schema_file_matches_the_code():
    current = (REPO / "schemas" / "trace-v1.json").read_text()
    assert current == json_schema_text(), "schemas/trace-v1.json drifted: run `curate schema`"


def test_recipe_variants(tmp_path, math500_sample):
    path = write_recipe(tmp_path, f"""
input: {{path: {math500_sample}}}
steps:
  - exact_dedup: {{}}
variants:
  clean: []
  answered:
    - extract_answer: {{}}
    - filter: {{require_answer: true}}
""")
    recipe = load_recipe(path)
    assert list(recipe.pipeline.variants) == ["clean", "answered"]
    result = run_recipe(path, out=tmp_path / "o")
    assert result.configs == ["clean", "answered"]
    assert result.manifest["recipe"]["variants"]["answered"][1] == {"filter": {
        "min_problem_chars": None, "max_problem_chars": None, "min_thinking_chars": None, "max_thinking_chars": None,
        "min_solution_chars": None, "max_solution_chars": None, "domains": None, "require_closed_thinking": False,
        "require_answer": True, "min_tokens": None, "max_tokens": None, "tokenizer": None, "where": None}}
    bad = write_recipe(tmp_path, f"input: {{path: {math500_sample}}}\nsteps: []\nvariants:\n  v: [{{shufle: {{}}}}]\n")
    with pytest.raises(RecipeError, match=r"variants.v\[0\]: unknown step 'shufle'"):
        load_recipe(bad)


def test_recipe_model_block_fills_model_backed_steps(tmp_path, math500_sample):
    path = write_recipe(tmp_path, f"""
input: {{path: {math500_sample}}}
model: {{backend: openai, name_or_path: grader, base_url: "http://127.0.0.1:9/v1"}}
steps:
  - grade_difficulty: {{method: proxy}}
  - shorten: {{method: truncate_after_first_answer}}
  - filter: {{}}
  - semantic_dedup: {{}}
""")
    steps = load_recipe(path).pipeline.steps
    assert steps[0].model == steps[1].model == {"backend": "openai", "name_or_path": "grader",
                                                 "base_url": "http://127.0.0.1:9/v1"}
    assert not hasattr(steps[2], "model")
    assert steps[3].model == SemanticDedup().model  # an embedding model's name: the block is not for it
    own = write_recipe(tmp_path, f"""
input: {{path: {math500_sample}}}
model: {{backend: openai, name_or_path: grader}}
steps:
  - grade_difficulty: {{method: proxy, model: {{backend: transformers, name_or_path: other}}}}
""")
    assert load_recipe(own).pipeline.steps[0].model["name_or_path"] == "other"


def _recipe(tmp_path: Path, source: Path, steps: str, extra: str = "") -> Path:
    return write_recipe(tmp_path, f"input: {{path: {source}}}\n{extra}steps:\n{steps}")


def test_cli_says_an_empty_result_loudly_and_strict_exits_non_zero(tmp_path, math500_sample):
    path = _recipe(tmp_path, math500_sample, "  - extract_answer: {}\n  - filter: {require_answer: true, "
                                             "min_thinking_chars: 1000000000}\n")
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "warning: step 2 'filter' dropped all 120 rows it saw (top reject reason: 'thinking has # chars" in res.output
    assert "warning: the run wrote 0 rows" in res.output
    assert "EmptyResultWarning" not in res.output  # said once, by the CLI, after the table
    res = runner.invoke(main, ["run", str(path), "--out", str(tmp_path / "o"), "--strict"])
    assert res.exit_code == 1 and "warning: step 2 'filter' dropped all 120 rows" in res.output
    ok = _recipe(tmp_path, math500_sample, "  - filter: {min_thinking_chars: 200}\n")
    res = runner.invoke(main, ["run", str(ok), "--out", str(tmp_path / "ok"), "--strict"])
    assert res.exit_code == 0 and "warning" not in res.output, res.output


def test_missing_extras_are_named_before_the_run_in_one_line_each(tmp_path, math500_sample, monkeypatch):
    """math_verify and datasketch made unimportable (sys.modules[name] = None is how Python marks a
    module that cannot be imported): each step that needs one is named, with the pip command."""
    monkeypatch.setitem(sys.modules, "math_verify", None)
    monkeypatch.setitem(sys.modules, "datasketch", None)
    path = _recipe(tmp_path, math500_sample, "  - extract_answer: {}\n  - minhash_dedup: {}\n  - verify: {}\n"
                                             "  - decontaminate: {method: [ngram]}\n")
    res = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    dist = distribution()  # the name pip knows this package by
    assert lines == [
        f"error: step 2 'minhash_dedup' needs the 'dedup' extra (datasketch is not installed): "
        f"pip install '{dist}[dedup]'",
        f"error: step 3 'verify' needs the 'verify' extra (math_verify is not installed): pip install '{dist}[verify]'",
    ]
    assert not (tmp_path / "o").exists(), "nothing ran"
    # a model step asks for its backend's packages only when it uses the model
    monkeypatch.setitem(sys.modules, "transformers", None)
    model = _recipe(tmp_path, math500_sample, "  - grade_difficulty: {method: proxy}\n"
                                              "  - segment_steps: {mode: model}\n",
                    extra="model: {backend: transformers, name_or_path: some/model}\n")
    res = CliRunner().invoke(main, ["run", str(model), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "error: step 2 'segment_steps' needs the 'train' extra (transformers is not installed): "
        f"pip install '{dist}[train]'"], res.output
    # a vllm model: here on the local engine; on the ray engine the cluster's GPU nodes run it
    monkeypatch.setitem(sys.modules, "vllm", None)
    grader = [("step 1", GradeDifficulty(method="pass_rate", model={"backend": "vllm", "name_or_path": "m"}))]
    assert [(m.module, m.extra) for m in missing_extras(grader)] == [("math_verify", "verify"), ("vllm", "vllm")]
    assert [(m.module, m.extra) for m in missing_extras(grader, "ray")] == [("math_verify", "verify")]


def test_cli_run_ends_with_a_table_where_things_are_and_a_log(tmp_path, math500_sample):
    path = _recipe(tmp_path, math500_sample, "  - extract_answer: {}\n  - filter: {min_thinking_chars: 3000}\n")
    out = tmp_path / "o"
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "shape: (" not in res.output and "Funnel" in res.output and "│ filter " in res.output
    assert "[2/2] filter: 120 rows in, 77 kept, 43 rejected;" in res.output  # a line per stage, as it ends
    assert "  2 filter: thinking has # chars < min_thinking_chars=# (43 of 43)" in res.output
    assert f"wrote 77 rows to {out} in " in res.output
    for what, where in (("card:", out / "README.md"), ("log:", out / "run.log"), ("rejects:", out / "rejects")):
        assert any(line.split() [:2] == [what, str(where)] for line in res.output.splitlines()), what
    log = (out / "run.log").read_text()
    assert "INFO [1/2] extract_answer: 120 rows in, 120 kept, 0 rejected" in log and "DEBUG wrote 77 rows" in log
    # the same command again: a clear note that nothing ran
    res = runner.invoke(main, ["run", str(path), "--out", str(out)])
    assert "already holds this run" in res.output and "nothing was run" in res.output
    assert "nothing was run" in (out / "run.log").read_text()
    # an edited step: the CLI says which stages it computed; --verbose says which it reused
    edited = _recipe(tmp_path, math500_sample, "  - extract_answer: {}\n  - filter: {min_thinking_chars: 4000}\n")
    res = runner.invoke(main, ["run", str(edited), "--out", str(out), "--verbose"])
    assert res.exit_code == 0, res.output
    assert "starting from the finished stages in .curate-cache" in res.output
    assert "[1/2] extract_answer: 120 rows in, 120 kept, 0 rejected; reused (finished before)" in res.output
    assert "computed 1 of 3 stages (02-filter); the others came from the finished run" in res.output
    # --quiet: the last line only
    res = runner.invoke(main, ["run", str(path), "--out", str(tmp_path / "q"), "--quiet"])
    rows = json.loads((tmp_path / "q" / "manifest.json").read_text())["output"]["rows"]
    assert res.exit_code == 0 and res.output.strip().splitlines() == [f"wrote {rows} rows to {tmp_path / 'q'}"]


def test_threads_option_gives_the_same_dataset_and_is_local_only(tmp_path):
    """`--threads` sizes the local engine's threads; the dataset does not depend on it."""
    runner = CliRunner()
    recipe = str(REPO / "pipelines" / "dedup_decontam.yaml")
    outs = {}
    for n in ("1", "3"):
        res = runner.invoke(main, ["run", recipe, "--out", str(tmp_path / n), "--threads", n, "--no-card", "-q"])
        assert res.exit_code == 0, res.output
        outs[n] = json.loads((tmp_path / n / "manifest.json").read_text())
    assert [(f["name"], f["kept"], f["rejected"]) for f in outs["1"]["funnel"]] == \
        [(f["name"], f["kept"], f["rejected"]) for f in outs["3"]["funnel"]]
    one, three = (pl.read_parquet(sorted((tmp_path / n / "data").glob("*.parquet"))) for n in ("1", "3"))
    assert one.height > 0 and one.equals(three)
    for name in ("03-decontaminate", "02-minhash_dedup"):
        rejects = [pl.read_parquet(tmp_path / n / "rejects" / f"{name}.parquet") for n in ("1", "3")]
        assert rejects[0].height > 0 and rejects[0].equals(rejects[1])
    res = runner.invoke(main, ["run", recipe, "--out", str(tmp_path / "r"), "--threads", "2", "--engine", "ray"])
    assert res.exit_code == 2 and "--threads is for --engine local" in res.output
