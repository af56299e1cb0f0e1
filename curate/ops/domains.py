"""Domain classification into Mathematics Subject Classification areas, by keyword rules or a model.

s1 (simplescaling/s1 @ 77272c6, ``data/featurization.py``, ``do_domain_classification``) asked
Claude 3.5 Sonnet to classify every question into one of the MSC top-level areas of
``data/msc.json`` (shipped here unchanged as ``curate/data/msc.json``), the answer ending with the
two-digit code, and drew domains uniformly from those labels (``select_diverse``).
``method: model`` sends the same system and user prompt through a generation backend and reads
the last two-digit MSC code of the answer; an answer without one is rejected with the reason (s1
retried until it got one). ``method: rules`` is this toolkit's offline stand-in: whole-word
keyword cues per area (ours, not s1's), the area with most hits wins, ``fallback`` when none hit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from curate.models import SamplingParams, get_backend, model_label
from curate.models.steps import (
    backend_counts,
    checked_model,
    model_resources,
    snapshot,
)
from curate.step import REJECT_REASON, Step, StepResult, param

MSC_FILE = Path(__file__).resolve().parent.parent / "data" / "msc.json"
METHODS = ("rules", "model")
SYSTEM_PROMPT = (  # s1's system prompt, data/featurization.py
    "You are a helpful assistant that classifies questions into different subjects based on the provided "
    "classification rubrics. You will be given a question and a list of subjects. You need to classify the "
    "question into one of the subjects. If the question has multiple subjects, you should classify the question "
    "into the most relevant subject. Explain your reasoning, and end your response on a new line with two-digit "
    "code of the subject that the question belongs to."
)

# keyword cues per MSC area (this toolkit's, for competition math and science questions)
RULES: dict[str, tuple[str, ...]] = {
    "11": ("prime", "primes", "divisor", "divisors", "divisible", "remainder", "modulo", "mod", "gcd", "lcm",
           "greatest common divisor", "least common multiple", "integer solutions", "digits", "digit", "base",
           "factorial", "congruent", "perfect square", "relatively prime", "units digit"),
    "05": ("how many ways", "arrangements", "arrange", "permutations", "combinations", "choose", "committee",
           "subsets", "graph", "vertices", "edges", "colored", "coloring", "paths", "tournament", "distinct orders"),
    "60": ("probability", "expected value", "expected", "random", "randomly", "dice", "die", "coin", "coins",
           "at random", "chance"),
    "51": ("triangle", "circle", "angle", "polygon", "perimeter", "radius", "diameter", "quadrilateral",
           "tangent", "chord", "hexagon", "pentagon", "rectangle", "square", "parallelogram", "trapezoid",
           "sphere", "cube", "cone", "cylinder", "volume", "area", "inscribed", "circumscribed", "midpoint",
           "perpendicular", "parallel", "hypotenuse"),
    "26": ("inequality", "maximum", "minimum", "maximize", "minimize", "function", "domain", "range",
           "increasing", "decreasing", "real numbers"),
    "12": ("polynomial", "roots", "root", "coefficient", "coefficients", "quadratic", "cubic", "zeros",
           "vieta", "monic", "degree"),
    "15": ("matrix", "matrices", "vector", "vectors", "determinant", "eigenvalue", "linear transformation"),
    "30": ("complex number", "complex numbers", "imaginary", "modulus", "argument", "conjugate"),
    "40": ("sequence", "series", "sum of the first", "arithmetic sequence", "geometric sequence", "converge",
           "infinite sum", "recursively", "terms"),
    "33": ("sin", "cos", "tan", "cot", "sec", "csc", "trigonometric", "logarithm", "log", "exponential"),
    "28": ("integral", "integrate", "definite integral"),
    "34": ("differential equation", "derivative", "dy/dx"),
    "70": ("velocity", "acceleration", "force", "mass", "momentum", "friction", "projectile", "kinetic energy"),
    "78": ("electric", "magnetic", "charge", "voltage", "current", "lens", "wavelength", "photon"),
    "80": ("temperature", "heat", "entropy", "thermodynamic", "gas"),
    "81": ("quantum", "electron", "spin", "hamiltonian", "wavefunction"),
    "92": ("molecule", "reaction", "chemical", "enzyme", "cell", "protein", "dna", "gene", "organism"),
}


@lru_cache(maxsize=1)
def msc_areas() -> dict[str, dict[str, Any]]:
    """MSC code -> s1's record (title, descriptions, prompt), in file order."""
    return {a["code"]: a for a in json.loads(MSC_FILE.read_text(encoding="utf-8"))}


@lru_cache(maxsize=1)
def _rule_patterns() -> list[tuple[str, re.Pattern[str]]]:
    return [(code, re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                              + r")\b", re.IGNORECASE)) for code, words in RULES.items()]


def classify_rules(text: str, fallback: str) -> str:
    """The MSC code whose cues occur most often in ``text`` (ties: the earlier area of RULES)."""
    best, hits = fallback, 0
    for code, pattern in _rule_patterns():
        n = len(pattern.findall(text or ""))
        if n > hits:
            best, hits = code, n
    return best


_CODE_AT_END = re.compile(r"(\d{2})\D*$")


def parse_code(text: str) -> str | None:
    """The two-digit MSC code an answer ends with (s1 read the last two characters), or None."""
    m = _CODE_AT_END.search(text.strip())
    return m.group(1) if m and m.group(1) in msc_areas() else None



@dataclass
class ClassifyDomain(Step):
    """Classify each question into a Mathematics Subject Classification area (s1's diversity labels), by keyword rules offline or by a model with s1's prompt.

    ``method: model`` is s1's procedure (its prompt and MSC list, simplescaling/s1
    data/featurization.py); ``method: rules`` is this toolkit's offline stand-in (keyword cues).
    Writes ``domain_msc`` (two-digit code), ``domain_msc_title`` and ``domain_classifier``; the
    model's answer is kept in ``domain_msc_raw``. ``select_diverse`` draws over ``domain_msc``.
    """

    name = "classify_domain"
    writes = {"domain_msc": pa.string(), "domain_msc_title": pa.string(), "domain_classifier": pa.string(),  # noqa: RUF012
              "domain_msc_raw": pa.large_string()}

    method: str = param("rules", "rules (offline keyword cues) | model (s1's prompt through a generation backend)")
    model: dict[str, Any] | None = param(None, "model: {backend: transformers | openai | vllm, name_or_path: ..., ...} (s1: Claude 3.5 Sonnet)")
    fallback: str = param("97", "rules: the MSC code when no cue matches (97: mathematics education, i.e. elementary)")
    max_tokens: int = param(1024, "model: generation limit")
    seed: int = param(0, "model: sampling seed (part of the cache key)")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        checked_model(self.model, self.method, self.method == "model")
        if self.fallback not in msc_areas():
            raise ValueError(f"fallback must be an MSC code of curate/data/msc.json, got {self.fallback!r}")
        self._sampling()

    def columns_read(self) -> tuple[str, ...]:
        return ("problem",)

    def columns_written(self) -> dict[str, pa.DataType]:
        cols = dict(self.writes)
        if self.method == "rules":
            cols.pop("domain_msc_raw")
        return cols

    def worker_resources(self) -> dict[str, float] | None:
        return model_resources(self.model) if self.method == "model" else None

    def _sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=0.0, seed=self.seed)

    def prompts(self, batch: pl.DataFrame) -> list[str]:
        rubric = "\n\n".join(a["prompt"] for a in msc_areas().values())
        return [f"{SYSTEM_PROMPT}\n\n## Question\n{q}\n\n## Classification rubrics\n{rubric}"
                for q in batch["problem"].to_list()]

    def generation_requests(self, batch: pl.DataFrame) -> list[tuple[str, SamplingParams]]:
        if self.method != "model":
            return []
        return [(p, self._sampling()) for p in self.prompts(batch)]

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        areas = msc_areas()
        if self.method == "rules":
            codes = [classify_rules(q, self.fallback) for q in batch["problem"].to_list()]
            out = batch.with_columns(pl.Series("domain_msc", codes, dtype=pl.String),
                                     pl.Series("domain_msc_title", [areas[c]["title"] for c in codes], dtype=pl.String),
                                     pl.lit("rules").alias("domain_classifier"))
            return StepResult(out, None)
        assert self.model is not None
        backend = get_backend(self.model)
        before = snapshot(backend)
        done = backend.generate(self.prompts(batch), self._sampling()) if batch.height else []
        raw, found, reasons = [], [], []
        for comps in done:
            c = comps[0]
            raw.append(c.text)
            code = None if c.error else parse_code(c.text)
            found.append(code)
            reasons.append(f"classification failed: {c.error}" if c.error else
                           None if code else "the classifier's answer ends with no MSC code")
        out = batch.with_columns(
            pl.Series("domain_msc", found, dtype=pl.String),
            pl.Series("domain_msc_title", [areas[c]["title"] if c else None for c in found], dtype=pl.String),
            pl.lit(model_label(self.model)).alias("domain_classifier"),
            pl.Series("domain_msc_raw", raw, dtype=pl.String))
        drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
        tagged = out.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
        return StepResult(out.filter(~drop), tagged.filter(drop), {"generation": backend_counts(backend, before)})
