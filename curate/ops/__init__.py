"""The built-in operators (one module or folder per family) and the registry of steps by recipe name.

The registry is explicit: ``OPERATORS`` lists every built-in operator class and the module that
defines it; ``register`` adds a user's or a test's step. Modules are imported on first lookup, so
importing one family's helpers (the verifier pool's workers import ``curate.ops.verify.pool``)
does not load every operator.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from curate.ops.answer import ExtractAnswer
    from curate.ops.choose import Choose
    from curate.ops.corrupt import (
        CorruptDigits,
        CorruptWrongAnswer,
        DeleteSteps,
        InsertSteps,
        RemoveKeywords,
        ShuffleSteps,
    )
    from curate.ops.decontam.step import Decontaminate
    from curate.ops.dedup.exact import ExactDedup
    from curate.ops.dedup.minhash import MinHashDedup
    from curate.ops.dedup.semantic import SemanticDedup
    from curate.ops.difficulty import GradeDifficulty
    from curate.ops.domains import ClassifyDomain
    from curate.ops.filter import Filter
    from curate.ops.generate import Generate
    from curate.ops.reformat import Reformat
    from curate.ops.rubric import ScoreReasoning
    from curate.ops.select import Sample
    from curate.ops.selection import SelectDiverse, SelectQuality, SelectTop
    from curate.ops.shorten import Shorten
    from curate.ops.structure.step import Profile, SegmentSteps
    from curate.ops.verify.step import PairPreferences, Verify
    from curate.step import Step

#: Every built-in operator: class name -> the module that defines it.
OPERATORS: dict[str, str] = {
    "ExtractAnswer": "curate.ops.answer",
    "Choose": "curate.ops.choose",
    "CorruptDigits": "curate.ops.corrupt.digits",
    "CorruptWrongAnswer": "curate.ops.corrupt.wrong_answer",
    "DeleteSteps": "curate.ops.corrupt.steps",
    "InsertSteps": "curate.ops.corrupt.steps",
    "RemoveKeywords": "curate.ops.corrupt.keywords",
    "ShuffleSteps": "curate.ops.corrupt.steps",
    "Decontaminate": "curate.ops.decontam.step",
    "ExactDedup": "curate.ops.dedup.exact",
    "MinHashDedup": "curate.ops.dedup.minhash",
    "SemanticDedup": "curate.ops.dedup.semantic",
    "GradeDifficulty": "curate.ops.difficulty",
    "ClassifyDomain": "curate.ops.domains",
    "Filter": "curate.ops.filter",
    "Generate": "curate.ops.generate",
    "Reformat": "curate.ops.reformat",
    "ScoreReasoning": "curate.ops.rubric",
    "Sample": "curate.ops.select",
    "SelectDiverse": "curate.ops.selection",
    "SelectQuality": "curate.ops.selection",
    "SelectTop": "curate.ops.selection",
    "Shorten": "curate.ops.shorten",
    "Profile": "curate.ops.structure.step",
    "SegmentSteps": "curate.ops.structure.step",
    "PairPreferences": "curate.ops.verify.step",
    "Verify": "curate.ops.verify.step",
}

#: Steps with a slow set-up that ``curate run`` starts before its own imports (recipe name ->
#: "module:function", the function called with the step's recipe params; the module must import
#: nothing heavy). The step then adopts what was started; what it never adopts is stopped at exit.
EARLY_START: dict[str, str] = {"verify": "curate.ops.verify:start_early"}

_registry: dict[str, type[Step]] = {}  # recipe name -> class: the built-ins, then registered steps


def _operator(class_name: str) -> type[Step]:
    return getattr(import_module(OPERATORS[class_name]), class_name)


def registry() -> dict[str, type[Step]]:
    """Every step a recipe can name (recipe name -> class): the built-ins and the registered ones."""
    if not _registry:
        for class_name in OPERATORS:
            _add(_operator(class_name))
    return _registry


def builtin_operators() -> list[type[Step]]:
    """The built-in operator classes (what CATALOG.md documents), in ``OPERATORS`` order."""
    return [_operator(class_name) for class_name in OPERATORS]


def step_class(name: str) -> type[Step] | None:
    """The step class a recipe names ``name``, or None."""
    return registry().get(name)


def register(cls: type[Step]) -> type[Step]:
    """Make a user's or a test's step usable by name in recipes (``build_step``); a decorator too."""
    registry()
    return _add(cls)


def _add(cls: type[Step]) -> type[Step]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no recipe name (set the class attribute `name`)")
    known = _registry.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise RuntimeError(f"two steps are named {cls.name!r}: {known.__qualname__} and {cls.__qualname__}")
    _registry[cls.name] = cls
    return cls


def __getattr__(name: str) -> Any:
    if name in OPERATORS:
        value = _operator(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'curate.ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(OPERATORS))


__all__ = [
    "Choose",
    "ClassifyDomain",
    "CorruptDigits",
    "CorruptWrongAnswer",
    "Decontaminate",
    "DeleteSteps",
    "ExactDedup",
    "ExtractAnswer",
    "Filter",
    "Generate",
    "GradeDifficulty",
    "InsertSteps",
    "MinHashDedup",
    "PairPreferences",
    "Profile",
    "Reformat",
    "RemoveKeywords",
    "Sample",
    "ScoreReasoning",
    "SegmentSteps",
    "SelectDiverse",
    "SelectQuality",
    "SelectTop",
    "SemanticDedup",
    "Shorten",
    "ShuffleSteps",
    "Verify",
    "OPERATORS",
    "builtin_operators",
    "register",
    "registry",
    "step_class",
]
