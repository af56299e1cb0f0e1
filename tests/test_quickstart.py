"""The first runs a user makes (README's Python tour, quickstart and dedup_decontam recipes) show the
core job on the real data shipped in the repository and end with rows."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from curate import run_recipe

REPO = Path(__file__).resolve().parent.parent


def _funnel(result) -> dict[str, dict]:
    return {r["name"]: r for r in result.funnel.iter_rows(named=True)}


def test_quickstart_dedups_decontaminates_verifies_filters_and_writes_a_card(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    result = run_recipe(REPO / "pipelines" / "quickstart.yaml", out=out, progress=False)
    f = _funnel(result)
    assert result.rows == 50
    for step in ("exact_dedup", "decontaminate", "filter", "verify"):  # every step does something
        assert f[step]["rejected"] > 0 and f[step]["kept"] > 0, (step, f[step])
    flagged = result.rejects("decontaminate")
    assert set(flagged["source"]) == {"skythought_correct5k27b_math500", "skythought_correct5k27b_minerva",
                                      "simplerl_math_cot_100"}  # benchmark traces, and MATH-500 items among the rest
    assert flagged["decontam_item"].is_not_null().all()
    kept = pl.read_parquet(out / "data" / "*.parquet")
    assert kept["verify_correct"].all() and set(kept["source"]) == {"simplerl_math_cot_100"}
    card = (out / "README.md").read_text()
    assert "## Decontamination" in card and "accuracy" in card.lower()


def test_dedup_decontam_recipe_keeps_the_clean_problems(tmp_path: Path) -> None:
    result = run_recipe(REPO / "pipelines" / "dedup_decontam.yaml", out=tmp_path / "dd", progress=False)
    f = _funnel(result)
    assert f["minhash_dedup"]["rejected"] > 500  # 8 responses per simpleRL problem -> one
    assert 0 < result.rows < f["decontaminate"]["rows_in"]
    kept = result.to_polars()
    assert kept["problem"].n_unique() == kept.height and set(kept["source"]) == {"simplerl_math_cot_100"}


def test_readme_python_tour_runs_and_ends_non_empty(tmp_path: Path, monkeypatch) -> None:
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert '"curate/data/samples"' in code and 'out="out/my-dataset"' in code
    monkeypatch.chdir(tmp_path)
    (tmp_path / "curate").symlink_to(REPO / "curate")  # the example's paths are relative to the repo root
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    result = scope["result"]
    assert scope["df"].height == result.to_polars("clean").height == 50  # one config per variant
    assert result.rejects("decontaminate").height > 0 and result.stats("verify")


def test_every_shipped_recipe_reads_data_inside_the_repository() -> None:
    from curate import load_recipe

    recipes = sorted((REPO / "pipelines").glob("*.yaml"))
    assert len(recipes) >= 7
    for path in recipes:
        source = load_recipe(path).source()
        files = [Path(p).resolve() for p in source.describe()["paths"]]
        assert files and all(f.is_relative_to(REPO) and f.is_file() for f in files), (path.name, files)
        first = next(source.batches(8))
        assert first.traces.num_rows > 0, path.name
