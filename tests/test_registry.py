"""The explicit operator registry: built-ins listed in one place, user steps added with ``register``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from curate.errors import RecipeError
from curate.ops import OPERATORS, builtin_operators, register, registry, step_class
from curate.step import Step, StepResult, build_step

REPO = Path(__file__).resolve().parent.parent


@dataclass
class _Shout(Step):
    """Upper-case the problem (a user's step)."""

    name = "_test_shout"
    reads = ("problem",)

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        return StepResult(batch.with_columns(pl.col("problem").str.to_uppercase()))


def test_builtins_are_listed_once_under_their_recipe_names() -> None:
    classes = builtin_operators()
    assert [c.__name__ for c in classes] == list(OPERATORS)
    names = [c.name for c in classes]
    assert len(set(names)) == len(names) == len(OPERATORS)
    assert all(step_class(c.name) is c for c in classes)
    assert step_class("verify").__module__ == "curate.ops.verify.step"
    assert step_class("minhash_dedup").__module__ == "curate.ops.dedup.minhash"
    assert step_class("no_such_step") is None


def test_a_user_step_is_unknown_until_registered() -> None:
    @dataclass
    class Whisper(Step):
        name = "_test_whisper"

    with pytest.raises(RecipeError, match="unknown step '_test_whisper'"):
        build_step("_test_whisper", {})
    assert register(Whisper) is Whisper
    try:
        assert isinstance(build_step("_test_whisper", {}), Whisper)
        assert "_test_whisper" in registry()

        @dataclass
        class Whisper2(Step):
            name = "_test_whisper"

        with pytest.raises(RuntimeError, match="two steps are named '_test_whisper'"):
            register(Whisper2)
    finally:
        registry().pop("_test_whisper")


def test_a_registered_step_runs_in_a_recipe(math500_sample: Path, tmp_path: Path) -> None:
    from curate.recipe import run_recipe

    recipe = tmp_path / "shout.yaml"
    recipe.write_text(f"input: {{path: {math500_sample}}}\nsteps:\n  - _test_shout: {{}}\n")
    with pytest.raises(RecipeError, match="unknown step '_test_shout'"):
        run_recipe(recipe, tmp_path / "before", progress=False, card=False)
    register(_Shout)
    try:
        result = run_recipe(recipe, tmp_path / "out", progress=False, card=False)
    finally:
        registry().pop("_test_shout")
    problems = pl.read_parquet(tmp_path / "out" / "data")["problem"].to_list()
    assert result.rows == len(problems) > 0 and all(p == p.upper() for p in problems)
    assert step_class("_test_shout") is None


def test_a_familys_helpers_load_no_operator() -> None:
    """The verifier pool's workers import curate.ops.verify.pool: that loads no operator module."""
    code = ("import json, sys; import curate.ops.verify.pool, curate.ops.decontam.benchmarks; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('curate.ops'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = set(json.loads(out.stdout))
    assert {"curate.ops.verify.pool", "curate.ops.decontam.benchmarks"} <= loaded
    assert not loaded & set(OPERATORS.values()), loaded
