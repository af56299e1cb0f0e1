"""Format adapters on records shaped exactly like the public datasets, filled with real trace text.

Each layout's record carries real problems and real long-CoT responses from ../shared/data (the
Sky-T1 math traces), rewritten into that dataset's columns and markers; the adapters must detect
the layout, split thinking from solution, strip the markers, keep the source id and reference
answer, and carry every unmapped input field in `extra`.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from curate import InputError, read
from curate.io.formats import FORMATS, detect_format, get_format, parse_input_output
from curate.io.markers import (
    SKY_BEGIN_SOLUTION,
    SKY_BEGIN_THOUGHT,
    SKY_END_SOLUTION,
    SKY_END_THOUGHT,
)

SYSTEM_SKY = (
    "Your role as an assistant involves thoroughly exploring questions through a systematic long "
    "thinking process before providing the final precise and accurate solutions."
)


def sky_parts(text: str) -> tuple[str, str]:
    """Thinking and solution of a closed Sky-T1 response, cut by hand (independent of curate)."""
    thinking = text.split(SKY_BEGIN_THOUGHT, 1)[1].split(SKY_END_THOUGHT, 1)[0].strip()
    solution = text.split(SKY_BEGIN_SOLUTION, 1)[1].split(SKY_END_SOLUTION, 1)[0].strip()
    return thinking, solution


@pytest.fixture(scope="module")
def real(shared_data) -> dict[str, Any]:
    """Real material: closed and truncated Sky-T1 traces with their problems and answers."""
    recs = [json.loads(line) for line in (shared_data / "traces" / "skythought_correct5k27b_math500.jsonl").open()]
    closed = [r for r in recs if SKY_END_THOUGHT in r["code"][0] and SKY_END_SOLUTION in r["code"][0]]
    truncated = [r for r in recs if SKY_BEGIN_THOUGHT in r["code"][0] and SKY_END_THOUGHT not in r["code"][0]]
    return {"closed": closed, "truncated": truncated}


def read_rows(records: list[dict], fmt: str = "auto", **kw) -> tuple[list[dict], list[dict]]:
    src = read(records, format=fmt, **kw)
    traces, rejects = [], []
    for b in src.batches():
        traces += b.traces.to_pylist()
        rejects += b.rejects.to_pylist()
    return traces, rejects


def assert_nothing_lost(rec: dict, row: dict, mapped: set[str]) -> dict:
    """Every input field is either mapped onto a core column or kept verbatim in `extra`."""
    extra = json.loads(row["extra"]) if row["extra"] else {}
    for key, value in rec.items():
        if key in mapped:
            continue
        assert key in extra, f"input field {key!r} was lost"
        assert extra[key] == json.loads(json.dumps(value)), key
    return extra


# --- Sky-T1 / OpenThoughts ---------------------------------------------------------------------


def test_sky_t1_openthoughts_layout(real):
    r = real["closed"][0]
    rec = {"system": SYSTEM_SKY,
           "conversations": [{"from": "user", "value": r["question"]}, {"from": "assistant", "value": r["code"][0]}]}
    assert detect_format(rec).name == "sky-t1"
    (row,), rejects = read_rows([rec])
    assert rejects == []
    thinking, solution = sky_parts(r["code"][0])
    assert row["problem"] == r["question"]
    assert (row["thinking"], row["solution"], row["thinking_closed"]) == (thinking, solution, True)
    assert row["source_id"] is None and row["domain"] == "other"
    extra = assert_nothing_lost(rec, row, {"conversations"})
    assert extra == {"system": SYSTEM_SKY}


def test_sky_t1_truncated_trace(real):
    r = real["truncated"][0]
    rec = {"system": SYSTEM_SKY, "id": "sky-17",
           "conversations": [{"from": "user", "value": r["question"]}, {"from": "assistant", "value": r["code"][0]}]}
    (row,), _ = read_rows([rec], "sky-t1")
    assert row["thinking_closed"] is False and row["solution"] == ""
    assert row["thinking"] == r["code"][0].replace(SKY_BEGIN_THOUGHT, "").strip()
    assert row["source_id"] == "sky-17"


def test_sky_t1_multi_turn_keeps_the_exchange(real):
    r = real["closed"][1]
    convs = [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"},
             {"from": "user", "value": r["question"]}, {"from": "assistant", "value": r["code"][0]}]
    (row,), _ = read_rows([{"system": SYSTEM_SKY, "conversations": convs}])
    assert row["problem"] == "hi"  # the first user turn is the problem ...
    assert json.loads(row["extra"])["conversations"] == convs  # ... and the whole exchange is kept


# --- generic chat messages ---------------------------------------------------------------------


def test_messages_with_think_tags(real):
    r = real["closed"][2]
    thinking, solution = sky_parts(r["code"][0])
    rec = {"id": "m-1", "messages": [
        {"role": "system", "content": "Please reason step by step."},
        {"role": "user", "content": r["question"]},
        {"role": "assistant", "content": f"<think>\n{thinking}\n</think>\n\n{solution}"}]}
    assert detect_format(rec).name == "messages"
    (row,), _ = read_rows([rec])
    assert (row["problem"], row["thinking"], row["solution"]) == (r["question"], thinking, solution)
    assert row["thinking_closed"] is True and row["source_id"] == "m-1"
    assert json.loads(row["extra"]) == {"id": "m-1", "system": "Please reason step by step."}


def test_messages_with_reasoning_content(real):
    r = real["closed"][3]
    thinking, solution = sky_parts(r["code"][0])
    rec = {"messages": [{"role": "user", "content": r["question"]},
                        {"role": "assistant", "content": solution, "reasoning_content": thinking}],
           "source": "deepseek-api"}
    (row,), _ = read_rows([rec], "chat")
    assert (row["thinking"], row["solution"], row["thinking_closed"]) == (thinking, solution, True)
    assert row["source"] == "<memory>"  # `source` is the input's name; the record's own field is kept
    assert json.loads(row["extra"]) == {"source": "deepseek-api"}


def test_messages_without_assistant_is_rejected(real):
    rec = {"messages": [{"role": "user", "content": real["closed"][0]["question"]}]}
    traces, (rej,) = read_rows([rec], "messages")
    assert traces == []
    assert rej["reject_reason"] == "messages: field 'messages': no message with role 'assistant'"


# --- Qwen2.5-Math / SkyThought evaluation harness -----------------------------------------------


def test_harness_real_file_one_trace_per_response(shared_data):
    path = shared_data / "responses" / "simplerl_math_cot_100.jsonl"
    first = json.loads(path.open().readline())
    assert detect_format(first).name == "harness"
    rows = read(path).to_polars()
    assert rows.height == 800  # 100 problems x 8 sampled responses
    head = rows.head(8).to_dicts()
    for k, row in enumerate(head):
        assert row["source_id"] == f"{first['idx']}:{k}"
        assert row["problem"] == first["question"]
        # markerless: the reasoning is the thinking, the closing answer paragraph the solution
        text = first["code"][k].strip()
        assert row["solution"] and text.endswith(row["solution"]) and text.startswith(row["thinking"])
        assert len(row["thinking"]) + len(row["solution"]) <= len(text)
        assert row["reference_answer"] == first["gt"] == "420"
        extra = json.loads(row["extra"])
        # per-response lists are sliced to this response; everything else is kept whole
        assert extra["pred"] == first["pred"][k] and extra["score"] == first["score"][k]
        assert extra["pred_score"] == first["pred_score"][k] and extra["response_index"] == k
        assert extra["response"] == first["response"][k]
        for key in ("idx", "gt_cot", "level", "solution", "answer", "system", "query", "history"):
            assert extra[key] == first[key]
    assert set(rows["domain"]) == {"math"}
    assert rows["source"].unique().to_list() == ["simplerl_math_cot_100"]


HARNESS_FILES = ["traces/skythought_correct5k27b_math500.jsonl", "traces/skythought_correct5k27b_minerva.jsonl",
                 "traces/skythought_correct5k32b_ckpt140_aime24.jsonl",
                 "traces/skythought_correct5k32bshort_olympiadbench.jsonl",
                 "traces/skythought_corrupt07_32b_amc23.jsonl", "traces/skythought_reflection10_32b_aime24.jsonl",
                 "responses/simplerl_math_cot_100.jsonl"]


@pytest.mark.parametrize("name", HARNESS_FILES)
def test_harness_real_files_lose_nothing(shared_data, name):
    recs = [json.loads(line) for line in (shared_data / name).open()]
    rows = read(shared_data / name).to_polars().to_dicts()
    assert len(rows) == sum(len(r["code"]) for r in recs)
    it = iter(rows)
    for rec in recs:
        n = len(rec["code"])
        sliced = {k for k in ("pred", "score", "report", "pred_score", "response") if k in rec}
        for k in range(n):
            row = next(it)
            extra = assert_nothing_lost({key: v for key, v in rec.items() if key not in sliced}, row,
                                        {"question", "code", "gt"})
            assert {key: extra[key] for key in sliced} == {key: rec[key][k] for key in sliced}
            assert row["problem"] == rec["question"] and row["reference_answer"] == rec["gt"]
            assert row["source_id"] == f"{rec['idx']}:{k}" and extra["response_index"] == k
            if "solution" in rec and isinstance(rec["solution"], list):
                # a one-element list that is not per-response (OlympiadBench's solutions) stays a list
                assert extra["solution"] == rec["solution"]


@pytest.mark.parametrize(("name", "closed", "truncated", "unmarked"), [
    ("skythought_correct5k27b_math500.jsonl", 196, 94, 210),
    ("skythought_correct5k27b_minerva.jsonl", 104, 43, 125),
    ("skythought_correct5k32b_ckpt140_aime24.jsonl", 19, 11, 0),
    ("skythought_corrupt07_32b_amc23.jsonl", 37, 3, 0),
    ("skythought_reflection10_32b_aime24.jsonl", 17, 13, 0),
    ("skythought_correct5k32bshort_olympiadbench.jsonl", 0, 0, 675),  # short CoT, no markers
])
def test_harness_traces_thinking_closed_counts(shared_data, name, closed, truncated, unmarked):
    rows = read(shared_data / "traces" / name).to_polars()
    counts = rows["thinking_closed"].value_counts()
    got = {k: v for k, v in zip(counts["thinking_closed"], counts["count"], strict=True)}
    assert got.get(True, 0) == closed and got.get(False, 0) == truncated and got.get(None, 0) == unmarked
    trunc = rows.filter(rows["thinking_closed"].eq(False))
    assert (trunc["solution"] == "").all() and (trunc["thinking"].str.len_chars() > 50).all()
    for col in ("thinking", "solution"):
        for marker in (SKY_BEGIN_THOUGHT, SKY_END_THOUGHT, SKY_BEGIN_SOLUTION, SKY_END_SOLUTION):
            assert not rows[col].str.contains(marker, literal=True).any()


# --- OpenR1-Math ---------------------------------------------------------------------------------


def openr1_record(r_closed: dict, r_trunc: dict) -> dict:
    thinking, solution = sky_parts(r_closed["code"][0])
    gen0 = f"<think>\n{thinking}\n</think>\n\n{solution}"
    gen1 = "<think>\n" + r_trunc["code"][0].replace(SKY_BEGIN_THOUGHT, "").strip()
    return {
        "problem": r_closed["question"],
        "solution": r_closed["solution"],
        "answer": r_closed["gt"],
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "source": "olympiads",
        "uuid": "0a8a1c3e-5b3f-5c5e-9b7a-3f2f3c1d2e4f",
        "is_reasoning_complete": [True, False],
        "generations": [gen0, gen1],
        "correctness_math_verify": [True, False],
        "correctness_llama": None,
        "finish_reasons": ["stop", "length"],
        "correctness_count": 1,
        "messages": [{"content": r_closed["question"], "role": "user"}, {"content": gen0, "role": "assistant"}],
    }


def test_openr1_math_layout(real):
    rec = openr1_record(real["closed"][0], real["truncated"][0])
    # OpenR1-Math rows also carry `messages`: they must not be taken for generic chat rows
    assert detect_format(rec).name == "openr1"
    rows, rejects = read_rows([rec])
    assert rejects == [] and len(rows) == 2
    thinking, solution = sky_parts(real["closed"][0]["code"][0])
    a, b = rows
    assert (a["thinking"], a["solution"], a["thinking_closed"], a["finish_reason"]) == (thinking, solution, True, "stop")
    assert b["thinking_closed"] is False and b["finish_reason"] == "length" and b["solution"] == ""
    assert b["thinking"] == real["truncated"][0]["code"][0].replace(SKY_BEGIN_THOUGHT, "").strip()
    assert [r["source_id"] for r in rows] == [f"{rec['uuid']}:0", f"{rec['uuid']}:1"]
    assert {r["reference_answer"] for r in rows} == {real["closed"][0]["gt"]}
    assert {r["domain"] for r in rows} == {"math"}
    for k, row in enumerate(rows):
        extra = assert_nothing_lost(
            {k2: v for k2, v in rec.items() if k2 not in ("is_reasoning_complete", "correctness_math_verify", "finish_reasons")},
            row, {"problem", "generations", "answer"})
        assert extra["correctness_math_verify"] == rec["correctness_math_verify"][k]
        assert extra["is_reasoning_complete"] == rec["is_reasoning_complete"][k]
        assert extra["generation_index"] == k
        assert extra["messages"] == rec["messages"]  # two generations, two messages: not sliced


# --- s1K ------------------------------------------------------------------------------------------


def test_s1k_layout(real):
    r = real["closed"][4]
    thinking, solution = sky_parts(r["code"][0])
    rec = {
        "solution": r["gt"],
        "question": r["question"],
        "cot_type": "math",
        "source_type": "qfq/openaimath/Algebra",
        "metadata": "{'answer': '" + r["gt"] + "', 'subject': 'Algebra', 'level': 2}",
        "cot": None,
        "thinking_trajectories": [thinking],
        "attempt": solution,
    }
    assert detect_format(rec).name == "s1k"
    (row,), _ = read_rows([rec])
    assert (row["thinking"], row["solution"], row["thinking_closed"]) == (thinking, solution, True)
    assert row["reference_answer"] == r["gt"] and row["domain"] == "math"
    extra = assert_nothing_lost(rec, row, {"question", "thinking_trajectories", "attempt", "solution"})
    assert extra["cot"] is None and extra["source_type"] == "qfq/openaimath/Algebra"


def test_s1k_1_1_deepseek_columns(real):
    r = real["closed"][5]
    thinking, solution = sky_parts(r["code"][0])
    rec = {"solution": r["gt"], "question": r["question"], "cot_type": "crossword", "source_type": "crossword",
           "metadata": "{}", "gemini_thinking_trajectory": "g-think", "gemini_attempt": "g-attempt",
           "deepseek_thinking_trajectory": thinking, "deepseek_attempt": solution,
           "gemini_grade": "Yes", "gemini_grade_reason": "ok", "deepseek_grade": "Yes", "deepseek_grade_reason": "ok"}
    assert detect_format(rec).name == "s1k"
    (row,), _ = read_rows([rec])
    assert (row["thinking"], row["solution"], row["teacher"]) == (thinking, solution, "deepseek-r1")
    assert row["domain"] == "puzzle"
    assert_nothing_lost(rec, row, {"question", "deepseek_thinking_trajectory", "deepseek_attempt", "solution"})


# --- LIMO ---------------------------------------------------------------------------------------


def test_limo_layout(real):
    r = real["closed"][6]
    thinking, solution = sky_parts(r["code"][0])
    long_solution = f"{thinking}\n\n**Final Answer**\n\\[ \\boxed{{{r['gt']}}} \\]"
    rec = {"question": r["question"], "solution": long_solution, "answer": r["gt"]}
    assert detect_format(rec).name == "limo"
    (row,), _ = read_rows([rec])
    # LIMO's solution is the whole long reasoning: the thinking, but for its final answer paragraph
    assert row["thinking"] == thinking.strip() and row["solution"] == f"**Final Answer**\n\\[ \\boxed{{{r['gt']}}} \\]"
    assert row["reference_answer"] == r["gt"] and row["domain"] == "math" and row["extra"] is None


def test_limo_numeric_answer_is_text_and_original_kept(real):
    r = real["closed"][7]
    rec = {"question": r["question"], "solution": r["code"][0], "answer": 42}
    (row,), _ = read_rows([rec], "limo")
    assert row["reference_answer"] == "42" and json.loads(row["extra"]) == {"answer": 42}
    assert (row["thinking"], row["solution"]) == sky_parts(r["code"][0])  # markers honoured


# --- APPS / TACO --------------------------------------------------------------------------------

APPS_QUESTION = (
    "Polycarp has $n$ coins, the value of the $i$-th coin is $a_i$. He wants to distribute all the "
    "coins into pockets so that no two coins of the same value are in one pocket. Print the minimum "
    "number of pockets.\n\n-----Input-----\n\nThe first line contains $n$, the second $a_1, \\dots, a_n$."
    "\n\n-----Output-----\n\nPrint one integer."
)
APPS_SOLUTIONS = [
    "from collections import Counter\nn = int(input())\nprint(max(Counter(input().split()).values()))\n",
    "n=int(input())\na=list(map(int,input().split()))\nprint(max(a.count(x) for x in a))",
]


def test_apps_stdin_layout():
    rec = {"problem_id": 4021, "question": APPS_QUESTION, "solutions": json.dumps(APPS_SOLUTIONS),
           "input_output": json.dumps({"inputs": ["6\n1 2 4 3 3 2\n", "1\n100\n"], "outputs": ["2\n", "1\n"]}),
           "difficulty": "introductory", "url": "https://codeforces.com/problemset/problem/1003/A",
           "starter_code": ""}
    assert detect_format(rec).name == "apps"
    rows, _ = read_rows([rec])
    assert len(rows) == 2
    for k, row in enumerate(rows):
        assert row["domain"] == "code" and row["thinking"] == ""
        assert row["solution"] == f"```python\n{APPS_SOLUTIONS[k].strip()}\n```"
        assert row["test_cases"] == [{"input": "6\n1 2 4 3 3 2\n", "output": "2\n"}, {"input": "1\n100\n", "output": "1\n"}]
        assert row["test_fn_name"] is None and row["source_id"] == f"4021:{k}"
        extra = assert_nothing_lost(rec, row, {"question", "solutions", "input_output"})
        assert extra["solution_index"] == k


def test_taco_call_based_layout():
    rec = {"question": "Write a function `add(a, b)` that returns the sum of a and b.",
           "solutions": json.dumps(["def add(a, b):\n    return a + b"]),
           "starter_code": "def add(a, b):\n\t", "input_output": json.dumps(
               {"fn_name": "add", "inputs": [[1, 2], [-1, 1]], "outputs": [[3], [0]]}),
           "difficulty": "EASY", "raw_tags": "['Fundamentals']", "name": None, "source": "codewars",
           "tags": "['Fundamentals']", "skill_types": "[]", "url": "https://www.codewars.com/kata/x",
           "Expected Auxiliary Space": None, "time_limit": None, "date": None, "picture_num": None,
           "memory_limit": None, "Expected Time Complexity": None}
    (row,), _ = read_rows([rec], "taco")
    assert row["test_fn_name"] == "add"
    assert row["test_cases"] == [{"input": "[1, 2]", "output": "[3]"}, {"input": "[-1, 1]", "output": "[0]"}]
    assert row["source_id"] is None  # TACO rows have no id column
    assert_nothing_lost(rec, row, {"question", "solutions", "input_output"})


def test_apps_bad_input_output_and_empty_solutions():
    base = {"problem_id": 1, "question": APPS_QUESTION, "difficulty": "interview", "url": "u", "starter_code": ""}
    bad_io = {**base, "solutions": json.dumps(APPS_SOLUTIONS), "input_output": "{not json"}
    no_sol = {**base, "problem_id": 2, "solutions": "", "input_output": ""}
    uneven = {**base, "problem_id": 3, "solutions": json.dumps(APPS_SOLUTIONS),
              "input_output": json.dumps({"inputs": ["1\n"], "outputs": []})}
    traces, rejects = read_rows([bad_io, no_sol, uneven], "apps")
    assert traces == []
    reasons = [r["reject_reason"] for r in rejects]
    assert reasons[0].startswith("apps: field 'input_output': not valid JSON")
    assert reasons[1] == "apps: field 'solutions': empty: no program to make a trace from"
    assert reasons[2] == "apps: field 'input_output': 1 inputs but 0 outputs"
    assert parse_input_output("") == ([], None)


# --- raw R1 ---------------------------------------------------------------------------------------


def test_raw_r1_layout(real):
    r = real["closed"][8]
    thinking, solution = sky_parts(r["code"][0])
    rec = {"problem": r["question"], "response": f"{thinking}\n</think>\n\n{solution}",  # no opening tag
           "answer": r["gt"], "model": "deepseek-reasoner", "finish_reason": "stop", "id": "r1-8"}
    assert detect_format(rec).name == "r1"
    (row,), _ = read_rows([rec])
    assert (row["thinking"], row["solution"], row["thinking_closed"]) == (thinking, solution, True)
    assert row["teacher"] == "deepseek-reasoner" and row["finish_reason"] == "stop"
    assert row["reference_answer"] == r["gt"] and row["source_id"] == "r1-8"
    assert_nothing_lost(rec, row, {"problem", "response", "answer"})


# --- curate's own layout and detection rules ------------------------------------------------------


def test_curate_layout_round_trip(real):
    r = real["closed"][9]
    thinking, solution = sky_parts(r["code"][0])
    rec = {"problem": r["question"], "thinking": thinking, "solution": solution, "answer": r["gt"],
           "reference_answer": r["gt"], "domain": "math", "source_id": "7", "thinking_closed": True,
           "extra": json.dumps({"level": 2}), "verify_correct": True}
    assert detect_format(rec).name == "curate"
    (row,), _ = read_rows([rec])
    assert (row["thinking"], row["solution"], row["answer"], row["source_id"]) == (thinking, solution, r["gt"], "7")
    assert json.loads(row["extra"]) == {"level": 2, "verify_correct": True}


def test_plain_problem_solution_rows_are_not_taken_for_traces(shared_data):
    # MATH-style rows (problem, solution = reference solution, answer) are not teacher traces
    path = shared_data / "benchmarks" / "simplerl_math500_test.jsonl"
    rec = json.loads(path.open().readline())
    assert detect_format(rec) is None
    with pytest.raises(InputError, match=r"cannot detect the trace format from the record keys \[problem, solution"):
        read(path).to_polars()


def test_every_format_is_documented_and_aliases_resolve():
    assert list(FORMATS) == ["sky-t1", "openr1", "harness", "s1k", "apps", "messages", "curate", "r1", "limo"]
    assert all(f.description for f in FORMATS.values())
    for alias, name in {"openthoughts": "sky-t1", "taco": "apps", "chat": "messages", "s1k-1.1": "s1k"}.items():
        assert get_format(alias).name == name
    with pytest.raises(KeyError, match="unknown format 'sharegpt'"):
        get_format("sharegpt")


def test_hf_nested_types_through_arrow(real):
    """The same Sky-T1 rows as an Arrow table (list<struct<from, value>>), as HF parquet holds them."""
    r = real["closed"][10]
    table = pa.table({
        "system": [SYSTEM_SKY],
        "conversations": [[{"from": "user", "value": r["question"]}, {"from": "assistant", "value": r["code"][0]}]],
    })
    (row,), _ = read_rows(table)  # type: ignore[arg-type]
    assert (row["thinking"], row["solution"]) == sky_parts(r["code"][0])


def test_code_tests_in_any_layout_become_test_cases(tmp_path):
    """APPS-style plain rows, OpenThoughts `test_cases` and CodeContests splits all map to test_cases."""
    import json as _json

    from curate import read as _read

    program = "```python\nprint(int(input()) * 2)\n```"
    rows = [
        {"problem": "Double it.", "thinking": "Multiply by two.", "solution": program, "id": "ot-1",
         "test_cases": _json.dumps({"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"]})},
        {"problem": "Double it again.", "thinking": "Times two.", "solution": program, "id": "cc-1",
         "public_tests": {"input": ["3\n"], "output": ["6\n"]}, "private_tests": {"input": ["4\n"], "output": ["8\n"]}},
    ]
    df = _read(rows, format="curate").to_polars()
    assert df["domain"].to_list() == ["code", "code"]
    assert df["test_cases"].to_list()[0] == [{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10\n"}]
    assert df["test_cases"].to_list()[1] == [{"input": "3\n", "output": "6\n"}, {"input": "4\n", "output": "8\n"}]
    assert all("tests" not in (e or "") for e in df["extra"].to_list())
