"""Trace schema v1: the contract every reader, operator and writer keeps.

One definition (``FIELDS``) is the source of truth; the Arrow schema and the JSON Schema in
``schemas/trace-v1.json`` are derived from it (a test fails when the file drifts).
Operator annotations are extra typed columns named ``<family>_<what>`` (``verify_correct``,
``difficulty_pass_rate``); they follow the core columns in the order the steps add them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "1.0"
SCHEMA_NAME = "curate.trace"
DOMAINS = ("math", "code", "science", "puzzle", "other")
FINISH_REASONS = ("stop", "length", "unknown")

TEST_CASE = pa.struct([("input", pa.large_string()), ("output", pa.large_string())])


@dataclass(frozen=True)
class Field:
    name: str
    type: pa.DataType
    description: str
    required: bool = False  # a reader rejects a row whose required field is empty


FIELDS: tuple[Field, ...] = (
    Field("id", pa.string(), "Stable content hash of problem, thinking and solution (hex).", True),
    Field("source_id", pa.string(), "The input's own id for the row (file row id, idx, idx:k), for joins."),
    Field("problem", pa.large_string(), "The problem statement / user prompt.", True),
    Field("thinking", pa.large_string(), "The teacher's reasoning, thinking markers stripped ('' if none)."),
    Field("solution", pa.large_string(), "The text after the thinking block, markers stripped."),
    Field("answer", pa.large_string(), "Final answer extracted from the response (null until extracted)."),
    Field("reference_answer", pa.large_string(), "Ground-truth answer, when the source has one."),
    Field("domain", pa.string(), "One of: " + ", ".join(DOMAINS) + ".", True),
    Field("source", pa.string(), "Where the row came from (dataset or file name)."),
    Field("teacher", pa.string(), "The model that wrote the trace, when known."),
    Field("test_cases", pa.list_(TEST_CASE), "Code tests: stdin/stdout pairs, or JSON-encoded call args/results."),
    Field("test_fn_name", pa.string(), "Function name for call-based code tests (LeetCode style)."),
    Field("finish_reason", pa.string(), "Why generation stopped: " + ", ".join(FINISH_REASONS) + "."),
    Field("thinking_closed", pa.bool_(), "Whether the thinking block was closed (false: truncated trace)."),
    Field("extra", pa.large_string(), "Every input field the format adapter did not map, as a JSON object."),
)

CORE_COLUMNS: tuple[str, ...] = tuple(f.name for f in FIELDS)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.required)
TRACE_SCHEMA: pa.Schema = pa.schema([pa.field(f.name, f.type) for f in FIELDS])


def trace_id(problem: str, thinking: str, solution: str) -> str:
    """Stable content id: identical problem + response text gives the same id everywhere."""
    # each text then a NUL byte, encoded and hashed in one call (measured ~13% cheaper than three updates)
    return hashlib.blake2b(f"{problem}\0{thinking}\0{solution}\0".encode("utf-8", "surrogatepass"),
                           digest_size=10).hexdigest()


def _json_type(t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return {"type": ["string", "null"]}
    if pa.types.is_boolean(t):
        return {"type": ["boolean", "null"]}
    if pa.types.is_integer(t):
        return {"type": ["integer", "null"]}
    if pa.types.is_floating(t):
        return {"type": ["number", "null"]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"type": ["array", "null"], "items": _json_type(t.value_type)}
    if pa.types.is_struct(t):
        return {
            "type": ["object", "null"],
            "properties": {t.field(i).name: _json_type(t.field(i).type) for i in range(t.num_fields)},
            "additionalProperties": False,
        }
    raise TypeError(f"no JSON Schema mapping for Arrow type {t}")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one trace row (what ``schemas/trace-v1.json`` holds)."""
    props: dict[str, Any] = {}
    for f in FIELDS:
        spec = _json_type(f.type)
        if f.required:
            spec["type"] = spec["type"][0]
            spec["minLength"] = 1
        spec["description"] = f.description
        spec["x-arrow-type"] = str(f.type)
        props[f.name] = spec
    props["domain"]["enum"] = list(DOMAINS)
    props["finish_reason"]["enum"] = [*FINISH_REASONS, None]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_NAME}/v{SCHEMA_VERSION}",
        "title": "curate trace",
        "description": (
            "One teacher trace. Core columns below; operator annotations are further typed "
            "columns named <family>_<what> (e.g. verify_correct), added by the steps that write them."
        ),
        "type": "object",
        "required": list(REQUIRED_COLUMNS),
        "properties": props,
        "additionalProperties": True,
        "x-schema-version": SCHEMA_VERSION,
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def output_schema(annotations: dict[str, pa.DataType]) -> pa.Schema:
    """Core schema followed by annotation columns, in the order given."""
    fields = list(TRACE_SCHEMA)
    for name, typ in annotations.items():
        if name in CORE_COLUMNS:
            continue
        fields.append(pa.field(name, typ))
    return pa.schema(fields)
