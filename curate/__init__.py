"""curate: turn raw long chain-of-thought teacher traces into clean, verified training sets.

The public names are imported on first use (PEP 562), so ``import curate`` and ``curate --help``
do not pay for pyarrow, polars and the pipeline until something needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError, InputError, PipelineError, RecipeError

if TYPE_CHECKING:  # pragma: no cover
    from curate.io import export, read
    from curate.pipeline import Pipeline, RunResult
    from curate.recipe import load_recipe, run_recipe
    from curate.schema import SCHEMA_VERSION, TRACE_SCHEMA
    from curate.step import Step, StepResult

__version__ = "0.1.0"
_LAZY = {
    "export": "curate.io", "read": "curate.io",
    "Pipeline": "curate.pipeline", "RunResult": "curate.pipeline",
    "load_recipe": "curate.recipe", "run_recipe": "curate.recipe",
    "SCHEMA_VERSION": "curate.schema", "TRACE_SCHEMA": "curate.schema",
    "Step": "curate.step", "StepResult": "curate.step",
}
__all__ = [
    "SCHEMA_VERSION",
    "TRACE_SCHEMA",
    "CurateError",
    "InputError",
    "Pipeline",
    "PipelineError",
    "RecipeError",
    "RunResult",
    "Step",
    "StepResult",
    "export",
    "load_recipe",
    "read",
    "run_recipe",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'curate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
