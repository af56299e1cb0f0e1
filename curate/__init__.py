"""curate: turn raw long chain-of-thought teacher traces into clean, verified training sets."""

from curate.errors import CurateError, InputError, PipelineError, RecipeError
from curate.io import export, read
from curate.pipeline import Pipeline, RunResult
from curate.recipe import load_recipe, run_recipe
from curate.schema import SCHEMA_VERSION, TRACE_SCHEMA
from curate.step import Step, StepResult

__version__ = "0.1.0"
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
