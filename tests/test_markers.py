"""Splitting responses into thinking / solution on the real Sky-T1 traces, and joining them back."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from curate.io.markers import (
    SKY_BEGIN_SOLUTION,
    SKY_BEGIN_THOUGHT,
    SKY_END_SOLUTION,
    SKY_END_THOUGHT,
    join_response,
    split_response,
)

ALL_MARKERS = (SKY_BEGIN_THOUGHT, SKY_END_THOUGHT, SKY_BEGIN_SOLUTION, SKY_END_SOLUTION, "<think>", "</think>")


@pytest.fixture(scope="module")
def math500_responses(shared_data) -> list[str]:
    path = shared_data / "traces" / "skythought_correct5k27b_math500.jsonl"
    return [json.loads(line)["code"][0] for line in path.open()]


def test_real_traces_split_by_marker_kind(math500_responses):
    kinds = Counter()
    for text in math500_responses:
        thinking, solution, closed, style = split_response(text)
        kinds[(style, closed)] += 1
        assert not any(m in thinking or m in solution for m in ALL_MARKERS)
        if style == "sky-t1" and closed:
            # closed block: the thinking is exactly what lies between the thought markers
            body = text.split(SKY_END_THOUGHT)[0].split(SKY_BEGIN_THOUGHT)[-1]
            assert thinking == body.strip()
            after = text.split(SKY_END_THOUGHT, 1)[1]
            assert solution == after.replace(SKY_BEGIN_SOLUTION, "").replace(SKY_END_SOLUTION, "").strip()
        if closed is False:
            assert solution == "" and thinking == text.replace(SKY_BEGIN_THOUGHT, "").strip()
        if style == "none":
            # QwQ-style markerless response: the reasoning is the thinking, the answer paragraph the solution
            assert thinking and solution and closed is None
            body = text.strip()
            assert body.startswith(thinking) and body.endswith(solution)
            assert not body[len(thinking):len(body) - len(solution)].strip()  # no text lost between them
            assert "\n\n" not in solution or "boxed" in solution or "Final Answer" in solution
    # counted independently from the file: 196 closed, 94 truncated (no end marker), 210 unmarked
    assert kinds == Counter({("sky-t1", True): 196, ("none", None): 210, ("sky-t1", False): 94})


def test_truncated_real_trace_keeps_all_text(math500_responses):
    truncated = [t for t in math500_responses if SKY_BEGIN_THOUGHT in t and SKY_END_THOUGHT not in t]
    assert len(truncated) == 94
    longest = max(truncated, key=len)
    thinking, solution, closed, _ = split_response(longest)
    assert closed is False and solution == ""
    assert len(thinking) == len(longest.replace(SKY_BEGIN_THOUGHT, "").strip()) > 10_000
    assert thinking.endswith("But I'm not sure")  # cut mid-thought


def test_solution_without_end_marker_is_kept(math500_responses):
    # 16 real responses open a solution block and stop before <|end_of_solution|>
    cut = [t for t in math500_responses if SKY_BEGIN_SOLUTION in t and SKY_END_SOLUTION not in t
           and SKY_BEGIN_THOUGHT in t]
    assert len(cut) == 16
    for text in cut:
        _, solution, closed, _ = split_response(text)
        assert closed is True and solution == text.split(SKY_BEGIN_SOLUTION, 1)[1].strip()


def test_think_tags_with_and_without_opening_tag():
    r1 = "<think>\nLet x = 2. Then 2x = 4.\n</think>\n\nThe answer is $\\boxed{4}$."
    assert split_response(r1) == ("Let x = 2. Then 2x = 4.", "The answer is $\\boxed{4}$.", True, "think")
    # R1 output usually lacks the opening tag (it is in the chat template)
    assert split_response(r1.removeprefix("<think>\n")) == split_response(r1)
    cut = "<think>\nLet x = 2. Then"
    assert split_response(cut) == ("Let x = 2. Then", "", False, "think")


def test_text_outside_markers_is_not_dropped():
    text = f"Preface.{SKY_BEGIN_THOUGHT}\n\nthink\n\n{SKY_END_THOUGHT}\nbetween\n{SKY_BEGIN_SOLUTION}\nsol\n{SKY_END_SOLUTION}\ntail"
    thinking, solution, closed, _ = split_response(text)
    assert thinking == "Preface.\n\nthink"
    assert "between" in solution and "sol" in solution and solution.endswith("tail")
    stray = "<think>a</think>b</think>c"
    assert split_response(stray)[:2] == ("a", "bc")


@pytest.mark.parametrize("style", ["think", "sky-t1"])
def test_join_then_split_round_trips_real_traces(math500_responses, style):
    for text in math500_responses[:200]:
        thinking, solution, closed, _ = split_response(text)
        back = split_response(join_response(thinking, solution, style, closed))
        assert back.thinking == thinking and back.solution == solution
        if closed is not None:
            assert back.closed is closed


def test_join_rejects_unknown_style():
    with pytest.raises(ValueError, match="unknown marker style 'xml'"):
        join_response("a", "b", "xml")


def test_markerless_response_is_reasoning_plus_answer_paragraph(math500_responses):
    """QwQ-style responses carry no markers: the last paragraph with the boxed answer (and its
    "Final Answer" heading) is the solution, everything before it the thinking."""
    plain = [t for t in math500_responses if SKY_BEGIN_THOUGHT not in t and SKY_END_THOUGHT not in t]
    assert len(plain) == 210
    splits = [split_response(t) for t in plain]
    assert all(s.thinking and s.solution for s in splits)
    assert sum(len(s.thinking) for s in splits) > 20 * sum(len(s.solution) for s in splits)
    boxed = [s for t, s in zip(plain, splits) if "\\boxed" in t.rsplit("\n\n", 3)[-1]]
    assert boxed and all("\\boxed" in s.solution for s in boxed)
    heading = [s for s in splits if s.solution.startswith("**Final Answer**")]
    assert len(heading) > 10 and all(s.solution.count("\n\n") == 1 for s in heading)  # heading + answer
    # a one-paragraph answer has no reasoning to separate
    assert split_response("The answer is 4.") == ("", "The answer is 4.", None, "none")
    # joining back (style none) and splitting again gives the same parts
    for s in splits[:50]:
        again = split_response(join_response(s.thinking, s.solution, "none", None))
        assert (again.thinking, again.solution) == (s.thinking, s.solution)


def test_boxed_paragraph_rule_on_generated_responses():
    """The solution paragraph is found by one scan of the text: on generated markerless responses
    (boxed answers early, late, split across a paragraph break, "Final Answer" headings, Unicode
    spaces) it is the paragraph the rule names, found here paragraph by paragraph."""
    import random
    import re

    from curate.io.markers import _ANSWER_HEADING, _BOXED, _PARAGRAPH_BREAK, ANSWER_LOOKBACK

    def by_paragraph(text: str) -> tuple[str, str]:
        body = text.strip()
        starts = [0] + [m.end() for m in _PARAGRAPH_BREAK.finditer(body) if m.end() < len(body)]
        if len(starts) < 2:
            return "", body
        ends = [*starts[1:], len(body)]
        boxed = [i for i, (a, b) in enumerate(zip(starts, ends)) if _BOXED.search(body, a, b)]
        k = boxed[-1] if boxed and boxed[-1] >= len(starts) - ANSWER_LOOKBACK else len(starts) - 1
        if k > 0 and _ANSWER_HEADING.match(body[starts[k - 1]:ends[k - 1]].strip()):
            k -= 1
        return body[:starts[k]].strip(), body[starts[k]:].strip()

    rng = random.Random(7)
    bits = ["So x = 2.", "\\boxed{4}", "\\boxed\n\n{5}", "\\fbox {6}", "\\boxed \t{7}", "**Final Answer**",
            "Answer:", "\\boxed", "{", "\u3000", "\u00a0", "text", "$x^2$", "\\\\boxed{8}"]
    seps = ["\n\n", "\n \n", "\n\t\n  ", " ", "\n", "\u2028\n\n", ""]
    texts = ["".join(rng.choice(bits) + rng.choice(seps) for _ in range(rng.randint(1, 12))) for _ in range(5000)]
    assert sum(bool(re.search(r"\\boxed\s*\n[ \t]*\n\s*\{", t)) for t in texts) > 100  # boxed across a break
    for text in texts:
        got = split_response(text) if not any(m in text for m in ALL_MARKERS) else None
        if got is not None:
            assert (got.thinking, got.solution) == by_paragraph(text), text
