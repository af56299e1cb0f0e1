"""Multiple choice: letters from the endings science traces really use, on real GPQA questions."""

from __future__ import annotations

import pytest

from curate.ops.verify.mcq import extract_letter, gold_letter, verify_mcq


@pytest.fixture(scope="module")
def gpqa(gpqa_rows) -> list[dict]:
    return gpqa_rows[:5]


@pytest.mark.parametrize(("ending", "letter"), [
    ("so the answer is \\boxed{B}.", "B"),
    ("Therefore the final answer is $\\boxed{\\text{(C)}}$", "C"),
    ("\\boxed{D. 10^{-11} ev}", "D"),
    ("The correct answer is (A).", "A"),
    ("Answer: C", "C"),
    ("The correct option is **D**", "D"),
    ("A is ruled out by the lifetimes, so B.\n\n**B**", "B"),
    ("I cannot decide between the options.", None),
])
def test_letter_endings(ending: str, letter: str | None) -> None:
    assert extract_letter("Let me compare the options one by one.\n\n" + ending)[0] == letter


def test_gold_from_letter_or_option_text(gpqa) -> None:
    q = gpqa[0]["question"]  # options "A. 10^-4 ev" ... "D. 10^-11 ev"
    assert gold_letter(gpqa[0]["answer"], q) == "A"
    assert gold_letter("(b)") == "B"
    assert gold_letter("10^-8 ev", q) == "B"
    assert gold_letter("7 eV", q) is None


def test_verdicts_on_gpqa(gpqa) -> None:
    for row in gpqa:
        gold = row["answer"]
        wrong = "B" if gold != "B" else "C"
        right = verify_mcq({"reference": gold, "problem": row["question"],
                            "solution": f"Weighing the options, the answer is \\boxed{{{gold}}}"})
        assert right["correct"] is True and right["gold"] == gold and right["method"] == "mcq:solution:boxed"
        bad = verify_mcq({"reference": gold, "problem": row["question"],
                          "solution": f"The correct answer is ({wrong})."})
        assert bad["correct"] is False and bad["pred"] == wrong
    thinking_only = verify_mcq({"reference": "A", "problem": gpqa[0]["question"], "solution": "",
                                "thinking": "... so the answer is A"})
    assert thinking_only["correct"] is True and thinking_only["method"] == "mcq:thinking:anchored"
    none = verify_mcq({"reference": "A", "problem": gpqa[0]["question"], "solution": "Not sure."})
    assert none["correct"] is False and none["error"] == "no option letter found in the response"
    bad_gold = verify_mcq({"reference": "7 eV", "problem": gpqa[0]["question"], "solution": "\\boxed{A}"})
    assert bad_gold["correct"] is None and "not an option letter" in bad_gold["error"]
