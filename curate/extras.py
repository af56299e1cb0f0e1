"""Which optional extras a step needs, checked before a run starts (one line per gap, no traceback).

A step's needs depend on its parameters (``decontaminate`` needs the ``semantic`` extra only with
the ``embedding`` method, a model-backed step only the backend it names), so each rule reads
them. A step class of your own can declare ``requires(self) -> {module: extra}``. On the ray
engine a vllm model runs in Ray Data's LLM stage on the GPU nodes, so this machine needs no vLLM.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from curate.errors import CurateError
from curate.step import Step

_VERIFY = {"math_verify": "verify"}
_BACKENDS = {"transformers": {"torch": "train", "transformers": "train"}, "vllm": {"vllm": "vllm"}}


def _model(params: dict[str, Any]) -> dict[str, str]:
    """What the generation backend in a step's ``model`` settings imports (openai: nothing)."""
    settings = params.get("model")
    return dict(_BACKENDS.get(settings.get("backend"), {})) if isinstance(settings, dict) else {}


def _decontaminate(p: dict[str, Any]) -> dict[str, str]:
    methods = [p.get("method")] if isinstance(p.get("method"), str) else list(p.get("method") or [])
    needs = {"rapidfuzz": "dedup"} if "fuzzy" in methods else {}
    if "embedding" in methods:
        needs |= {"sentence_transformers": "semantic", "torch": "semantic"}
    return needs


def _difficulty(p: dict[str, Any]) -> dict[str, str]:
    if p.get("method") == "pass_rate":
        return {**_VERIFY, **_model(p)}
    return _model(p) if p.get("method") == "judge" else {}


# step name -> its parameters -> {importable module: extra that installs it}
RULES: dict[str, Callable[[dict[str, Any]], dict[str, str]]] = {
    "verify": lambda p: dict(_VERIFY),
    "shorten": lambda p: {**_VERIFY, **(_model(p) if p.get("method") == "rewrite" else {})},
    "grade_difficulty": _difficulty,
    "segment_steps": lambda p: _model(p) if p.get("mode") == "model" else {},
    "minhash_dedup": lambda p: {"datasketch": "dedup", "scipy": "dedup"},
    "decontaminate": _decontaminate,
    "semantic_dedup": lambda p: {"sentence_transformers": "semantic", "torch": "semantic"},
}


@dataclass(frozen=True)
class Missing:
    """One step's missing module and the extra that installs it."""

    where: str  # "step 2 'verify'" or "variant 'x' step 4 'shorten'"
    module: str
    extra: str

    def line(self) -> str:
        return (f"{self.where} needs the '{self.extra}' extra ({self.module} is not installed): "
                f"pip install '{distribution()}[{self.extra}]'")


class MissingExtraError(CurateError):
    """Steps need optional packages that are not installed; the message has the pip command."""

    def __init__(self, missing: list[Missing]):
        self.missing = missing
        super().__init__("\n".join(m.line() for m in missing))


@functools.lru_cache(maxsize=1)
def distribution() -> str:
    """The name this package is installed under (what ``pip install`` needs)."""
    names = metadata.packages_distributions().get("curate") or ["curate"]
    return names[0]


def requirements(step: Step, engine: str = "local") -> dict[str, str]:
    """{module: extra} that ``step`` imports with its parameters, in this process."""
    rule = RULES.get(step.name)
    needs = rule(step.params()) if rule else {}
    own = getattr(step, "requires", None)
    if callable(own):
        needs |= own()
    if engine == "ray":  # generations are made on the cluster's GPU nodes (curate[ray-vllm] there)
        needs = {m: e for m, e in needs.items() if e != "vllm"}
    return needs


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a stub without a spec
        return False


def missing_extras(steps: Sequence[tuple[str, Step]], engine: str = "local") -> list[Missing]:
    """The (where, step) pairs' missing modules, one entry per step and extra."""
    out: list[Missing] = []
    for where, step in steps:
        seen: set[str] = set()
        for module, extra in requirements(step, engine).items():
            if extra not in seen and not installed(module):
                seen.add(extra)
                out.append(Missing(where, module, extra))
    return out


def check_extras(steps: Sequence[tuple[str, Step]], engine: str = "local") -> None:
    """Raise MissingExtraError naming every step whose extra is not installed."""
    missing = missing_extras(steps, engine)
    if missing:
        raise MissingExtraError(missing)
