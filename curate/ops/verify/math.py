"""Math answers checked with math-verify: gold parsed first-match, the prediction boxed-first.

Settings follow open-r1's accuracy reward, which is what most R1-style pipelines run: the gold
is parsed with math-verify's default targets (LaTeX, then plain expressions) in ``first_match``
mode; the prediction with a boxed-first LaTeX target that needs an anchor (``\\boxed``, "final
answer is", ...), so a stray number in the text is never taken as the answer. ``verify(gold, pred)``
is called gold first (it is not symmetric). Differences from open-r1, and why:

- a bare reference answer (``(3,\\frac{\\pi}{2})``, ``[2,5)``) does not parse without delimiters,
  so it is wrapped in ``\\boxed{}`` unless it already holds ``\\boxed`` or ``$``;
- the prediction's LaTeX normalisation keeps math-verify's defaults (malformed operators on), so
  ``\\boxed{\\dfrac12}`` parses as 1/2 (open-r1 turns that off and gets a bare string);
- plain-expression targets are tried after LaTeX (anchored too), so "The final answer is 0.5" counts;
- ``lenient`` (the operator's default): a response with no anchored answer is parsed as the plain
  loop parses it (default targets, no anchor needed) instead of being judged wrong.

Verdicts are three-way: ``True``/``False``, or ``None`` when the row cannot be judged (no
reference, a reference that does not parse, a timeout) with the reason in ``error``.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify import grader as _grader
from math_verify import parser as _parser
from math_verify.errors import TimeoutException

from curate.ops.verify import latex_fast

latex_fast.install()  # ANTLR's two-stage parse and a bigger parse cache: same results, half the time

# Rows are timed by ``row_deadline`` (and the pool), so math-verify's per-call alarms are off;
# its once-per-process "timeout is disabled" warning would say the opposite of what holds.
_parser.TIMEOUT_WARNING_SHOWN = _grader.TIMEOUT_WARNING_SHOWN = True

GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
PRED_CONFIG = (
    LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
    ExprExtractionConfig(try_extract_without_anchor=False),
)
PRED_LENIENT = (LatexExtractionConfig(), ExprExtractionConfig())  # no anchor needed: last expression
THINKING_TAIL = 3000  # where a truncated trace's last answer lives
SOLUTION_MAX = 20000  # solutions are short; a runaway one is cut to its tail


def gold_text(reference: str) -> str:
    """The reference in a form math-verify extracts: bare answers are boxed."""
    ref = reference.strip()
    if "\\boxed" in ref or re.search(r"(?<!\\)\$", ref):  # a math delimiter, not an escaped \$
        return ref
    return "\\boxed{" + ref + "}"


@lru_cache(maxsize=4096)
def _gold(reference: str) -> list:
    """The parsed reference, once per worker: rows sampled n times per problem share it (a timeout
    or an error raises and is not cached)."""
    return parse(gold_text(reference), list(GOLD_CONFIG), extraction_mode="first_match",
                 parsing_timeout=None, raise_on_error=True)


def _parse(text: str, config: tuple) -> list:
    """First-match parse; a timeout propagates, any other failure means nothing was found."""
    try:
        return parse(text, list(config), extraction_mode="first_match", parsing_timeout=None,
                     raise_on_error=True)
    except TimeoutException:
        raise
    except Exception:  # noqa: BLE001
        return []


def _shown(parsed: list) -> str | None:
    """The matched text (math-verify returns [sympy object, matched string])."""
    if not parsed:
        return None
    return str(parsed[-1])[:500]


@contextmanager
def row_deadline(seconds: float) -> Iterator[bool]:
    """Raise math-verify's TimeoutException in this row after ``seconds`` of CPU time (ITIMER_PROF).

    CPU time, not wall time, so a verdict does not depend on how loaded the machine is (the pool
    adds a wall-clock guard from outside). One timer for the whole row replaces math-verify's
    per-call ``alarm``. TimeoutException is a BaseException, so math-verify's ``except Exception``
    blocks let it through. Signals work only in the main thread: elsewhere this does nothing and
    the caller's deadline (the pool's) is the only one.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield False
        return

    def _raise(signum: int, frame: object) -> None:
        raise TimeoutException(f"row time limit {seconds:g}s")

    old = signal.signal(signal.SIGPROF, _raise)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def verify_math(task: dict[str, Any]) -> dict[str, Any]:
    """Verdict for one row: keys correct, error, method, gold, pred.

    ``task`` holds reference, solution, thinking, answer (any may be None), timeout_s (the row's
    in-process limit; the pool adds a hard one from outside) and lenient (take the response's
    last expression when it states no anchored answer).
    """
    out: dict[str, Any] = {"correct": None, "error": None, "method": "math_verify", "gold": None, "pred": None}
    reference = task.get("reference")
    if reference is None or not str(reference).strip():
        out["error"] = "no reference answer"
        return out
    limit = float(task.get("timeout_s", 5.0))
    stage = "parsing the reference"
    try:
        with row_deadline(limit):
            _verify_into(out, str(reference), task)
    except TimeoutException:
        out["correct"] = None
        stage = out.pop("_stage", stage)
        out["error"] = f"timeout after {limit:g}s of CPU time ({stage})"
    out.pop("_stage", None)
    return out


def _verify_into(out: dict[str, Any], reference: str, task: dict[str, Any]) -> None:
    """The work of ``verify_math``; ``out['_stage']`` names the step a timeout interrupts."""
    out["_stage"] = "parsing the reference"
    try:
        gold = _gold(reference)
    except TimeoutException:
        raise
    except Exception as e:  # noqa: BLE001 - math-verify raises many kinds
        out["error"] = f"reference does not parse: {type(e).__name__}"
        return
    out["gold"] = _shown(gold)
    if not gold:
        out["error"] = "reference does not parse"
        return
    pred, where = [], None
    full = task.get("solution") or ""
    solution = full[-SOLUTION_MAX:]
    thinking = (task.get("thinking") or "")[-THINKING_TAIL:]
    answer = task.get("answer")
    too_long = [f"{name} ({len(text):,} chars)" for name, text in (("solution", full), ("answer", answer or ""))
                if len(text) > SOLUTION_MAX]
    if answer and len(answer) > SOLUTION_MAX:
        answer = None  # not an answer to compare: parsing it could take minutes
    for where, text in (("solution", solution), ("thinking", thinking),
                        ("answer", "\\boxed{" + answer + "}" if answer else "")):
        if text.strip():
            out["_stage"] = f"parsing the response ({where})"
            pred = _parse(text, PRED_CONFIG)
            if pred:
                break
    if not pred and task.get("lenient"):
        # no anchored answer: what the plain loop does, math-verify's default targets (no anchor
        # needed) on the response's end (the thinking's tail, then the solution)
        text = (thinking + "\n" + solution).strip()
        out["_stage"] = "parsing the response (unanchored)"
        pred = _parse(text, PRED_LENIENT) if text else []
        where = "unanchored"
    out["method"] = f"math_verify:{where}" if pred else "math_verify"
    out["pred"] = _shown(pred)
    if not pred and too_long:  # what was not searched may hold the answer: no verdict
        out["error"] = (f"no answer found in the last {SOLUTION_MAX:,} chars; too long to judge: "
                        + ", ".join(too_long))
        return
    if not pred:
        out["correct"] = False
        out["error"] = "no answer found in the response"
        return
    out["_stage"] = "comparing answers"
    try:
        out["correct"] = bool(verify(gold, pred, timeout_seconds=None, raise_on_error=True))
    except TimeoutException:
        raise
    except Exception as e:  # noqa: BLE001
        out["correct"] = False
        out["error"] = f"comparison failed: {type(e).__name__}"


def warmup() -> None:
    """Run one verification so math-verify's lazy parser set-up is paid before real work."""
    verify_math({"reference": "\\frac{1}{2}", "solution": "so the answer is $\\boxed{0.5}$", "timeout_s": 5})


def plain_verify(reference: str, response: str) -> bool:
    """The baseline: ``verify(parse(gold), parse(response))`` with math-verify's defaults."""
    return bool(verify(parse(reference), parse(response)))
