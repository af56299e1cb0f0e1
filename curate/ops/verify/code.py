"""Code answers: run the traced program against the row's tests in the sandbox.

Two layouts, as real sets use them (the readers map them into ``test_cases`` / ``test_fn_name``):

- stdin/stdout (APPS, TACO, CodeContests): one fresh sandboxed process per test; outputs compare
  line by line after trailing whitespace, then token by token, then with a 1e-6 float tolerance
  (APPS's grader does the same fallbacks);
- call-based (LeetCode style, APPS with ``fn_name``): one sandboxed process runs a harness that
  loads the program, finds ``fn_name`` (a function, or a method of ``class Solution``) and calls
  it with each test's JSON arguments under a per-test alarm; only the inputs enter the sandbox,
  results are compared here (equal, or equal to the expected list's only element, as APPS does).

Limits are CPU time (RLIMIT_CPU per run, the harness's per-test ITIMER_PROF, the row's budget
summed over its runs), so a verdict does not depend on machine load; wall time is only a guard
(``WALL_FACTOR`` times the CPU limit plus ``WALL_SLACK_S``) for a program that sleeps or blocks.

The program is the last fenced code block of the solution (the thinking's, when the solution has
none). ``verify_pass_rate`` is the share of tests passed; ``verify_correct`` is all passed.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from curate.ops.verify.sandbox import Limits, run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_NOT_PYTHON = {"cpp", "c++", "c", "java", "javascript", "js", "rust", "go", "bash", "sh", "text",
               "txt", "plaintext", "json", "output", "input"}
MARKER = "\x00curate-results\x00"
WALL_FACTOR, WALL_SLACK_S = 3.0, 2.0  # a run's wall-clock guard, from its CPU limit


def _limits(cpu_s: float, memory_mb: int) -> Limits:
    cpu = max(1, math.ceil(cpu_s))
    return Limits(wall_s=cpu * WALL_FACTOR + WALL_SLACK_S, cpu_s=cpu, memory_mb=memory_mb)

HARNESS = r'''
import json, signal, sys
spec = json.load(open("tests.json"))
import os
os.remove("tests.json")
sys.stdin = open(os.devnull)
ns = {"__name__": "solution", "__builtins__": __builtins__}
out = []
def alarm(signum, _):
    raise TimeoutError("per-test CPU time limit" if signum == signal.SIGPROF else "per-test wall-clock guard")
def limit(on):  # CPU time decides; wall time only guards against a function that sleeps
    signal.setitimer(signal.ITIMER_PROF, spec["per_test_s"] if on else 0)
    signal.setitimer(signal.ITIMER_REAL, spec["guard_s"] if on else 0)
signal.signal(signal.SIGPROF, alarm)
signal.signal(signal.SIGALRM, alarm)
limit(True)
try:
    exec(compile(open("prog.py").read(), "prog.py", "exec"), ns)
    limit(False)
    fn = ns.get(spec["fn_name"])
    if fn is None and isinstance(ns.get("Solution"), type):
        fn = getattr(ns["Solution"](), spec["fn_name"], None)
    if fn is None:
        raise NameError("no function or Solution method named " + spec["fn_name"])
except BaseException as e:
    sys.stdout.write("\n" + spec["marker"] + json.dumps({"load_error": type(e).__name__ + ": " + str(e)[:300]}) + "\n")
    sys.exit(0)
for args in spec["inputs"]:
    limit(True)
    try:
        value = fn(*args) if isinstance(args, list) else fn(args)
        json.dumps(value)
        out.append({"ok": True, "value": value})
    except BaseException as e:
        out.append({"ok": False, "error": type(e).__name__ + ": " + str(e)[:200]})
    finally:
        limit(False)
sys.stdout.write("\n" + spec["marker"] + json.dumps({"results": out}, default=repr) + "\n")
'''


def extract_program(solution: str, thinking: str = "") -> str | None:
    """The last fenced code block that is not marked as another language (solution first)."""
    for text in (solution or "", (thinking or "")[-20000:]):
        blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
        blocks = [b for lang, b in blocks if lang not in _NOT_PYTHON and b.strip()]
        if blocks:
            return blocks[-1]
    return None


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def outputs_match(got: str, expected: str) -> bool:
    """stdin/stdout comparison: lines, then tokens, then tokens with a float tolerance."""
    g = [ln.rstrip() for ln in got.strip().splitlines()]
    e = [ln.rstrip() for ln in expected.strip().splitlines()]
    if g == e:
        return True
    gt, et = got.split(), expected.split()
    if gt == et:
        return True
    if len(gt) != len(et):
        return False
    for a, b in zip(gt, et, strict=True):
        if a == b:
            continue
        fa, fb = _float(a), _float(b)
        if fa is None or fb is None or not math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-6):
            return False
    return True


def _call_match(value: Any, expected: Any) -> bool:
    if isinstance(value, tuple):
        value = list(value)
    if value == expected:
        return True
    return isinstance(expected, list) and len(expected) == 1 and value == expected[0]


def verify_code(task: dict[str, Any]) -> dict[str, Any]:
    """Verdict for one code row: keys correct, error, method, gold, pred, pass_rate.

    ``task``: solution, thinking, tests (list of {input, output}), fn_name, per_test_s,
    row_timeout_s, max_tests, memory_mb.
    """
    out: dict[str, Any] = {"correct": None, "error": None, "method": "code", "gold": None,
                           "pred": None, "pass_rate": None}
    tests = [t for t in (task.get("tests") or []) if t is not None][: task.get("max_tests", 50)]
    if not tests:
        out["error"] = "no test cases"
        return out
    program = extract_program(task.get("solution") or "", task.get("thinking") or "")
    if program is None:
        out.update(correct=False, pass_rate=0.0, error="no code block in the response")
        return out
    out["pred"] = program[:500]
    per_test = float(task.get("per_test_s", 4.0))
    budget = float(task.get("row_timeout_s", 30.0))
    limits = _limits(per_test, int(task.get("memory_mb", 1024)))
    fn_name = task.get("fn_name")
    if fn_name:
        return _call_based(program, tests, fn_name, per_test, budget, limits, out)
    out["method"] = "code:stdio"
    passed, first_fail, used = 0, None, 0.0
    for k, test in enumerate(tests):
        if used > budget:
            first_fail = first_fail or f"row CPU time limit ({budget:g}s) reached after {k} of {len(tests)} tests"
            break
        r = run_python(program, test.get("input") or "", limits)
        used += r.cpu
        if r.ok and outputs_match(r.stdout, test.get("output") or ""):
            passed += 1
        elif first_fail is None:
            first_fail = f"test {k}: {r.reason}" if not r.ok else f"test {k}: wrong output {r.stdout[:80]!r}"
    out["pass_rate"] = passed / len(tests)
    out["correct"] = passed == len(tests)
    out["error"] = first_fail
    return out


def _call_based(program: str, tests: list[dict], fn_name: str, per_test: float, budget: float,
                limits: Limits, out: dict[str, Any]) -> dict[str, Any]:
    out["method"] = "code:call"
    try:
        inputs = [json.loads(t["input"]) for t in tests]
        expected = [json.loads(t["output"]) for t in tests]
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        out["error"] = f"call-based tests are not JSON: {e}"
        return out
    spec = {"fn_name": fn_name, "inputs": inputs, "per_test_s": per_test, "marker": MARKER,
            "guard_s": per_test * WALL_FACTOR + WALL_SLACK_S}
    run_limits = _limits(min(budget, per_test * len(tests) + 2.0), limits.memory_mb)
    r = run_python(program, "", run_limits, files={"harness.py": HARNESS, "tests.json": json.dumps(spec)},
                   argv=["harness.py"])
    found = r.stdout.rsplit(MARKER, 1)
    if len(found) < 2:
        out.update(correct=False, pass_rate=0.0, error=f"harness gave no results: {r.reason or 'no output'}")
        return out
    try:
        report = json.loads(found[1].strip().splitlines()[0])
    except (json.JSONDecodeError, IndexError):
        out.update(correct=False, pass_rate=0.0, error="harness results unreadable")
        return out
    if "load_error" in report:
        out.update(correct=False, pass_rate=0.0, error=f"program does not load: {report['load_error']}")
        return out
    results = report.get("results", [])
    passed, first_fail = 0, None
    for k, exp in enumerate(expected):
        res = results[k] if k < len(results) else {"ok": False, "error": r.reason or "not run"}
        if res.get("ok") and _call_match(res.get("value"), exp):
            passed += 1
        elif first_fail is None:
            first_fail = f"test {k}: {res['error']}" if not res.get("ok") else f"test {k}: returned {str(res.get('value'))[:80]}"
    out["pass_rate"] = passed / len(expected)
    out["correct"] = passed == len(expected)
    out["error"] = first_fail
    return out
