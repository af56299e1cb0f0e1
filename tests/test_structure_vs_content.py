"""pipelines/structure_vs_content.yaml: the paper's variant family from one shared base."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate import run_recipe

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    pytest.importorskip("math_verify")
    return run_recipe(REPO / "pipelines" / "structure_vs_content.yaml", out=tmp_path_factory.mktemp("svc") / "ds")


def test_family_has_the_papers_variants_as_configs(family):
    assert len(family.configs) == 18
    files = family.manifest["configs"]["shuffle_67"]["files"]
    assert files == ["data/shuffle_67/train-00000-of-00001.parquet"]


def test_perturbations_keep_the_base_rows_and_problems(family):
    clean = family.to_polars("clean").sort("id")
    base_ids = set(clean["id"])
    problems = dict(zip(clean["id"], clean["problem"]))
    for config in family.configs:
        if config in ("clean", "wrong_answer_teacher"):
            continue
        df = family.to_polars(config)
        assert set(df["original_id"]) == base_ids, config
        assert all(problems[o] == p for o, p in zip(df["original_id"], df["problem"])), config
        assert df["id"].n_unique() == df.height


def test_structural_variants_touch_only_the_thinking(family):
    clean = family.to_polars("clean")
    solution = dict(zip(clean["id"], clean["solution"]))
    thinking = dict(zip(clean["id"], clean["thinking"]))
    for config in ("shuffle_100", "delete_67", "insert_67"):
        df = family.to_polars(config)
        assert all(solution[o] == s for o, s in zip(df["original_id"], df["solution"])), config
        changed = sum(thinking[o] != t for o, t in zip(df["original_id"], df["thinking"]))
        assert changed >= 0.9 * df.height, (config, changed)


def test_teacher_wrong_answers_are_verified_incorrect(family):
    df = family.to_polars("wrong_answer_teacher")
    assert df.height > 0 and (df["verify_correct"] == False).all()  # noqa: E712


def test_verify_reports_verdicts_per_source_in_the_funnel(family):
    by_source = family.stats("verify")["by_source"]
    assert set(by_source) <= {"skythought_correct5k27b_math500", "skythought_correct5k27b_minerva"}
    total = sum(sum(c.values()) for c in by_source.values())
    assert total == family.to_polars("clean").height
    incorrect = sum(c["incorrect"] for c in by_source.values())
    assert incorrect == family.to_polars("wrong_answer_teacher").height
