"""A recipe document's shape, read without building anything (no polars, no steps): the CLI
reads a recipe's step names with it before its heavy imports, and ``curate.recipe`` builds the
pipeline from the same entries."""

from __future__ import annotations

from typing import Any

from curate.errors import RecipeError


def mapping(value: Any, where: str) -> dict[str, Any]:
    """A mapping value of the recipe (absent: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def step_lists(doc: dict[str, Any], where: str) -> dict[str | None, Any]:
    """The recipe's ``steps`` (key None) and each variant's steps (key: its name), unparsed."""
    variants = mapping(doc.get("variants"), f"{where}: variants")
    return {None: doc.get("steps"), **{str(name): steps for name, steps in variants.items()}}


def step_entries(doc: Any, where: str) -> list[tuple[str, dict[str, Any], str]]:
    """Each entry of a ``steps`` list as (step name, parameters, where it is): an entry is a
    mapping of one key, the step name, or a bare name (no parameters)."""
    doc = doc if doc is not None else []
    if not isinstance(doc, list):
        raise RecipeError(f"{where} must be a list of {{step_name: {{params}}}} entries")
    entries = []
    for i, entry in enumerate(doc):
        at = f"{where}[{i}]"
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RecipeError(f"{at}: each step is a mapping with one key, the step name (e.g. - filter: {{...}})")
        ((name, params),) = entry.items()
        entries.append((name, dict(mapping(params, f"{at}.{name}")), at))
    return entries
