"""Test-case layouts of real code datasets, mapped onto the schema's ``test_cases`` / ``test_fn_name``.

- APPS / TACO ``input_output``: a JSON string (or dict) with ``inputs``, ``outputs`` and an
  optional ``fn_name`` (call-based: each input is the argument list);
- OpenThoughts (metadata config) ``test_cases``: a JSON string in that same APPS/TACO shape;
- CodeContests ``public_tests`` / ``private_tests`` / ``generated_tests``: dicts of parallel
  ``input`` / ``output`` lists (stdin/stdout).

For a reader adapter (curate/io/formats.py) to call: ``tests_from_record(rec)``.
"""

from __future__ import annotations

import json
from typing import Any

from curate.io.formats import parse_input_output

CODECONTESTS_KEYS = ("public_tests", "private_tests", "generated_tests")


def _codecontests(rec: dict[str, Any], keys: tuple[str, ...]) -> list[dict[str, str]]:
    tests = []
    for key in keys:
        block = rec.get(key)
        if isinstance(block, str):
            block = json.loads(block) if block.strip() else None
        if not block:
            continue
        inputs, outputs = block.get("input") or [], block.get("output") or []
        if len(inputs) != len(outputs):
            raise ValueError(f"{key}: {len(inputs)} inputs but {len(outputs)} outputs")
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
