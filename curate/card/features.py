"""The card header's ``features`` list: what ``datasets.Features.from_arrow_schema(schema)._to_yaml_list()``
emits, computed from the Arrow schema without importing ``datasets``.

Why hand-written: importing ``datasets`` costs about 1 s of CPU (it pulls pandas, fsspec, multiprocess),
more than everything else a no-op ``curate run`` does (BENCHMARKS.md, *Start-up*). The rules follow
``datasets/features/features.py`` (``_arrow_to_datasets_dtype``, ``generate_from_arrow_type`` and
``Features._to_yaml_list``); tests/test_card.py compares the two on every schema the shipped recipes
and variants write.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.types as pt

# Arrow types whose datasets dtype is not their Arrow name (the rest print as datasets names them)
_RENAMED = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64",
            pa.date32(): "date32", pa.date64(): "date64"}
_SAME_NAME = (pt.is_null, pt.is_boolean, pt.is_integer, pt.is_time, pt.is_timestamp, pt.is_duration,
              pt.is_decimal128, pt.is_decimal256, pt.is_binary, pt.is_large_binary, pt.is_binary_view, pt.is_string,
              pt.is_large_string, pt.is_string_view, pt.is_fixed_size_binary)


def features_yaml(schema: pa.Schema) -> list[dict[str, Any]]:
    """The ``dataset_info.features`` list of a card for ``schema`` (one entry per column, in order)."""
    return [{"name": f.name, **_feature(f.type)} for f in schema]


def dtype(t: pa.DataType) -> str:
    """The datasets dtype of a scalar Arrow type (a dictionary is its values' type)."""
    if pt.is_dictionary(t):
        return dtype(t.value_type)
    if t in _RENAMED:
        return _RENAMED[t]
    if any(check(t) for check in _SAME_NAME):
        return str(t)
    raise ValueError(f"Arrow type {t} does not have a datasets dtype equivalent.")


def _feature(t: pa.DataType) -> dict[str, Any]:
    if pt.is_struct(t):
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in t]}
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        inner: Any = _feature(t.value_type)
        if list(inner) in (["dtype"], ["struct"]):  # `list: int32`, `list: [fields]`
            inner = next(iter(inner.values()))
        out = {"large_list" if pt.is_large_list(t) else "list": inner}
        if pt.is_fixed_size_list(t):
            out["length"] = t.list_size
        return out
    if isinstance(t, pa.JsonType):
        return {"dtype": "json"}
    return {"dtype": dtype(t)}
