"""pipelines/structure_vs_content.yaml: Table 2's 18 training sets from one verified base, on real traces."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
import yaml

from curate import run_recipe
from curate.ops.corrupt import MIN_CHANGED_SHARE

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "pipelines" / "structure_vs_content.yaml"
PERTURBED = [f"digits_{r}" for r in (20, 50, 70, 100)] + [f"keywords_{r}" for r in (20, 50, 100)] + [
    f"{k}_{r}" for k in ("shuffle", "delete", "insert") for r in (33, 67, 100)]
TABLE2 = ["clean", "wrong_answer", *PERTURBED]


def recipe_on(tmp: Path, input_path: Path, **top: object) -> Path:
    """The shipped recipe with another input (and extra top-level keys, e.g. a model block)."""
    doc = yaml.safe_load(RECIPE.read_text())
    doc["input"] = {"path": str(input_path), "format": "auto"}
    doc.update(top)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """The recipe as shipped, on the shipped sample (180 real traces, 55 + 25 of them markerless)."""
    pytest.importorskip("math_verify")
    with pytest.warns(UserWarning, match="low corruption coverage: config digits_20"):
        return run_recipe(RECIPE, out=tmp_path_factory.mktemp("svc") / "ds", progress=False)


def corruption(result, config: str) -> dict:
    return next(f["stats"]["corruption"] for f in result.manifest["configs"][config]["funnel"]
                if "corruption" in f.get("stats", {}))


# --- (3) levels ----------------------------------------------------------------------------------


def test_family_is_table_2_with_the_papers_levels(family):
    assert list(family.configs) == TABLE2
    variants = family.manifest["recipe"]["variants"]
    ratios = {name: next(iter(steps[-1].values()))["ratio"] for name, steps in variants.items() if name in PERTURBED}
    assert ratios == {name: int(name.rsplit("_", 1)[1]) / 100 if not name.endswith("_33") and not name.endswith("_67")
                      else float(f"0.{name.rsplit('_', 1)[1]}") for name in PERTURBED}
    assert family.manifest["configs"]["shuffle_67"]["files"] == ["data/shuffle_67/train-00000-of-00001.parquet"]


# --- (1) verified clean base ---------------------------------------------------------------------


def test_clean_is_verified_correct_and_wrong_answer_is_the_teachers_incorrect(family):
    clean, wrong = family.to_polars("clean"), family.to_polars("wrong_answer")
    assert clean.height > 0 and (clean["verify_correct"] == True).all()  # noqa: E712
    assert wrong.height > 0 and (wrong["verify_correct"] == False).all()  # noqa: E712
    by_source = family.stats("verify")["by_source"]
    assert sum(c["correct"] for c in by_source.values()) == clean.height
    assert sum(c["incorrect"] for c in by_source.values()) == wrong.height
    assert not set(clean["id"]) & set(wrong["id"])
    # every perturbation starts from exactly the clean rows
    for config in PERTURBED:
        df = family.to_polars(config)
        assert set(df["original_id"]) == set(clean["id"]), config
        problems = dict(zip(clean["id"], clean["problem"], strict=True))
        assert all(problems[o] == p for o, p in zip(df["original_id"], df["problem"], strict=True)), config
        assert df["id"].n_unique() == df.height


# --- (2) markerless rows are reasoning, and every corruption reaches every row -------------------


def test_markerless_rows_are_in_the_family_and_corrupted(family):
    clean = family.to_polars("clean")
    markerless = set(clean.filter(pl.col("thinking_closed").is_null())["id"])
    assert len(markerless) >= 20  # QwQ-style responses read as reasoning + answer paragraph
    for config in PERTURBED:
        df = family.to_polars(config).filter(pl.col("original_id").is_in(list(markerless)))
        assert df.height == len(markerless)
        c = corruption(family, config)
        if config.startswith("keywords") and not config.endswith("100"):
            drawn = df.filter(pl.col("corrupt_units") > 0)
            assert (drawn["corrupt_touched"] > 0).all(), config
        elif config == "digits_20":
            # the paper's rule: each number with p=0.2, and randint(0, 10) may give it back, so a short
            # row can come out unchanged ((0.8 + 0.2/11)^8 = 20% for 8 numbers): one does here
            unchanged = df.filter(pl.col("corrupt_touched") == 0)
            assert unchanged.height == 1 and unchanged["corrupt_units"].to_list() == [8]
            continue
        else:
            assert (df["corrupt_touched"] > 0).all(), config
        assert c["changed"] >= MIN_CHANGED_SHARE * c["target"], (config, c)


def test_low_coverage_is_said_loudly_in_the_manifest_and_the_card(family):
    """digits_20 changed 88 of 89 rows on the sample: the run says so, and so does the card."""
    c = corruption(family, "digits_20")
    assert (c["rows"], c["target"], c["changed"]) == (89, 89, 88)
    assert family.manifest["coverage_warnings"] == [
        "config digits_20: step 9 'corrupt_digits' changed 88 of 89 rows (98.9% < 99%): the other rows are "
        "unchanged copies of the base rows (on_untouched: reject drops them, with the reason)"]
    pytest.importorskip("huggingface_hub")
    card = (family.out / "README.md").read_text()
    assert "**Warning: low corruption coverage.** config digits_20" in card.split("## Variants", 1)[1]


def test_structural_variants_touch_only_the_thinking(family):
    clean = family.to_polars("clean")
    solution = dict(zip(clean["id"], clean["solution"], strict=True))
    thinking = dict(zip(clean["id"], clean["thinking"], strict=True))
    for config in ("shuffle_100", "delete_67", "insert_33"):
        df = family.to_polars(config)
        assert all(solution[o] == s for o, s in zip(df["original_id"], df["solution"], strict=True)), config
        assert all(thinking[o] != t for o, t in zip(df["original_id"], df["thinking"], strict=True)), config
    assert (family.to_polars("delete_100")["thinking"] == "").all()


# --- (4) digits: the paper's rule ----------------------------------------------------------------


def test_digit_configs_follow_corrupt_data_py(family):
    clean = family.to_polars("clean")
    df = family.to_polars("digits_100")
    assert set(df["corrupt_kind"]) == {"corrupt_digits:number:paper"}
    number = re.compile(r"\b\d+(?:\.\d+)?\b", re.ASCII)
    before = dict(zip(clean["id"], zip(clean["thinking"], clean["solution"], strict=True), strict=True))
    kept_value = 0
    for row in df.iter_rows(named=True):
        old = before[row["original_id"]]
        assert row["corrupt_units"] == sum(len(number.findall(t)) for t in old)  # every number of the response
        kept_value += row["corrupt_units"] - row["corrupt_touched"]  # randint(0, 10) gave the number back
        for span in row["corrupt_spans"]:
            assert span["part"] in ("thinking", "solution")
        new_numbers = [int(n) for t in (row["thinking"], row["solution"]) for n in number.findall(t)]
        assert all(0 <= n <= 10 for n in new_numbers)
    assert kept_value > 0  # the paper's draw may equal the original, and then nothing changes


# --- (6) steps: the row's own segmentation -------------------------------------------------------


def test_structural_configs_use_the_base_segmentation(family):
    clean = family.to_polars("clean")
    steps = dict(zip(clean["id"], clean["steps_count"], strict=True))
    methods = dict(zip(clean["id"], clean["steps_method"], strict=True))
    assert (clean["steps_count"] >= 2).all()  # min_steps: 2 (paragraphs where no transition opens one)
    for config in ("shuffle_67", "delete_33", "insert_67"):
        df = family.to_polars(config)
        assert all(steps[o] == u for o, u in zip(df["original_id"], df["corrupt_units"], strict=True)), config
        assert all(methods[o] == m for o, m in zip(df["original_id"], df["steps_method"], strict=True)), config


# --- (7) insert ----------------------------------------------------------------------------------


def test_insert_configs_insert_and_keep_every_step(family):
    clean = family.to_polars("clean")
    by_id = {r["id"]: r for r in clean.iter_rows(named=True)}
    df = family.to_polars("insert_100")
    assert set(df["corrupt_kind"]) == {"insert_steps:insert"}
    for row in df.iter_rows(named=True):
        old = by_id[row["original_id"]]
        bodies = [old["thinking"][a:b].rstrip() for a, b in zip(old["steps_start"], old["steps_end"], strict=True)]
        kept = [o for o in row["corrupt_order"] if o >= 0]
        assert kept == list(range(len(bodies)))  # all original steps, in order
        assert row["corrupt_order"].count(-1) == len(bodies) == row["steps_count"] - len(bodies)


# --- card -----------------------------------------------------------------------------------------


def test_card_shows_what_each_config_did(family):
    pytest.importorskip("huggingface_hub")
    card = (family.out / "README.md").read_text()
    section = card.split("## Variants", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(" `"): [c.strip() for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| `")}
    assert list(rows) == TABLE2
    header = [h.strip() for h in next(ln for ln in section.splitlines() if ln.startswith("| config")).split("|")[1:-1]]
    assert header == ["config", "rows", "changed", "mean steps", "thinking median", "thinking p90", "accuracy",
                      "what it changes", "method"]
    col = {h: i - 1 for i, h in enumerate(header)}
    assert rows["clean"][col["accuracy"]] == "100.0%" and rows["wrong_answer"][col["accuracy"]] == "0.0%"
    assert rows["delete_100"][col["thinking median"]] == "0" and rows["delete_100"][col["mean steps"]] == "0.0"
    assert rows["shuffle_33"][col["changed"]] == "100.0%"
    assert "ratio=0.5" in rows["digits_50"][col["what it changes"]]
    assert "corrupt_data.py" in rows["digits_50"][col["method"]]
    assert "different method" in rows["keywords_50"][col["method"]]  # offline: the rule-based fallback
    assert "drawn" in rows["keywords_50"][col["changed"]]


# --- the done criterion: all six trace files ------------------------------------------------------


def test_recipe_on_all_six_trace_files(shared_data, tmp_path):
    pytest.importorskip("math_verify")
    result = run_recipe(recipe_on(tmp_path, shared_data / "traces"), out=tmp_path / "ds", progress=False,
                        card=False)
    assert list(result.configs) == TABLE2
    assert {r["source"] for r in result.to_polars("clean").select("source").unique().to_dicts()} >= {
        "skythought_correct5k27b_math500", "skythought_correct5k27b_minerva"}
    for config in PERTURBED:
        c = corruption(result, config)
        assert c["rows"] == result.to_polars("clean").height
        assert c["changed"] >= MIN_CHANGED_SHARE * c["target"], (config, c)
        if not config.startswith("keywords") or config.endswith("100"):
            assert c["target"] == c["rows"]
    assert "coverage_warnings" not in result.manifest
