"""Format adapters: map the record layouts real trace datasets use onto trace schema v1.

An adapter turns one input record (a dict) into one or more *draft* traces: dicts with
``problem``, either ``response`` (split into thinking/solution by the markers) or
``thinking``/``solution``, and optionally ``reference_answer``, ``source_id``, ``domain``,
``teacher``, ``test_cases``, ``test_fn_name``, ``finish_reason``. ``_fields`` names the input
fields the problem and response came from, so the reader's errors name the user's field
(``question``, ``code[3]``) rather than ours. Every record field the adapter does not map verbatim
goes to ``extra``, so nothing in the input is lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from curate.errors import RowError, json_error_text

Draft = dict[str, Any]

PROBLEM_KEYS = ("problem", "question", "prompt", "instruction", "input", "query")
RESPONSE_KEYS = ("response", "output", "completion", "generation", "model_output", "content")
ID_KEYS = ("id", "uuid", "idx", "problem_id", "unique_id", "task_id")
REFERENCE_KEYS = ("reference_answer", "gt", "answer", "final_answer", "ground_truth")

# Per-sample lists the evaluation harness writes next to `code` (one entry per sampled response).
HARNESS_PER_RESPONSE = ("pred", "score", "report", "pred_score", "response", "finish_reason",
                        "finish_reasons", "stop_reason", "correct", "correctness")
# Per-generation lists in OpenR1-Math rows (one entry per element of `generations`).
OPENR1_PER_GENERATION = ("finish_reasons", "correctness_math_verify", "correctness_llama",
                         "is_reasoning_complete", "generation_token_length")


def _str(rec: dict, key: str, *, required: bool = True, where: str | None = None) -> str | None:
    """A string field, with a RowError naming it when it is missing or of the wrong type."""
    name = where or key
    if key not in rec or rec[key] is None:
        if required:
            raise RowError(name, "missing")
        return None
    value = rec[key]
    if not isinstance(value, str):
        raise RowError(name, f"expected a string, got {type(value).__name__}")
    return value


def _list(rec: dict, key: str) -> list:
    if key not in rec or rec[key] is None:
        raise RowError(key, "missing")
    value = rec[key]
    if not isinstance(value, list):
        raise RowError(key, f"expected a list, got {type(value).__name__}")
    return value


def _first_key(rec: dict, keys: tuple[str, ...]) -> str | None:
    for k in keys:  # a loop, not next(genexpr): called for every record
        if rec.get(k) is not None:
            return k
    return None


def _id_of(rec: dict) -> str | None:
    key = _first_key(rec, ID_KEYS)
    return None if key is None else str(rec[key])


def _answer_text(value: Any) -> str | None:
    """Reference answers come as strings, numbers or one-element lists (OlympiadBench, AIME 25)."""
    if value is None:
        return None
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else None
    return str(value)


def _rest(rec: dict, used: set[str]) -> dict:
    return {k: v for k, v in rec.items() if k not in used}


def _keep_reference(rec: dict, key: str | None, extra: dict) -> None:
    """A non-string reference answer is flattened to text; keep the original value in ``extra``."""
    if key is not None and rec.get(key) is not None and not isinstance(rec[key], str):
        extra[key] = rec[key]


def _sliced(rec: dict, keys: tuple[str, ...], n: int, skip: str) -> list[str]:
    """The per-sample list fields of a record: known names whose list has one entry per sample.

    A list in record order, never a set: set order changes between processes, and `extra` must
    be byte-identical in every run (a resumed run is compared with an uninterrupted one).
    """
    return [k for k in rec if k in keys and k != skip and isinstance(rec[k], list) and len(rec[k]) == n]


def parse_input_output(value: Any) -> tuple[list[dict[str, str]], str | None]:
    """APPS/TACO ``input_output`` (JSON string or dict with inputs, outputs, optional fn_name).

    Call-based tests (a ``fn_name``) keep each input/output JSON-encoded; stdin tests keep text.
    """
    if value is None:
        return [], None
    if isinstance(value, str):
        if not value.strip():
            return [], None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError("input_output", f"not valid JSON ({json_error_text(e)})") from None
    if not isinstance(value, dict):
        raise RowError("input_output", f"expected an object, got {type(value).__name__}")
    inputs, outputs = value.get("inputs") or [], value.get("outputs") or []
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RowError("input_output", "inputs and outputs must be lists")
    if len(inputs) != len(outputs):
        raise RowError("input_output", f"{len(inputs)} inputs but {len(outputs)} outputs")
    fn_name = value.get("fn_name")
    if fn_name is not None and not isinstance(fn_name, str):
        raise RowError("input_output", f"fn_name must be a string, got {type(fn_name).__name__}")

    def enc(v: Any) -> str:
        return v if isinstance(v, str) and not fn_name else json.dumps(v, ensure_ascii=False)

    return [{"input": enc(i), "output": enc(o)} for i, o in zip(inputs, outputs, strict=True)], fn_name


# --- test cases, whatever layout the record uses ----------------------------------------------
# APPS / TACO `input_output` and OpenThoughts `test_cases`: a JSON string (or dict) with inputs,
# outputs, optional fn_name; CodeContests `public_tests` / `private_tests` / `generated_tests`:
# dicts of parallel `input` / `output` lists (stdin/stdout).

CODECONTESTS_KEYS = ("public_tests", "private_tests", "generated_tests")


def _codecontests(rec: dict[str, Any], keys: tuple[str, ...]) -> list[dict[str, str]]:
    tests = []
    for key in keys:
        block = rec.get(key)
        if isinstance(block, str):
            try:
                block = json.loads(block) if block.strip() else None
            except json.JSONDecodeError as e:
                raise RowError(key, f"not valid JSON ({e.msg})") from None
        if not block:
            continue
        inputs, outputs = block.get("input") or [], block.get("output") or []
        if len(inputs) != len(outputs):
            raise RowError(key, f"{len(inputs)} inputs but {len(outputs)} outputs")
        tests += [{"input": str(i), "output": str(o)} for i, o in zip(inputs, outputs)]
    return tests


def tests_from_record(rec: dict[str, Any], codecontests_keys: tuple[str, ...] = CODECONTESTS_KEYS
                      ) -> tuple[list[dict[str, str]], str | None]:
    """(tests, fn_name) from whichever test layout ``rec`` uses; ([], None) when it has none."""
    for key in ("input_output", "test_cases"):
        value = rec.get(key)
        if value is not None and (not isinstance(value, str) or value.strip()):
            if isinstance(value, list):  # already in schema shape
                return [{"input": str(t["input"]), "output": str(t["output"])} for t in value], rec.get("test_fn_name")
            return parse_input_output(value)
    if any(rec.get(k) for k in codecontests_keys):
        return _codecontests(rec, codecontests_keys), None
    return [], None


TEST_KEYS = ("input_output", "test_cases", *CODECONTESTS_KEYS)
_TEST_KEY_SET = frozenset(TEST_KEYS)


def convert_record(fmt: Format, rec: dict) -> list[Draft]:
    """``fmt.convert`` plus the record's code tests, in any layout, for drafts that lack them.

    A record with tests is code unless it says otherwise; the mapped test fields leave ``extra``.
    """
    drafts = fmt.convert(rec)
    if _TEST_KEY_SET.isdisjoint(rec) or not any(rec.get(k) for k in TEST_KEYS):
        return drafts
    tests, fn_name = tests_from_record(rec)
    for draft in drafts:
        if draft.get("test_cases"):
            continue
        draft["test_cases"], draft["test_fn_name"] = tests, draft.get("test_fn_name") or fn_name
        draft["domain"] = draft.get("domain") or "code"
        extra = draft.get("extra") or {}
        for key in TEST_KEYS:
            extra.pop(key, None)
        draft["extra"] = extra
    return drafts


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    detect: Callable[[dict], bool]
    convert: Callable[[dict], list[Draft]]
    default_domain: str | None = None


# --- curate's own layout ---------------------------------------------------------------------


def _detect_curate(rec: dict) -> bool:
    # `thinking` is what sets a curate row apart from plain problem/solution/answer datasets
    # (MATH, NuminaMath), whose `solution` is a reference solution, not a teacher trace.
    return "problem" in rec and "thinking" in rec and "generations" not in rec


def _convert_curate(rec: dict) -> list[Draft]:
    from curate.schema import CORE_COLUMNS

    draft: Draft = {"problem": _str(rec, "problem")}
    draft["thinking"] = _str(rec, "thinking", required=False) or ""
    draft["solution"] = _str(rec, "solution", required=False) or ""
    for key in ("answer", "domain", "source", "teacher", "test_fn_name", "finish_reason"):
        if rec.get(key) is not None:
            draft[key] = _str(rec, key)
    draft["reference_answer"] = _answer_text(rec.get("reference_answer"))
    if rec.get("thinking_closed") is not None:
        if not isinstance(rec["thinking_closed"], bool):
            raise RowError("thinking_closed", f"expected a boolean, got {type(rec['thinking_closed']).__name__}")
        draft["thinking_closed"] = rec["thinking_closed"]
    if isinstance(rec.get("test_cases"), list):  # schema shape; other layouts: convert_record
        draft["test_cases"] = rec["test_cases"]
    draft["source_id"] = str(rec["source_id"]) if rec.get("source_id") is not None else _id_of(rec)
    extra = rec.get("extra")
    if isinstance(extra, str) and extra:
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError as e:
            raise RowError("extra", f"not valid JSON ({e.msg})") from None
    if extra is not None and not isinstance(extra, dict):
        raise RowError("extra", f"expected a JSON object, got {type(extra).__name__}")
    extra = dict(extra or {})
    extra.update(_rest(rec, set(CORE_COLUMNS)))
    draft["extra"] = extra
    return [draft]


# --- Sky-T1 / OpenThoughts: system + conversations ---------------------------------------------


def _detect_sky(rec: dict) -> bool:
    return isinstance(rec.get("conversations"), list)


def _turn_text(turn: dict, where: str) -> str:
    key = "value" if "value" in turn else "content"
    return _str(turn, key, where=f"{where}.{key}")  # type: ignore[return-value]


def _convert_sky(rec: dict) -> list[Draft]:
    convs = _list(rec, "conversations")
    turns = [(i, c) for i, c in enumerate(convs) if isinstance(c, dict)]
    role = lambda c: c.get("from", c.get("role"))  # noqa: E731
    user = next(((i, c) for i, c in turns if role(c) in ("user", "human")), None)
    asst = next(((i, c) for i, c in reversed(turns) if role(c) in ("assistant", "gpt")), None)
    if user is None:
        raise RowError("conversations", "no turn from 'user' or 'human'")
    if asst is None:
        raise RowError("conversations", "no turn from 'assistant' or 'gpt'")
    problem = _turn_text(user[1], f"conversations[{user[0]}]")
    response = _turn_text(asst[1], f"conversations[{asst[0]}]")
    extra = _rest(rec, {"conversations"})
    if len(convs) != 2:
        extra["conversations"] = convs  # multi-turn: keep the whole exchange
    return [{"problem": problem, "response": response, "source_id": _id_of(rec), "extra": extra,
             "_fields": {"problem": f"conversations[{user[0]}]", "response": f"conversations[{asst[0]}]"}}]


# --- generic chat messages ----------------------------------------------------------------------


def _detect_messages(rec: dict) -> bool:
    return isinstance(rec.get("messages"), list)


def _convert_messages(rec: dict) -> list[Draft]:
    msgs = _list(rec, "messages")
    role = lambda m: m.get("role", m.get("from"))  # noqa: E731
    turns = [(i, m) for i, m in enumerate(msgs) if isinstance(m, dict)]
    last = next(((i, m) for i, m in reversed(turns) if role(m) in ("assistant", "gpt")), None)
    if last is None:
        raise RowError("messages", "no message with role 'assistant'")
    user = next(((i, m) for i, m in reversed(turns) if i < last[0] and role(m) in ("user", "human")), None)
    if user is None:
        raise RowError("messages", "no 'user' message before the last 'assistant' message")
    (ui, um), (ai, am) = user, last
    draft: Draft = {"problem": _turn_text(um, f"messages[{ui}]"), "source_id": _id_of(rec),
                    "_fields": {"problem": f"messages[{ui}]", "response": f"messages[{ai}]"}}
    content = _turn_text(am, f"messages[{ai}]")
    reasoning = am.get("reasoning_content") or am.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise RowError(f"messages[{ai}].reasoning_content", f"expected a string, got {type(reasoning).__name__}")
    if reasoning:
        draft.update(thinking=reasoning.strip(), solution=content.strip(), thinking_closed=True)
    else:
        draft["response"] = content
    extra = _rest(rec, {"messages"})
    system = [m.get("content", m.get("value")) for _, m in turns if role(m) == "system"]
    if system:
        extra["system"] = system[0]
    if len(msgs) - len(system) != 2:
        extra["messages"] = msgs  # multi-turn: keep the whole exchange
    draft["extra"] = extra
    return [draft]


# --- Qwen2.5-Math / SkyThought evaluation harness output ---------------------------------------


def _detect_harness(rec: dict) -> bool:
    return "question" in rec and isinstance(rec.get("code"), list) and ("gt" in rec or "pred" in rec)


def _convert_harness(rec: dict) -> list[Draft]:
    """One trace per sampled response; per-response lists (pred, score...) are sliced along."""
    problem = _str(rec, "question")
    responses = _list(rec, "code")
    if not responses:
        raise RowError("code", "empty list: no response to make a trace from")
    n = len(responses)
    per_response = _sliced(rec, HARNESS_PER_RESPONSE, n, "code")
    base_id = _id_of(rec)
    reference = _answer_text(rec.get("gt"))
    drafts = []
    for k, response in enumerate(responses):
        if not isinstance(response, str):
            raise RowError(f"code[{k}]", f"expected a string, got {type(response).__name__}")
        extra = _rest(rec, {"question", "code", "gt", *per_response})
        _keep_reference(rec, "gt", extra)
        extra.update({key: rec[key][k] for key in per_response})
        extra["response_index"] = k
        drafts.append({
            "problem": problem,
            "response": response,
            "reference_answer": reference,
            "source_id": f"{base_id}:{k}" if base_id is not None else None,
            "extra": extra,
            "_fields": {"problem": "question", "response": f"code[{k}]"},
        })
    return drafts


# --- OpenR1-Math: problem / solution / answer / generations -----------------------------------


def _detect_openr1(rec: dict) -> bool:
    return "problem" in rec and isinstance(rec.get("generations"), list)


def _convert_openr1(rec: dict) -> list[Draft]:
    """One trace per generation; `messages` (a copy of one generation) stays in ``extra``."""
    problem = _str(rec, "problem")
    gens = _list(rec, "generations")
    if not gens:
        raise RowError("generations", "empty list: no generation to make a trace from")
    n = len(gens)
    per_gen = _sliced(rec, OPENR1_PER_GENERATION, n, "generations")
    base_id = _id_of(rec)
    # problem_type is a math area (Algebra, Geometry, "Logic and Puzzles"...); all are math.
    domain = "code" if str(rec.get("problem_type", "")).lower() == "code" else "math"
    drafts = []
    for k, gen in enumerate(gens):
        if not isinstance(gen, str):
            raise RowError(f"generations[{k}]", f"expected a string, got {type(gen).__name__}")
        extra = _rest(rec, {"problem", "generations", "answer", *per_gen})
        _keep_reference(rec, "answer", extra)
        extra.update({key: rec[key][k] for key in per_gen})
        extra["generation_index"] = k
        finish = rec["finish_reasons"][k] if "finish_reasons" in per_gen else None
        drafts.append({
            "problem": problem,
            "response": gen,
            "reference_answer": _answer_text(rec.get("answer")),
            "finish_reason": finish if finish in ("stop", "length") else None,
            "domain": domain,
            "source_id": f"{base_id}:{k}" if base_id is not None else None,
            "extra": extra,
            "_fields": {"problem": "problem", "response": f"generations[{k}]"},
        })
    return drafts


# --- s1K: question / thinking_trajectories / attempt -------------------------------------------

_S1_DOMAINS = {"math": "math", "science": "science", "crossword": "puzzle"}


def _detect_s1k(rec: dict) -> bool:
    return ("thinking_trajectories" in rec and "attempt" in rec) or (
        "deepseek_thinking_trajectory" in rec and "deepseek_attempt" in rec)  # s1K-1.1


def _convert_s1k(rec: dict) -> list[Draft]:
    """s1K (Gemini traces in ``thinking_trajectories``/``attempt``) and s1K-1.1 (DeepSeek-R1
    traces in ``deepseek_thinking_trajectory``/``deepseek_attempt``; the Gemini ones stay in extra)."""
    if "thinking_trajectories" in rec:
        tkey, akey, teacher = "thinking_trajectories", "attempt", None
    else:
        tkey, akey, teacher = "deepseek_thinking_trajectory", "deepseek_attempt", "deepseek-r1"
    traj = rec.get(tkey)
    if isinstance(traj, str):
        traj = [traj]
    if not isinstance(traj, list) or not all(isinstance(t, str) for t in traj):
        raise RowError(tkey, "expected a string or a list of strings")
    extra = _rest(rec, {"question", tkey, akey, "solution"})
    _keep_reference(rec, "solution", extra)
    return [{
        "problem": _str(rec, "question"),
        "thinking": "\n\n".join(traj).strip(),
        "solution": (_str(rec, akey) or "").strip(),
        "thinking_closed": True,
        "reference_answer": _answer_text(rec.get("solution")),
        "domain": _S1_DOMAINS.get(str(rec.get("cot_type", "")).lower()),
        "teacher": teacher,
        "source_id": _id_of(rec),
        "extra": extra,
        "_fields": {"problem": "question", "response": akey},
    }]


# --- APPS / TACO code rows ---------------------------------------------------------------------


def _detect_apps(rec: dict) -> bool:
    return "input_output" in rec and ("solutions" in rec or "solution" in rec)


def _convert_apps(rec: dict) -> list[Draft]:
    """One trace per reference program (fenced, so code verification finds it)."""
    pkey = "question" if "question" in rec else "problem"
    problem = _str(rec, pkey)
    tests, fn_name = parse_input_output(rec.get("input_output"))
    if "solutions" in rec:
        sols = rec["solutions"]
        if isinstance(sols, str):
            try:
                sols = json.loads(sols) if sols.strip() else []
            except json.JSONDecodeError as e:
                raise RowError("solutions", f"not valid JSON ({json_error_text(e)})") from None
        if sols is None:
            sols = []
        if not isinstance(sols, list):
            raise RowError("solutions", f"expected a list of programs, got {type(sols).__name__}")
        programs, skey = sols, "solutions"
    else:
        programs, skey = [_str(rec, "solution")], "solution"
    if not programs:
        raise RowError(skey, "empty: no program to make a trace from")
    used = {pkey, "input_output", skey}
    base_id = _id_of(rec)
    drafts = []
    for k, prog in enumerate(programs):
        if not isinstance(prog, str):
            raise RowError(f"{skey}[{k}]", f"expected a string, got {type(prog).__name__}")
        text = prog if "```" in prog or not prog.strip() else f"```python\n{prog.strip()}\n```"
        extra = _rest(rec, used)
        extra["solution_index"] = k
        drafts.append({
            "problem": problem,
            "thinking": "",
            "solution": text,
            "test_cases": tests,
            "test_fn_name": fn_name,
            "domain": "code",
            "source_id": f"{base_id}:{k}" if base_id is not None and len(programs) > 1 else base_id,
            "extra": extra,
            "_fields": {"problem": pkey, "response": f"{skey}[{k}]" if skey == "solutions" else skey},
        })
    return drafts


# --- raw R1 responses with <think> -------------------------------------------------------------


def _detect_r1(rec: dict) -> bool:
    key = _first_key(rec, RESPONSE_KEYS)
    text = rec.get(key) if key else None
    return _first_key(rec, PROBLEM_KEYS) is not None and isinstance(text, str) and "</think>" in text


def _convert_r1(rec: dict) -> list[Draft]:
    pkey, rkey = _first_key(rec, PROBLEM_KEYS), _first_key(rec, RESPONSE_KEYS)
    if pkey is None:
        raise RowError("problem", "missing (looked for " + ", ".join(PROBLEM_KEYS) + ")")
    if rkey is None:
        raise RowError("response", "missing (looked for " + ", ".join(RESPONSE_KEYS) + ")")
    ref_key = _first_key(rec, REFERENCE_KEYS)
    used = {pkey, rkey} | ({ref_key} if ref_key else set())
    extra = _rest(rec, used)
    _keep_reference(rec, ref_key, extra)
    finish = rec.get("finish_reason")
    return [{
        "problem": _str(rec, pkey),
        "response": _str(rec, rkey),
        "reference_answer": _answer_text(rec.get(ref_key)) if ref_key else None,
        "teacher": rec.get("model") if isinstance(rec.get("model"), str) else None,
        "finish_reason": finish if finish in ("stop", "length") else None,
        "source_id": _id_of(rec),
        "extra": extra,
        "_fields": {"problem": pkey, "response": rkey},
    }]


# --- LIMO: question / solution / answer --------------------------------------------------------


def _detect_limo(rec: dict) -> bool:
    return "question" in rec and "solution" in rec and "answer" in rec and "code" not in rec


_LIMO_MAPPED = frozenset(("question", "solution", "answer"))
_LIMO_FIELDS = {"problem": "question", "response": "solution"}  # shared: drafts only read it


def _convert_limo(rec: dict) -> list[Draft]:
    """LIMO's ``solution`` *is* the long reasoning: split like any response (markers if any, else
    the final answer paragraph is the solution and the rest the thinking)."""
    text = _str(rec, "solution")
    extra = {k: v for k, v in rec.items() if k not in _LIMO_MAPPED}
    _keep_reference(rec, "answer", extra)
    return [{
        "problem": _str(rec, "question"),
        "reference_answer": _answer_text(rec.get("answer")),
        "source_id": _id_of(rec),
        "extra": extra,
        "_fields": _LIMO_FIELDS,
        "response": text,
    }]


# Order matters for auto-detection: the most specific layouts come first. OpenR1-Math rows also
# carry a `messages` column, so `openr1` must be tried before the generic `messages`.
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("sky-t1", "Sky-T1 / OpenThoughts: `system` + `conversations` with thought/solution markers",
               _detect_sky, _convert_sky),
        Format("openr1", "OpenR1-Math: problem, solution, answer, `generations` (one trace each)",
               _detect_openr1, _convert_openr1, "math"),
        Format("harness", "Qwen2.5-Math / SkyThought eval output: question, gt, `code` = list of responses, pred, score",
               _detect_harness, _convert_harness, "math"),
        Format("s1k", "s1K: question, thinking_trajectories, attempt (s1K-1.1: deepseek_thinking_trajectory, deepseek_attempt)",
               _detect_s1k, _convert_s1k),
        Format("apps", "APPS / TACO code rows: question, solutions, input_output (one trace per program)",
               _detect_apps, _convert_apps, "code"),
        Format("messages", "Generic chat `messages` (role/content; `reasoning_content` honoured)",
               _detect_messages, _convert_messages),
        Format("curate", "curate's own layout (trace schema v1 columns)", _detect_curate, _convert_curate),
        Format("r1", "Raw R1 responses: a prompt field and a response containing <think>…</think>",
               _detect_r1, _convert_r1),
        Format("limo", "LIMO: question, solution (the long reasoning), answer",
               _detect_limo, _convert_limo, "math"),
    )
}
FORMAT_ALIASES = {"openthoughts": "sky-t1", "skythought": "sky-t1", "taco": "apps", "chat": "messages",
                  "qwen-math-eval": "harness", "deepseek-r1": "r1", "s1k-1.1": "s1k", "openr1-math": "openr1"}


def get_format(name: str) -> Format:
    key = FORMAT_ALIASES.get(name, name)
    if key not in FORMATS:
        known = ", ".join([*FORMATS, *FORMAT_ALIASES])
        raise KeyError(f"unknown format {name!r}; known formats: {known}, or 'auto'")
    return FORMATS[key]


def detect_format(rec: dict) -> Format | None:
    return next((f for f in FORMATS.values() if f.detect(rec)), None)
