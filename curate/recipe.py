"""YAML recipes: the Python API one-to-one (same step names, same parameters).

```yaml
input: {path: data/traces.jsonl, format: auto}   # paths are relative to the recipe file
steps:
  - exact_dedup: {}
  - filter: {min_thinking_chars: 200}
output: {path: out/quickstart}                     # relative to the working directory
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from curate.errors import RecipeError
from curate.io.read import Source, read
from curate.pipeline import Pipeline, RunResult
from curate.recipedoc import mapping, step_entries, step_lists
from curate.step import build_step

TOP_KEYS = {"input", "steps", "variants", "output", "model", "batch_size", "name", "description", "card"}
INPUT_KEYS = {"path", "format", "on_error", "domain", "source", "teacher", "max_chars",
              "hub", "split", "revision", "config", "skip_unsupported"}  # hub: a Hugging Face dataset (curate.io.hub)
HUB_KEYS = ("split", "revision", "config")
OUTPUT_KEYS = {"path", "shard_mb"}
CARD_KEYS = {"license", "pretty_name", "language"}  # the dataset card's header (name/description: its title)


@dataclass
class Recipe:
    """A validated recipe: where to read, the pipeline, where to write."""

    path: Path | None
    input: dict[str, Any]
    pipeline: Pipeline
    output: dict[str, Any]
    name: str | None = None

    def source(self) -> Source:
        spec = dict(self.input)
        fmt = spec.pop("format", "auto")
        if "hub" in spec:
            from curate.io.hub import read_hub

            return read_hub(spec.pop("hub"), **{k: spec.pop(k) for k in HUB_KEYS if k in spec}, format=fmt, **spec)
        data = spec.pop("path")
        paths = data if isinstance(data, list) else [data]
        base = self.path.parent if self.path else Path.cwd()
        resolved = [str(p) if Path(p).is_absolute() or str(p).startswith("hf://") else str(base / p) for p in paths]
        return read(resolved if len(resolved) > 1 else resolved[0], fmt, **spec)


def parse_recipe(doc: Any, where: str = "recipe") -> Recipe:
    if not isinstance(doc, dict):
        raise RecipeError(f"{where}: a recipe is a mapping with input, steps and output")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(sorted(TOP_KEYS))}")
    if "input" not in doc:
        raise RecipeError(f"{where}: missing key 'input' (e.g. input: {{path: traces.jsonl}})")
    inp = doc["input"]
    if isinstance(inp, str):
        inp = {"path": inp}
    inp = mapping(inp, f"{where}: input")
    bad = set(inp) - INPUT_KEYS
    if bad:
        raise RecipeError(f"{where}: input: unknown key(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(INPUT_KEYS))}")
    if ("path" in inp) == ("hub" in inp):
        raise RecipeError(f"{where}: input needs path (a file, folder, glob or hf://datasets/...) or hub "
                          "(ORG/NAME, with split and revision), not both" if "path" in inp else
                          f"{where}: input.path is missing (or hub: ORG/NAME for a Hugging Face dataset)")
    if "path" in inp and any(k in inp for k in HUB_KEYS):
        raise RecipeError(f"{where}: input: {', '.join(k for k in HUB_KEYS if k in inp)} go with hub, not path "
                          "(in a path, give the revision as hf://datasets/ORG/NAME@REVISION/...)")
    if "steps" not in doc:
        raise RecipeError(f"{where}: missing key 'steps' (use `steps: []` to import, validate and write)")
    model = mapping(doc.get("model"), f"{where}: model") or None
    lists = step_lists(doc, where)
    steps = _steps(lists.pop(None), f"{where}: steps", model)
    variants = {name: _steps(vsteps, f"{where}: variants.{name}", model) for name, vsteps in lists.items()}
    out = doc.get("output") or {}
    if isinstance(out, str):
        out = {"path": out}
    out = mapping(out, f"{where}: output")
    bad = set(out) - OUTPUT_KEYS
    if bad:
        raise RecipeError(f"{where}: output: unknown key(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(OUTPUT_KEYS))}")
    batch_size = doc.get("batch_size")  # absent: parts sized by content
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise RecipeError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
    for key in ("name", "description"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise RecipeError(f"{where}: {key} must be a string, got {doc[key]!r}")
    card = _card(doc.get("card"), f"{where}: card")
    try:
        pipeline = Pipeline(steps, variants=variants, batch_size=batch_size, name=doc.get("name"),
                            description=doc.get("description"), card=card)
    except ValueError as e:
        raise RecipeError(f"{where}: variants: {e}") from None
    return Recipe(None, inp, pipeline, out, doc.get("name"))


def _card(value: Any, where: str) -> dict[str, Any]:
    """The ``card:`` block: ``license`` (an SPDX-style id such as apache-2.0), ``pretty_name``,
    ``language`` (a code or a list of codes)."""
    card = dict(mapping(value, where))
    bad = set(card) - CARD_KEYS
    if bad:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(CARD_KEYS))}")
    for key in ("license", "pretty_name"):
        if key in card and not isinstance(card[key], str):
            raise RecipeError(f"{where}.{key}: expected a string, got {card[key]!r}")
    if isinstance(card.get("language"), str):
        card["language"] = [card["language"]]
    if "language" in card and not all(isinstance(x, str) for x in card["language"] or [None]):
        raise RecipeError(f"{where}.language: expected a language code or a list of them, got {card['language']!r}")
    return card


def _steps(doc: Any, where: str, model: dict[str, Any] | None = None) -> list:
    """The steps of a ``steps`` list (``recipedoc.step_entries``: a bare name means no parameters).

    The recipe's top-level ``model:`` block is every model-backed step's ``model`` parameter,
    unless the step sets its own.
    """
    steps = []
    for name, params, at in step_entries(doc, where):
        if model is not None and "model" not in params and _takes_model(name):
            params["model"] = dict(model)
        steps.append(build_step(name, params, at))
    return steps


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a YAML recipe; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    recipe = parse_recipe(doc, str(path))
    recipe.path = path
    return recipe


def run_recipe(path: str | os.PathLike, out: str | os.PathLike | None = None, **run_kwargs: Any) -> RunResult:
    """``curate run`` in Python: load the recipe, run it, return the result."""
    recipe = load_recipe(path)
    target = out or recipe.output.get("path")
    if not target:
        raise RecipeError(f"{path}: no output.path in the recipe and no out given")
    if "shard_mb" in recipe.output:
        run_kwargs.setdefault("shard_bytes", int(recipe.output["shard_mb"] * (1 << 20)))
    return recipe.pipeline.run(recipe.source(), target, **run_kwargs)


def _takes_model(step_name: str) -> bool:
    """Whether the step's ``model`` is a generation model's settings (semantic_dedup's is an
    embedding model's name, which the recipe's ``model:`` block must not fill)."""
    import dataclasses

    from curate.ops import step_class

    cls = step_class(step_name)
    return cls is not None and any(f.name == "model" and str(f.type).startswith("dict")
                                   for f in dataclasses.fields(cls))
