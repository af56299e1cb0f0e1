"""Math verification: a hand-written table of real answer pairs, and agreement with real labels.

Every gold answer below is a real reference from ../shared/data (MATH-500, Minerva, OlympiadBench,
AIME/AMC, simpleRL MATH) and every prediction a real model answer to it (from the same files'
``pred`` fields) or a form the issue names. The expected verdict was written from the
mathematics, before running the verifier. Where math-verify's verdict differs from the
mathematics the row is an xfail with the reason, so the table shows what the tool gets wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curate import read
from curate.ops.verify.math import gold_text, verify_math

X = "xfail"

# (gold reference, predicted answer, verdict by the mathematics, note / xfail reason)
TABLE: list[tuple[str, str, bool, str]] = [
    # --- equivalent forms -----------------------------------------------------------------------
    ("420", "420", True, ""),
    (r"\frac{1}{2}", "0.5", True, "fraction vs decimal"),
    (r"\frac{1}{2}", "1/2", True, "inline fraction"),
    (r"\frac{1}{2}", r"\dfrac12", True, "dfrac without braces"),
    ("0.5", r"\frac{1}{2}", True, "decimal gold"),
    ("0.15", r"\frac{3}{20}", True, ""),
    (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", True, "MATH-500 polar point"),
    (r"[2,5)", r"[2, 5)", True, "half-open interval"),
    (r"(-\infty,3]", r"(-\infty, 3]", True, "unbounded interval"),
    (r"\{1,2\}", r"\{2,1\}", True, "set order"),
    ("(1,1),(3,2)", "(1,1), (3,2)", True, "OlympiadBench pairs"),
    ("(3,2),(-3,2),(3,-2),(-3,-2)", "(3, 2), (3, -2), (-3, 2), (-3, -2)", True, "solution set, other order"),
    ("(2,2,2),(3,4,3)", "(2, 2, 2), (3, 4, 3)", True, ""),
    ("(1,7,103,105),(3,5,101,107)", "(3, 5, 101, 107), (1, 7, 103, 105)", True, "4-tuples, other order"),
    ("-9,-1", "-1, -9", True, "roots listed in other order"),
    ("4,8", "4, 8", True, ""),
    (r"0,-1,-\frac{3}{2}", r"-\frac{3}{2}, 0, -1", True, ""),
    (r"2^{-2/3},8", r"8, \frac{1}{\sqrt[3]{4}}", True, "2^(-2/3) = 4^(-1/3)"),
    (r"\frac{1}{6}\pi,\frac{5}{6}\pi,\frac{1}{4}\pi,\frac{3}{4}\pi",
     r"\frac{\pi}{6},\frac{\pi}{4},\frac{5\pi}{6},\frac{3\pi}{4}", True, "angle set"),
    (r"(22+8\sqrt{6},22-8\sqrt{6}),(22-8\sqrt{6},22+8\sqrt{6})",
     r"(22 + 8\sqrt{6}, 22 - 8\sqrt{6}), (22 - 8\sqrt{6}, 22 + 8\sqrt{6})", True, ""),
    (r"(1,0),(\frac{1}{100},-8),(100,8)", r"(1, 0), (100, 8), (0.01, -8)", True, "1/100 = 0.01"),
    ("-2+7i", "-2 + 7i", True, "complex"),
    (r"1+\sqrt{3}i", r"1 + i \sqrt{3}", True, "complex, factor order"),
    (r"-8-8\sqrt{3}i", r"-8 - 8 \sqrt{3} i", True, ""),
    (r"\frac{e^{-2t}}{15}", r"x_p(t) = \frac{1}{15} e^{-2t}", True, "Minerva: named function"),
    (r"\frac{1}{b-a}(e^{-at}-e^{-bt})", r"y(t) = \frac{e^{-a t} - e^{-b t}}{b - a}", True, ""),
    (r"\frac{1}{s}-\frac{1}{s}e^{-sT}", r"W(s) = \frac{1 - e^{-sT}}{s}", True, "Laplace transform"),
    (r"\frac{e^{t}}{3}+ce^{-2t}", r"x(t) = \frac{1}{3} e^{t} + c e^{-2t}", True, ""),
    (r"\frac{600}{7}", r"\frac{600}{7}", True, ""),
    ("x^2+1", "1+x^2", True, "commuted polynomial"),
    (r"8\sqrt{2}", r"\sqrt{128}", True, "unsimplified radical"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}", True, ""),
    (r"10\%", "0.1", True, "percentage as a fraction"),
    (r"10\%", "10", True, "percentage without the sign"),
    ("17.5", r"17.5\%", True, X + ": a percent sign only in the prediction is read as /100 (0.175)"),
    ("10", r"10 \text{ cm}", True, "units"),
    (r"\$18.90", "18.90", True, "currency"),
    ("10{,}000", "10000", True, "thousands separator in the gold"),
    (r"\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}", r"\begin{pmatrix}-2\\-14\\-7\end{pmatrix}", True, "vector"),
    ("y=2x+3", "2x+3", True, "assignment vs expression"),
    (r"-2,-1,0,1,2,10,11,12,13,14", "-2, -1, 0, 1, 2, 10, 11, 12, 13, 14", True, ""),
    ("3,250", "3250", True, "thousands separator"),
    ("1e11", r"1\times10^{11}", True, X + ": math-verify does not read the e-notation gold '1e11' as 10^11"),
    ("-2,-2", "a = -2, b = -2", True, X + ": named values 'a=..., b=...' are not matched to a bare list"),
    ("-3,0", "b=-3, c=0", True, "named values"),
    (r"\frac{1}{4-\omega^{2}}", r"A = \frac{1}{4 - \omega^2}, \quad \text{for } \omega^2 \neq 4", True,
     X + ": the side condition turns the prediction into a two-element list"),
    # --- not equivalent ---------------------------------------------------------------------------
    ("540", "3", False, ""),
    (r"-\frac{8}{3}", "0", False, ""),
    (r"\frac{67\pi}{3}", r"192\pi", False, ""),
    ("2604", "2472", False, ""),
    ("28", r"\sqrt{34}+3\sqrt{10}", False, ""),
    ("11,13", "11", False, "one of two answers missing"),
    ("f(x)=x,f(x)=-x", "f(x)=x", False, "one of two functions missing (the harness label says correct)"),
    ("f(x)=x,f(x)=2-x", "f(x)=x", False, "one of two functions missing (the harness label says correct)"),
    (r"\sqrt{2}-1,\frac{3-\sqrt{2}}{7}", r"\frac{\sqrt{2}}{2}", False, ""),
    ("n", "2n", False, ""),
    (r"\frac{3\pi}{4}", r"\frac{11\pi}{12}", False, ""),
    ("25", "12.5", False, ""),
    ("6", r"\frac{60}{17}", False, ""),
    ("0.003", "3", False, "off by a factor of 1000"),
    ("(3,4]", "1", False, ""),
    ("352146,362145,452136,562134", "352146", False, "one of four"),
    (r"2\sqrt{10}", r"8\sqrt{2}", False, ""),
    (r"\frac{222}{13}", r"\frac{5}{6}", False, ""),
    (r"(-\frac{1}{2},\frac{7}{2})", r"(-\frac{5}{2},5)", False, ""),
    (r"\frac{2}{7}\sqrt{53}", r"\frac{2\sqrt{41}}{7}", False, ""),
    (r"7\pi", "7", False, "missing pi"),
    (r"\sqrt{6}", r"\frac{1}{6}", False, ""),
    ("2RC+R+C", "4RC+2R+2C+1", False, ""),
    ("6290000", "6287000", False, "rounded to a different place"),
    (r"\frac{1}{60}", r"\frac{17}{663}", False, ""),
    ("k+4", "2k+1", False, ""),
    ("6764,10945", "676510945", False, ""),
    (r"\frac{1-p^{2}}{3}", r"\frac{5-p}{12}", False, ""),
    ("1", "1, 1/3, 1/9, 1/27, 1/81", False, "extra values"),
    (r"\frac{1}{3},1,9", r"\frac{1}{3}, 1, 3", False, ""),
    (r"\sqrt{2}", r"\sqrt{2}, 16", False, "extra value"),
    ("[2,5)", "[2,5]", False, "closed vs half-open"),
    ("(2,5)", "[2,5)", False, "open vs half-open"),
    (r"\{1,2\}", r"\{1,2,3\}", False, ""),
    (r"10\%", "0.01", False, ""),
    ("x^2+1", "x^2-1", False, ""),
    (r"\frac{14}{3}", "4.6667", False, "a rounding is not the number"),
    ("2.88e-19", r"2.8902\times10^{-19}", False, "different number (0.4% off)"),
    ("0.05", "100", False, ""),
    ("E_{1},E_{2}", "E_1", False, "one of two missing"),
    (r"\frac{7}{4}", "4", False, ""),
    ("1", "0 \\text{ or } 1", False, "hedged answer"),
]


def _response(pred: str) -> str:
    return f"Putting it together, we obtain the result.\n\nTherefore, the final answer is $\\boxed{{{pred}}}$."


def test_table_is_big_enough() -> None:
    assert len(TABLE) >= 60
    assert sum(1 for *_, ok, _ in TABLE if ok) >= 25 and sum(1 for *_, ok, _ in TABLE if not ok) >= 25


@pytest.mark.parametrize(("gold", "pred", "expected", "note"), TABLE, ids=[f"{g}|{p}" for g, p, *_ in TABLE])
def test_answer_pairs(gold: str, pred: str, expected: bool, note: str) -> None:
    if note.startswith(X):
        pytest.xfail(note[len(X) + 2:])
    v = verify_math({"reference": gold, "solution": _response(pred), "timeout_s": 5})
    assert v["correct"] is expected, (v, note)
    assert v["method"] == "math_verify:solution"


def test_gold_is_boxed_only_when_bare() -> None:
    assert gold_text("(3,\\frac{\\pi}{2})") == "\\boxed{(3,\\frac{\\pi}{2})}"
    assert gold_text("$x$") == "$x$"


def test_three_way_verdicts() -> None:
    none = verify_math({"reference": None, "solution": "\\boxed{3}"})
    assert none["correct"] is None and none["error"] == "no reference answer"
    blank = verify_math({"reference": "  ", "solution": "\\boxed{3}"})
    assert blank["correct"] is None
    missing = verify_math({"reference": "3", "solution": "I am not sure."})
    assert missing["correct"] is False and missing["error"] == "no answer found in the response"


def test_thinking_fallback_for_truncated_solution() -> None:
    # a trace whose solution is empty (truncated): the answer is read from the thinking's end
    v = verify_math({"reference": "9", "solution": "", "thinking": "... so there are \\boxed{9} divisors"})
    assert v["correct"] is True and v["method"] == "math_verify:thinking"


def test_lenient_takes_last_expression() -> None:
    text = "Listing them: 1, 2, 4, 7, 14, 28, 49, 98, 196.\n\nTherefore the number of divisors of 196 is 9."
    strict = verify_math({"reference": "9", "solution": text})
    lenient = verify_math({"reference": "9", "solution": text, "lenient": True})  # the operator default
    assert strict["correct"] is False
    assert lenient["correct"] is True and lenient["method"] == "math_verify:unanchored"


def test_agreement_with_simplerl_labels(shared_data) -> None:
    """800 real MATH responses with correctness labels: the verifier agrees on at least 99%."""
    src = read(shared_data / "responses" / "simplerl_math_cot_100.jsonl")
    df = pl.concat([pl.from_arrow(b.traces) for b in src.batches(1000)])
    sample = df[::4]  # 200 rows keep the test quick; the bench runs all 800
    agree = 0
    for row in sample.iter_rows(named=True):
        label = json.loads(row["extra"])["score"]
        v = verify_math({"reference": row["reference_answer"], "solution": row["solution"],
                         "thinking": row["thinking"], "timeout_s": 5})
        agree += v["correct"] is bool(label)
    assert agree / sample.height >= 0.99


def test_answers_too_long_to_search_are_unverifiable_not_wrong() -> None:
    # the answer sits at the start of a 30,000-char solution: beyond the 20,000 chars searched
    long_solution = _response("42") + "\n\nLet me double-check the arithmetic once more." * 700
    assert len(long_solution) > 20_000
    v = verify_math({"reference": "42", "solution": long_solution})
    assert v["correct"] is None and "too long to judge: solution (3" in v["error"]
    huge_answer = verify_math({"reference": "42", "solution": "", "answer": "1+" * 15_000 + "1"})
    assert huge_answer["correct"] is None and "answer (30,001 chars)" in huge_answer["error"]
    found = verify_math({"reference": "42", "solution": "x" * 25_000 + _response("42")})
    assert found["correct"] is True  # an answer in the part searched is judged as before


def test_row_deadline_counts_cpu_time_not_wall_time() -> None:
    """A row's limit is CPU time: waiting (a loaded machine, where the row gets no CPU) does not
    use it up, so verdicts do not depend on load; running does."""
    import time

    from math_verify.errors import TimeoutException

    from curate.ops.verify.math import row_deadline

    with row_deadline(0.3):
        time.sleep(0.6)  # 0.6 s of wall time, no CPU: no timeout
    t0 = time.process_time()
    with pytest.raises(TimeoutException), row_deadline(0.3):
        while time.process_time() - t0 < 5:
            pass
    assert 0.25 < time.process_time() - t0 < 1.0


# --- the two-stage LaTeX parse (curate.ops.verify.latex_fast) -----------------------------------

# real answers and responses' boxed contents from the bench rows: SLL parses most; the first four
# SLL reports as errors and full LL parses; the last two neither parses
TWO_STAGE = [r"\frac{1}{2}", r"(3,\frac{\pi}{2})", "[2,5)", r"\sqrt{2}+1", r"x \in [-2, 7]",
             "x^3+3x-6", "x^5-x^4+x^3-x^2+x-1", r"\sum_{k=1}^{5} a_k", "y_1 = y_2 + b",
             r"\cos \theta = \frac{", "4:30p.."]
SLL_FAILS = 4


def _converted(latex: str) -> str:
    from latex2sympy2_extended.latex2sympy2 import latex2sympy
    from sympy import srepr

    try:
        return srepr(latex2sympy(latex, normalization_config=None))
    except Exception as e:  # noqa: BLE001 - the message must be the same too
        return f"error: {e}"


def test_two_stage_parse_gives_what_full_ll_gives(monkeypatch) -> None:
    """SLL first, LL on a reported error: the same sympy trees and the same errors as
    latex2sympy's own LL-only parser, on strings SLL parses and strings only LL parses."""
    from antlr4.atn.PredictionMode import PredictionMode
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    from curate.ops.verify import latex_fast

    assert _Latex2Sympy.create_parser is not latex_fast.LL_CREATE  # installed by importing math
    two_stage = [_converted(s) for s in TWO_STAGE]
    fails = 0
    for s in TWO_STAGE[:-2]:  # SLL alone, with latex2sympy's raising error listener
        parser = latex_fast.LL_CREATE(_Latex2Sympy(is_real=True), s)
        parser._interp.predictionMode = PredictionMode.SLL
        try:
            parser.math()
        except Exception:  # noqa: BLE001
            fails += 1
    assert fails == SLL_FAILS  # the fallback is exercised
    monkeypatch.setattr(_Latex2Sympy, "create_parser", latex_fast.LL_CREATE)
    assert two_stage == [_converted(s) for s in TWO_STAGE]
    assert sum(t.startswith("error:") for t in two_stage) == 2


def test_two_stage_parse_costs_less_cpu(monkeypatch) -> None:
    """The point of it: on real answers it spends well under the LL parser's CPU time."""
    import gc
    import time

    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    from curate.ops.verify import latex_fast

    def cpu() -> float:
        """The best of three rounds, the collector off: a full collection walking the process's
        heap (sympy, the parser's DFA) in one round is not the parser's cost."""
        gc.collect()
        gc.disable()
        try:
            rounds = []
            for _ in range(3):
                t0 = time.process_time()
                for _ in range(3):
                    for s in TWO_STAGE:
                        _converted(s)
                rounds.append(time.process_time() - t0)
            return min(rounds)
        finally:
            gc.enable()

    cpu()  # both parsers' caches warm
    fast = cpu()
    monkeypatch.setattr(_Latex2Sympy, "create_parser", latex_fast.LL_CREATE)
    cpu()
    assert fast < 0.8 * cpu()


# --- the warm start of the parser's prediction DFA (curate.ops.verify.latex_dfa) ---------------

_VERDICTS = r"""
import json, sys
from antlr4.atn.ParserATNSimulator import ParserATNSimulator
from curate import read
from curate.ops.verify.math import verify_math

computed = 0
reach = ParserATNSimulator.computeReachSet
def counting(self, *args):
    global computed
    computed += 1
    return reach(self, *args)
ParserATNSimulator.computeReachSet = counting
out = []
for path in sys.argv[1:]:
    for batch in read(path).batches(1000):
        for row in batch.traces.to_pylist():
            v = verify_math({"reference": row["reference_answer"], "solution": row["solution"],
                             "thinking": (row["thinking"] or "")[-4000:], "answer": row["answer"],
                             "timeout_s": 30, "lenient": True})
            out.append([v["correct"], v["pred"], v["error"]])
print(json.dumps({"verdicts": out, "computed": computed}))
"""


def _verdicts(files: list[Path], cold: bool) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "CURATE_COLD_LATEX": "1" if cold else "0"}
    proc = subprocess.run([sys.executable, "-c", _VERDICTS, *map(str, files)], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def test_warm_dfa_gives_the_same_verdicts_with_less_parser_prediction() -> None:
    """Real rows (MATH-500 references, not the training answers the DFA was learned from): the same
    verdicts from a cold and a warm process, and the warm one computes ~45% fewer ATN
    reach sets (ANTLR's DFA misses; a count, not a time, so load cannot change it)."""
    real = Path(__file__).resolve().parents[1] / "curate" / "data" / "real"
    files = [real / "responses" / "simplerl_math_cot_100.jsonl.gz",
             real / "traces" / "skythought_correct5k27b_math500.jsonl.gz"]
    cold, warm = _verdicts(files, cold=True), _verdicts(files, cold=False)
    assert len(warm["verdicts"]) == 1300
    assert warm["verdicts"] == cold["verdicts"]
    assert sum(v[0] is True for v in warm["verdicts"]) > 600  # real verdicts, not all errors
    assert warm["computed"] < 0.7 * cold["computed"], (warm["computed"], cold["computed"])  # 808 vs 1,457


def test_shipped_latex_dfa_matches_the_installed_grammar() -> None:
    """The shipped file is loaded under the pinned antlr4 and latex2sympy2_extended; when this fails
    after an upgrade, rebuild it: ``python -m curate.ops.verify.latex_dfa``."""
    import gzip

    from curate.ops.verify import latex_dfa

    with gzip.open(latex_dfa.PATH, "rb") as fh:
        stored = latex_dfa._Unpickler(fh).load()
    assert stored[0] == latex_dfa.key()
    assert sum(len(dfa._states) for dfa in stored[1]) > 500


def test_latex_dfa_round_trip_and_refusals(tmp_path, monkeypatch, caplog) -> None:
    """dump then load gives the same states; a file for another grammar or a damaged one is not
    loaded (parsing starts cold) and never fails the run."""
    from latex2sympy2_extended.antlr_parser import PSParser

    from curate.ops.verify import latex_dfa

    monkeypatch.delenv(latex_dfa.OFF_ENV, raising=False)
    latex_dfa.build([r"\frac{3}{4}", r"(1, \sqrt{2}]", "x^2+1"])
    states = [len(d._states) for d in PSParser.decisionsToDFA]
    path = tmp_path / "dfa.pkl.gz"
    latex_dfa.dump(path)
    assert latex_dfa.load(path)
    assert [len(d._states) for d in PSParser.decisionsToDFA] == states
    assert [_converted(s) for s in TWO_STAGE] == [_converted(s) for s in TWO_STAGE]  # parses after loading

    monkeypatch.setattr(latex_dfa, "key", lambda: "antlr4 0.0; atn other")
    assert not latex_dfa.load(path)
    damaged = tmp_path / "damaged.pkl.gz"
    damaged.write_bytes(path.read_bytes()[:1000])
    assert not latex_dfa.load(damaged)
    assert "could not load" in caplog.text
    monkeypatch.setenv(latex_dfa.OFF_ENV, "1")
    assert not latex_dfa.load(latex_dfa.PATH)
