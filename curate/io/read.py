"""Readers: JSONL, JSON, Parquet, in-memory tables and `datasets.Dataset`, into trace batches.

``read(...)`` returns a lazy :class:`Source`; nothing is read until a pipeline (or you) iterates
``source.batches()``. Every input record becomes traces or rejects (file, line, raw text, reason),
so kept + rejected always equals rows read. Source ids must be unique within a file (eval dumps
number each file from 0). Data already in the trace schema (a curate dataset folder, one of its
shards, or such a table in memory) skips the adapters and keeps its typed annotation columns;
later files are conformed to the first file's columns.
"""

from __future__ import annotations

import glob as globlib
import gzip
import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import InputError, RowError, json_error_text
from curate.io.formats import Format, convert_record, detect_format, get_format
from curate.io.markers import split_response
from curate.schema import CORE_COLUMNS, DOMAINS, TRACE_SCHEMA, trace_id

try:  # orjson is 3-5x faster on 20 KB lines; the stdlib parser gives the same values
    import orjson

    _loads = orjson.loads
    _JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError, RecursionError)
    _VALIDATING_LOADS: Any = orjson.loads  # refuses lone surrogates: its strings are valid Unicode
except ImportError:  # pragma: no cover
    _loads = json.loads
    _JSONError = (json.JSONDecodeError, ValueError, RecursionError)
    _VALIDATING_LOADS = None

OnError = Literal["reject", "raise"]
REJECT_READ_SCHEMA = pa.schema([
    ("reject_step", pa.string()),
    ("reject_reason", pa.string()),
    ("source_file", pa.string()),
    ("line", pa.int64()),
    ("raw", pa.large_string()),
])
# not traces, though they sit in dataset folders: left out of a folder's input without a fuss
_DOC_FILES = (".md", ".txt", ".gitattributes", ".gitignore")
_DOC_NAMES = ("readme", "license", "licence", "notice", "citation")
_COMPRESSED = {".bz2": "bunzip2", ".xz": "unxz", ".zst": "unzstd", ".zstd": "unzstd", ".lz4": "unlz4",
               ".zip": "unzip", ".7z": "7z x", ".tar": "tar xf", ".tgz": "tar xzf"}


@dataclass
class ReadBatch:
    """One batch of traces (trace schema + any typed columns the input already had) and rejects."""

    traces: pa.Table
    rejects: pa.Table
    rows: int  # candidate rows this batch accounts for: len(traces) + len(rejects)


@dataclass
class ReadOptions:
    format: str = "auto"
    on_error: OnError = "reject"
    domain: str | None = None  # for rows whose record and format do not say
    source: str | None = None  # `source` column; default: the file's stem
    teacher: str | None = None
    max_chars: int | None = None  # reject traces longer than this (None: no limit)
    skip_unsupported: bool = False  # a folder's files of unknown types: skipped (listed), not an error


def _options_key(options: ReadOptions) -> bytes:
    """The read options a fingerprint covers (which files were read is covered by the files)."""
    return json.dumps({k: v for k, v in vars(options).items() if k != "skip_unsupported"},
                      sort_keys=True).encode()


class Source:
    """A lazy, re-iterable input: ``batches()`` yields the same batches every time."""

    options: ReadOptions

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def schema(self) -> pa.Schema:
        """The trace schema plus any typed columns a curate-layout input already carries."""
        return TRACE_SCHEMA

    def batches(self, batch_size: int = 1024) -> Iterator[ReadBatch]:
        raise NotImplementedError

    def splits(self) -> list[Source]:
        """Independent pieces that read in parallel and, in order, yield exactly ``batches()``
        (one per input file; an in-memory input is one piece)."""
        return [self]

    def to_polars(self):
        """Read everything into one polars DataFrame (for exploration; pipelines stream)."""
        import polars as pl

        tables = [b.traces for b in self.batches()]
        return pl.from_arrow(pa.concat_tables(tables)) if tables else pl.from_arrow(_empty_table(TRACE_SCHEMA))


# --- turning drafts into schema rows ------------------------------------------------------------


@dataclass
class _RowBuilder:
    """Validates drafts from a format adapter and finishes them into schema rows."""

    options: ReadOptions
    # source ids are unique per input file (eval dumps number every file from 0); where each was
    # first seen: "file:line", or the 1-based row of a table (formatted only for an error)
    seen_ids: dict[tuple[str, str], str | int] = field(default_factory=dict)

    def finish(self, draft: dict, fmt: Format, source: str, where: str, file: str = "") -> dict:
        fields = draft.get("_fields") or {}
        pname, rname = fields.get("problem", "problem"), fields.get("response", "response")
        row: dict[str, Any] = dict.fromkeys(CORE_COLUMNS)
        problem = draft.get("problem")
        if not isinstance(problem, str):
            raise RowError(pname, "missing" if problem is None else f"expected a string, got {type(problem).__name__}")
        if not problem.strip():
            raise RowError(pname, "empty")
        if "response" in draft:
            if not isinstance(draft["response"], str):
                raise RowError(rname, f"expected a string, got {type(draft['response']).__name__}")
            thinking, solution, closed, _ = split_response(draft["response"])
        else:
            thinking, solution = draft.get("thinking") or "", draft.get("solution") or ""
            for name, value in (("thinking", thinking), ("solution", solution)):
                if not isinstance(value, str):
                    raise RowError(name, f"expected a string, got {type(value).__name__}")
            closed = draft.get("thinking_closed", True if thinking else None)
        if not thinking.strip() and not solution.strip():
            raise RowError(rname, "empty: no thinking and no solution text")
        limit = self.options.max_chars
        if limit is not None and len(thinking) + len(solution) > limit:
            raise RowError(rname, f"{len(thinking) + len(solution)} chars > max_chars={limit}")
        tests = draft.get("test_cases")
        if tests is not None:
            tests = _check_tests(tests)
        domain = draft.get("domain") or self.options.domain or fmt.default_domain
        domain = domain or ("code" if tests else "other")
        if domain not in DOMAINS:
            raise RowError("domain", f"{domain!r} is not one of {', '.join(DOMAINS)}")
        finish = draft.get("finish_reason")
        if finish is not None and finish not in ("stop", "length", "unknown"):
            raise RowError("finish_reason", f"{finish!r} is not one of stop, length, unknown")
        source_id = draft.get("source_id")
        if source_id is not None:
            first = self.seen_ids.get((file or source, source_id))
            if first is not None:
                at = f"{file or source}:{first}" if isinstance(first, int) else first
                raise RowError("source_id", f"duplicate id {source_id!r} (first seen at {at})")
            self.seen_ids[(file or source, source_id)] = where
        row.update(
            id=trace_id(problem, thinking, solution),
            source_id=source_id,
            problem=problem,
            thinking=thinking,
            solution=solution,
            answer=draft.get("answer"),
            reference_answer=draft.get("reference_answer"),
            domain=domain,
            source=self.options.source or draft.get("source") or source,
            teacher=self.options.teacher or draft.get("teacher"),
            test_cases=tests,
            test_fn_name=draft.get("test_fn_name"),
            finish_reason=finish,
            thinking_closed=closed,
            extra=_json_text(draft["extra"]) if draft.get("extra") else None,
        )
        _check_text(row, fields)
        return row


def _check_text(row: dict[str, Any], fields: dict[str, str]) -> None:
    """Raise a RowError for text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``
    that the stdlib JSON parser accepts): Arrow could not store it, and the whole run would stop."""
    for name, value in row.items():
        values = [value] if isinstance(value, str) else (
            [v for t in value for v in t.values()] if name == "test_cases" and value else [])
        for v in values:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise RowError(fields.get(name, name), f"not valid Unicode text (a lone surrogate "
                               f"{v[e.start]!r} at char {e.start})") from None


# what json.dumps(value, ensure_ascii=False, default=str, allow_nan=False) builds on every call
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, allow_nan=False)


def _json_text(value: Any) -> str:
    """JSON text of a value (unmapped fields, raw rejected records); NaN/inf (pandas-made Parquet)
    become null, since JSON has no NaN."""
    try:
        return _JSON_ENCODER.encode(value)
    except ValueError:
        return json.dumps(_finite(value), ensure_ascii=False, default=str, allow_nan=False)
    except RecursionError:
        raise RowError(None, "nested too deeply to store (more than ~1000 levels)") from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _check_tests(tests: Any) -> list[dict[str, str]]:
    if not isinstance(tests, list):
        raise RowError("test_cases", f"expected a list, got {type(tests).__name__}")
    for i, t in enumerate(tests):
        if not (isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)):
            raise RowError(f"test_cases[{i}]", "expected {'input': str, 'output': str}")
    return tests


class _BatchAssembler:
    """Collects rows and rejects; emits a ReadBatch every `batch_size` candidate rows."""

    def __init__(self, batch_size: int, options: ReadOptions):
        self.batch_size = batch_size
        self.options = options
        self.rows: list[dict] = []
        self.rejects: list[dict] = []

    def reject(self, file: str, line: int, raw: Any, reason: str) -> None:
        if self.options.on_error == "raise":
            raise InputError(f"{file}:{line}: {reason}")
        if isinstance(raw, bytes):
            raw = raw.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
        elif not isinstance(raw, str):
            try:
                raw = _json_text(raw)
            except RowError:
                raw = repr(raw)[:10000]
        # the raw text is stored as it came: lone surrogates are escaped so Arrow can hold it
        raw = raw.encode("utf-8", "backslashreplace").decode("utf-8")
        self.rejects.append({"reject_step": "read", "reject_reason": reason, "source_file": file,
                             "line": line, "raw": raw})

    def full(self) -> bool:
        return len(self.rows) + len(self.rejects) >= self.batch_size

    def emit(self) -> ReadBatch:
        rows = self.rows  # column by column: 2-3x faster than from_pylist on wide text rows
        traces = _arrow_table({f.name: [r[f.name] for r in rows] for f in TRACE_SCHEMA}, TRACE_SCHEMA)
        rejects = _arrow_table({f.name: [r[f.name] for r in self.rejects] for f in REJECT_READ_SCHEMA},
                               REJECT_READ_SCHEMA)
        batch = ReadBatch(traces, rejects, len(self.rows) + len(self.rejects))
        self.rows, self.rejects = [], []
        return batch


def _adapt(fmt: Format, rec: Any) -> tuple[list[dict], str | None]:
    """The drafts of one parsed record, or why it is a reject (the reason text)."""
    if isinstance(rec, Exception):
        return [], str(rec)
    if not isinstance(rec, dict):
        return [], f"expected a JSON object, got {type(rec).__name__}"
    try:
        return convert_record(fmt, rec), None
    except RowError as e:
        return [], f"{fmt.name}: {e}"
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
        return [], f"{fmt.name}: malformed record ({e!r})"


def _add_record(line: int, rec: Any, raw: Any, adapted: tuple[list[dict], str | None], file: str,
                source_name: str, fmt: Format, builder: _RowBuilder, asm: _BatchAssembler) -> None:
    """One record's drafts become rows, or the record (or a draft of it) a reject."""
    drafts, reason = adapted
    if reason is not None:
        asm.reject(file, line, rec if raw is None and isinstance(rec, dict) else raw, reason)
        return
    for k, draft in enumerate(drafts):
        where = f"{file}:{line}" + (f"#{k}" if len(drafts) > 1 else "")
        try:
            asm.rows.append(builder.finish(draft, fmt, source_name, where, file))
        except RowError as e:
            asm.reject(file, line, raw if raw is not None else rec, f"{fmt.name}: {e}")


def _records_to_batches(
    records: Iterable[tuple[int, Any, Any]],
    file: str,
    source_name: str,
    fmt: Format,
    builder: _RowBuilder,
    asm: _BatchAssembler,
) -> Iterator[ReadBatch]:
    """records yields (line, record-or-exception, raw); each becomes traces or rejects."""
    for line, rec, raw in records:
        _add_record(line, rec, raw, _adapt(fmt, rec), file, source_name, fmt, builder, asm)
        if asm.full():
            yield asm.emit()


def _grouped_batches(
    records: Iterable[tuple[int, Any, Any]],
    file: str,
    source_name: str,
    fmt: Format,
    builder: _RowBuilder,
    asm: _BatchAssembler,
) -> Iterator[ReadBatch]:
    """``_records_to_batches`` for records whose text is valid Unicode (orjson-parsed JSONL, Parquet):
    the same batches, but a batch whose drafts all finish cleanly is built column by column
    (``_finish_group``, no row dicts); any other batch goes through the per-record path, so its
    rows, rejects and reasons are the per-record path's own.

    A record accounts for one candidate row per draft, or one reject, so the batch boundaries
    are known from the adapter alone: a group ends where the per-record path would emit.
    """
    group: list[tuple[int, Any, Any, tuple[list[dict], str | None]]] = []
    count = 0
    for line, rec, raw in records:
        adapted = _adapt(fmt, rec)
        group.append((line, rec, raw, adapted))
        count += 1 if adapted[1] is not None else len(adapted[0])
        if count >= asm.batch_size:
            yield from _group_batch(group, count, file, source_name, fmt, builder, asm)
            group, count = [], 0
    if group:
        yield from _group_batch(group, count, file, source_name, fmt, builder, asm)


def _group_batch(group: list[tuple[int, Any, Any, tuple[list[dict], str | None]]], count: int,
                 file: str, source_name: str, fmt: Format, builder: _RowBuilder,
                 asm: _BatchAssembler) -> Iterator[ReadBatch]:
    traces = None
    if all(adapted[1] is None for _, _, _, adapted in group):
        drafts = [(draft, f"{file}:{line}" + (f"#{k}" if len(adapted[0]) > 1 else ""))
                  for line, _, _, adapted in group for k, draft in enumerate(adapted[0])]
        traces = _finish_group(drafts, fmt, source_name, file, builder)
    if traces is not None:
        if count:
            yield ReadBatch(traces, _empty_table(REJECT_READ_SCHEMA), count)
        return
    for line, rec, raw, adapted in group:
        _add_record(line, rec, raw, adapted, file, source_name, fmt, builder, asm)
    if asm.rows or asm.rejects:
        yield asm.emit()


_FINISH_REASONS = ("stop", "length", "unknown")


def _is_blank(text: str) -> bool:
    """``not text.strip()`` without copying the text."""
    return not text or text.isspace()


def _finish_group(drafts: list[tuple[dict, str]], fmt: Format, source: str, file: str,
                  builder: _RowBuilder) -> pa.Table | None:
    """``_RowBuilder.finish`` for a whole batch of drafts, straight into columns (no row dicts);
    None when any draft would be rejected (the caller then takes the per-record path, which says
    which row and why).

    The drafts' text must be valid Unicode (``_check_text`` is not repeated). Every value that
    would go to Arrow is type-checked, so what this builds is what the row path builds.
    """
    from curate.schema import trace_id

    opts, seen, limit = builder.options, builder.seen_ids, builder.options.max_chars
    default_domain = opts.domain or fmt.default_domain
    new_ids: dict[tuple[str, str], str] = {}
    cols: dict[str, list] = {f.name: [] for f in TRACE_SCHEMA}
    (ids, source_ids, problems, thinkings, solutions, answers, references, domains, sources, teachers,
     tests_col, fn_names, finishes, closeds, extras) = (cols[f.name] for f in TRACE_SCHEMA)
    for draft, where in drafts:
        problem = draft.get("problem")
        if not isinstance(problem, str) or _is_blank(problem):
            return None
        if "response" in draft:
            if not isinstance(draft["response"], str):
                return None
            thinking, solution, closed, _ = split_response(draft["response"])
        else:
            thinking, solution = draft.get("thinking") or "", draft.get("solution") or ""
            if not isinstance(thinking, str) or not isinstance(solution, str):
                return None
            closed = draft.get("thinking_closed", True if thinking else None)
        if _is_blank(thinking) and _is_blank(solution):
            return None
        if limit is not None and len(thinking) + len(solution) > limit:
            return None
        tests = draft.get("test_cases")
        if tests is not None:
            try:
                tests = _check_tests(tests)
            except RowError:
                return None
        domain = draft.get("domain") or default_domain or ("code" if tests else "other")
        finish = draft.get("finish_reason")
        if domain not in DOMAINS or (finish is not None and finish not in _FINISH_REASONS):
            return None
        source_id = draft.get("source_id")
        if source_id is not None:
            key = (file or source, source_id)
            if key in seen or key in new_ids:
                return None
            new_ids[key] = where
        try:
            extra = _json_text(draft["extra"]) if draft.get("extra") else None
        except RowError:
            return None
        ids.append(trace_id(problem, thinking, solution))
        source_ids.append(source_id)
        problems.append(problem)
        thinkings.append(thinking)
        solutions.append(solution)
        answers.append(draft.get("answer"))
        references.append(draft.get("reference_answer"))
        domains.append(domain)
        sources.append(opts.source or draft.get("source") or source)
        teachers.append(opts.teacher or draft.get("teacher"))
        tests_col.append(tests)
        fn_names.append(draft.get("test_fn_name"))
        finishes.append(finish)
        closeds.append(closed)
        extras.append(extra)
    # values the adapters pass through unchecked: Arrow would refuse what polars might convert
    for name in ("source_id", "answer", "reference_answer", "source", "teacher", "test_fn_name"):
        if not all(v is None or type(v) is str for v in cols[name]):
            return None
    if not all(v is None or type(v) is bool for v in closeds):
        return None
    seen.update(new_ids)
    return _arrow_table(cols, TRACE_SCHEMA)


def _arrow_table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    """Python lists as an Arrow table of ``schema``, built through polars: pyarrow converting
    Python objects itself (``pa.array``, ``from_pydict``, ``pa.scalar``) imports pandas, ~0.4 s."""
    import polars as pl

    frame = pl.DataFrame([pl.Series(f.name, columns[f.name], dtype=_polars_type(f.type)) for f in schema])
    return frame.to_arrow().cast(schema)


def _array(values: list, type: pa.DataType) -> pa.Array:
    """A typed Arrow array of Python values, built through polars (see ``_arrow_table``)."""
    return _arrow_table({"v": values}, pa.schema([("v", type)])).column(0).combine_chunks()


@lru_cache(maxsize=64)
def _values(values: tuple, type: pa.DataType) -> pa.Array:
    """``_array`` of a fixed set of values (the domains, the finish reasons), built once."""
    return _array(list(values), type)


@lru_cache(maxsize=256)
def _scalar(value: Any, type: pa.DataType) -> pa.Scalar:
    """An Arrow scalar for compute functions (they convert a bare Python value with pa.scalar);
    kept, as the column path asks for the same few a dozen times a batch (scalars are immutable)."""
    return _array([value], type)[0]


def _empty_table(schema: pa.Schema) -> pa.Table:
    """``schema.empty_table()`` without the pandas import it brings (the same table)."""
    try:
        return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, TypeError):  # a type without a null array
        return schema.empty_table()


def _polars_type(t: pa.DataType):
    import polars as pl

    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pl.String
    if pa.types.is_boolean(t):
        return pl.Boolean
    if pa.types.is_int64(t):
        return pl.Int64
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pl.List(_polars_type(t.value_type))
    if pa.types.is_struct(t):
        return pl.Struct({f.name: _polars_type(f.type) for f in t})
    raise TypeError(f"no polars type for {t}")


# --- files ---------------------------------------------------------------------------------------

_KINDS = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet"))


def _open(path: Path):
    if not isinstance(path, Path):  # a remote file (curate.io.hub.HubFile) opens itself as a stream
        return path.open("rb")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for ext, kind in _KINDS:
        if name.endswith(ext):
            return kind
    raise InputError(f"{path}: unknown file type (expected .jsonl, .ndjson, .json, .parquet, optionally .gz)")


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any, Any]]:
    """(line number, parsed record or the error, raw line) for every non-blank line.

    orjson parses the bytes as they are (it validates UTF-8 itself), so the common case makes no
    copy of a 20 KB line; only a failing line is decoded again to say what is wrong with it.
    """
    try:
        with _open(path) as f:
            for line_no, raw in enumerate(f, 1):
                if raw.isspace():
                    continue
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                    raw = raw[3:]
                try:
                    yield line_no, _loads(raw), raw
                    continue
                except _JSONError as e:
                    error = e
                raw = raw.rstrip(b"\r\n")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield line_no, ValueError(f"not valid UTF-8 (byte {e.start} of the line)"), raw
                    continue
                try:  # the stdlib parser names the position of a syntax error
                    json.loads(text)
                    detail = str(error)
                except json.JSONDecodeError as e:
                    detail = json_error_text(e)
                except RecursionError:
                    detail = "nested too deeply"
                yield line_no, ValueError(f"malformed JSON ({detail})"), text
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise InputError(f"{path}: cannot read the file ({e})") from None


def _json_records(path: Path) -> Iterator[tuple[int, Any, Any]]:
    """A JSON document: an array of records (or an object holding one). ``line`` is the record's
    1-based position in the array, since a JSON document has no per-record lines."""
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read the file ({e})") from None
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    except RecursionError:
        raise InputError(f"{path}: malformed JSON: nested too deeply (more than ~1000 levels)") from None
    if isinstance(doc, dict):
        lists = [k for k in ("data", "rows", "train", "examples", "records") if isinstance(doc.get(k), list)]
        doc = doc[lists[0]] if lists else [doc]
    if not isinstance(doc, list):
        raise InputError(f"{path}: expected a JSON array of records, got {type(doc).__name__}")
    for i, rec in enumerate(doc, 1):
        yield i, rec, None


def _table_records(table_batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[int, Any, Any]]:
    row = 0
    for b in table_batches:
        for rec in b.to_pylist():
            row += 1
            yield row, rec, None


def _is_curate_table(schema: pa.Schema) -> bool:
    return all(name in schema.names for name in CORE_COLUMNS)


def _cast_curate(table: pa.Table, where: str = "input") -> pa.Table:
    """Conform a curate-layout table: core columns first with their declared types, then the rest."""
    cols, names = [], []
    for f in TRACE_SCHEMA:
        col = table.column(f.name)
        _no_text_from_other_types(col.type, f, where)
        try:
            cols.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise InputError(
                f"{where}: column {f.name!r} is {col.type}, but trace schema v1 needs {f.type} ({e})"
            ) from None
        names.append(f.name)
    for name in table.schema.names:
        if name not in CORE_COLUMNS:
            cols.append(table.column(name))
            names.append(name)
    return pa.Table.from_arrays(cols, names=names)


_TRAINED_TEXT = ("problem", "thinking", "solution")


def _is_text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _no_text_from_other_types(have: pa.DataType, want: pa.Field, where: str) -> None:
    """Arrow casts numbers to text without a word; an integer ``problem`` column is a mistake to
    report (the wrong column, or a dataset of ids), not text to train on. (A numeric
    ``reference_answer`` or ``source_id`` is cast, as numbers there are common and mean what
    their text says.)"""
    if want.name in _TRAINED_TEXT and not (_is_text_type(have) or pa.types.is_null(have)):
        raise InputError(f"{where}: column {want.name!r} is {have}, but trace schema v1 needs text "
                         f"({want.type}); numbers are not converted to text: fix the column or its mapping")


def _curate_table_batches(
    batches: Iterable[pa.RecordBatch], file: str, asm: _BatchAssembler, offset: int = 0
) -> Iterator[ReadBatch]:
    """Fast path for data already in the trace schema: keep typed annotation columns as they are."""
    import pyarrow.compute as pc

    row0 = offset
    for rb in batches:
        table = _cast_curate(pa.Table.from_batches([rb]), file)
        empty_problem = pc.or_(pc.is_null(table["problem"]),
                               pc.equal(pc.utf8_trim_whitespace(table["problem"]), _scalar("", pa.large_string())))
        bad = pc.or_(
            empty_problem,
            pc.or_(pc.is_null(table["id"]), pc.invert(pc.is_in(table["domain"], _values(tuple(DOMAINS), pa.string())))),
        )
        bad = pc.fill_null(bad, _scalar(True, pa.bool_()))
        if pc.any(bad).as_py():
            idx = [i for i, b in enumerate(bad.to_pylist()) if b]
            for i in idx:
                rec = table.slice(i, 1).to_pylist()[0]
                reason = "field 'problem': empty" if not (rec["problem"] or "").strip() else (
                    "field 'id': missing" if rec["id"] is None else f"field 'domain': {rec['domain']!r} is not one of {', '.join(DOMAINS)}"
                )
                asm.reject(file, row0 + i + 1, rec, f"curate: {reason}")
            table = table.filter(pc.invert(bad))
        traces = table
        rejects = _arrow_table({f.name: [r[f.name] for r in asm.rejects] for f in REJECT_READ_SCHEMA},
                               REJECT_READ_SCHEMA)
        asm.rejects = []
        row0 += rb.num_rows
        yield ReadBatch(traces, rejects, traces.num_rows + rejects.num_rows)


def _fast_path(options: ReadOptions, schema: pa.Schema) -> bool:
    """Curate-layout tables skip the adapters (and keep their typed annotation columns)."""
    return options.format in ("auto", "curate") and _is_curate_table(schema)


_NO_FORMAT = Format("none", "no JSON object in the input: every line is a reject", lambda rec: False,
                    lambda rec: [])


def _detect(name: str, records: Iterable[tuple[int, Any, Any]]) -> Format | None:
    """The format of the first JSON object in ``records``; None when there are no records at all.

    Lines that are no JSON object (garbage, plain text, a renamed CSV) are skipped here, however
    many: they become rejects when read. Input with records but no object gets ``_NO_FORMAT``,
    which is never applied, so all of its lines are rejects, not an empty input.
    """
    seen = False
    for _, rec, _ in records:
        seen = True
        if isinstance(rec, dict):
            fmt = detect_format(rec)
            if fmt is None:
                keys = ", ".join(list(rec)[:20])
                raise InputError(
                    f"{name}: cannot detect the trace format from the record keys [{keys}]; "
                    "name it with format=... (see `curate formats`)"
                )
            return fmt
    return _NO_FORMAT if seen else None


class FileSource(Source):
    """One or more files (paths, globs or directories), each of a type known by its extension."""

    def __init__(self, paths: list[Path], options: ReadOptions, target: pa.Schema | None = None):
        self.paths = paths
        self.options = options
        self._fingerprint: str | None = None
        self._target = target  # a split reads to the schema of the whole input's first file
        self.skipped: list[dict[str, str]] = []  # a folder's files left out (skip_unsupported)

    def describe(self) -> dict[str, Any]:
        return {
            "paths": [str(p) for p in self.paths],
            "format": self.options.format,
            "on_error": self.options.on_error,
            "files": [{"path": str(p), "bytes": p.stat().st_size} for p in self.paths],
            **({"skipped": self.skipped} if self.skipped else {}),
        }

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(_options_key(self.options))
            for p in self.paths:
                h.update(str(p.name).encode())
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def splits(self) -> list[Source]:
        target = self.schema()  # absolute paths: a worker's working directory is not the caller's
        return [FileSource([p.resolve()], self.options, target) for p in self.paths]

    def schema(self) -> pa.Schema:
        if self._target is not None:
            return self._target
        first = self.paths[0]
        if _kind(first) == "parquet":
            arrow = _open_parquet(first).schema_arrow
            if _fast_path(self.options, arrow):
                return _cast_curate(_empty_table(arrow), str(first)).schema.remove_metadata()
        return TRACE_SCHEMA

    def batches(self, batch_size: int = 1024) -> Iterator[ReadBatch]:
        target = self.schema()
        builder = _RowBuilder(self.options)
        for path in self.paths:
            for batch in self._file_batches(path, batch_size, builder):
                if batch.traces.schema != target:
                    batch.traces = _conform(batch.traces, target, str(path))
                yield batch

    def _file_batches(self, path: Path, batch_size: int, builder: _RowBuilder) -> Iterator[ReadBatch]:
        kind = _kind(path)
        asm = _BatchAssembler(batch_size, self.options)
        if kind == "parquet":
            pf = _open_parquet(path)
            if _fast_path(self.options, pf.schema_arrow):
                yield from _curate_table_batches(pf.iter_batches(batch_size), str(path), asm)
                return
            records = lambda: _table_records(pf.iter_batches(batch_size))  # noqa: E731
            if _columnar(self.options, pf.schema_arrow):
                yield from _column_batches(pf.iter_batches(batch_size), path, builder, asm)
                return
        elif kind == "jsonl":
            records = lambda: _jsonl_records(path)  # noqa: E731
        else:  # one JSON document: parse it once, not once for detection and once to read
            doc = list(_json_records(path))
            records = lambda: iter(doc)  # noqa: E731
        if self.options.format != "auto":
            fmt = get_format(self.options.format)
        else:
            fmt = _detect(str(path), records())
            if fmt is None:  # an empty file
                return
        # text parsed by orjson or read from Arrow is valid Unicode: batches can skip the row path
        valid_text = kind == "parquet" or (kind == "jsonl" and _loads is _VALIDATING_LOADS)
        to_batches = _grouped_batches if valid_text else _records_to_batches
        yield from to_batches(records(), str(path), path.name.split(".")[0], fmt, builder, asm)
        if asm.rows or asm.rejects:
            yield asm.emit()


# --- columns of plain text in curate's own layout, converted a batch at a time ----------------------

_TEXT_COLUMNS = ("id", "source_id", "problem", "thinking", "solution", "answer", "reference_answer", "domain",
                 "source", "teacher", "finish_reason", "test_fn_name")


def _columnar(options: ReadOptions, schema: pa.Schema) -> bool:
    """A table of text columns in curate's layout (problem, thinking, ...; no other column) converts
    column by column, with the per-row adapter's result (``_column_batches``)."""
    fmt_ok = options.format == "curate" or (options.format == "auto" and "thinking" in schema.names)
    return (fmt_ok and "problem" in schema.names and "generations" not in schema.names
            and all(f.name in _TEXT_COLUMNS and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
                    for f in schema))


def _text_column(t: pa.Table, name: str, fill: str | None = None, blank_is_null: bool = False) -> pa.ChunkedArray:
    """A text column as large strings (all null when absent); ``blank_is_null`` for the fields the
    per-row path reads as ``value or default``."""
    import pyarrow.compute as pc

    c = t.column(name).cast(pa.large_string()) if name in t.column_names else pa.chunked_array(
        [pa.nulls(t.num_rows, pa.large_string())])
    if blank_is_null:
        c = pc.if_else(pc.equal(c, _scalar("", pa.large_string())), pa.nulls(1, pa.large_string())[0], c)
    return c if fill is None else pc.fill_null(c, _scalar(fill, pa.large_string()))


def _column_batches(batches: Iterable[pa.RecordBatch], path: Path, builder: _RowBuilder,
                    asm: _BatchAssembler) -> Iterator[ReadBatch]:
    """``_convert_curate`` + ``_RowBuilder.finish`` on whole columns (10x the per-row path on
    100k rows). A batch with any row the per-row path would reject or question goes through the
    per-row path instead, so rejects and their reasons are the same."""
    import pyarrow.compute as pc

    from curate.schema import trace_id

    fmt, file, stem, opts, row0 = get_format("curate"), str(path), path.name.split(".")[0], builder.options, 0
    for rb in batches:
        t = pa.Table.from_batches([rb])
        n = t.num_rows
        col = partial(_text_column, t)

        problem, thinking, solution = col("problem"), col("thinking", ""), col("solution", "")
        source_id = pc.coalesce(col("source_id"), col("id"))
        domain = pc.coalesce(col("domain", blank_is_null=True),
                             _scalar(opts.domain or fmt.default_domain or "other", pa.large_string()))
        finish = col("finish_reason")
        blank = _scalar("", pa.large_string())
        bad = pc.or_kleene(pc.is_null(problem), pc.equal(pc.utf8_trim_whitespace(problem), blank))
        bad = pc.or_(bad, pc.and_(pc.equal(pc.utf8_trim_whitespace(thinking), blank),
                                  pc.equal(pc.utf8_trim_whitespace(solution), blank)))
        bad = pc.or_(bad, pc.invert(pc.is_in(domain, _values(tuple(DOMAINS), pa.large_string()))))
        bad = pc.or_(bad, pc.and_(pc.is_valid(finish), pc.invert(pc.is_in(finish, _values(_FINISH_REASONS,
                                                                                          pa.large_string())))))
        if opts.max_chars is not None:
            bad = pc.or_(bad, pc.greater(pc.add(pc.utf8_length(thinking), pc.utf8_length(solution)),
                                         _scalar(opts.max_chars, pa.int64())))
        ids = source_id.to_pylist()
        present = [i for i in ids if i is not None]
        clash = len(set(present)) < len(present) or any((file, i) in builder.seen_ids for i in present)
        # the per-row path says which row and why
        if clash or pc.any(pc.fill_null(bad, _scalar(True, pa.bool_()))).as_py():
            records = ((row0 + line, rec, raw) for line, rec, raw in _table_records([rb]))
            yield from _records_to_batches(records, file, stem, fmt, builder, asm)
            if asm.rows or asm.rejects:
                yield asm.emit()
            row0 += n
            continue
        builder.seen_ids.update(((file, i), k) for k, i in enumerate(ids, row0 + 1) if i is not None)
        p, th, so = problem.to_pylist(), thinking.to_pylist(), solution.to_pylist()
        source = None if opts.source else col("source", blank_is_null=True)
        teacher = None if opts.teacher else col("teacher")
        columns = {
            "id": _array([trace_id(a, b, c) for a, b, c in zip(p, th, so, strict=True)], pa.string()),
            "source_id": source_id, "problem": problem, "thinking": thinking, "solution": solution,
            "answer": col("answer"), "reference_answer": col("reference_answer"), "domain": domain,
            "source": (pc.fill_null(source, _scalar(stem, pa.large_string())) if source is not None
                       else _array([opts.source] * n, pa.string())),
            "teacher": teacher if teacher is not None else _array([opts.teacher] * n, pa.string()),
            "test_cases": pa.nulls(n, TRACE_SCHEMA.field("test_cases").type),
            "test_fn_name": col("test_fn_name"), "finish_reason": finish,
            "thinking_closed": pc.if_else(pc.equal(thinking, blank), pa.nulls(1, pa.bool_())[0],
                                          _scalar(True, pa.bool_())),
            "extra": pa.nulls(n, pa.large_string()),
        }
        traces = pa.Table.from_arrays([pa.chunked_array([columns[f.name]]) if not isinstance(
            columns[f.name], pa.ChunkedArray) else columns[f.name] for f in TRACE_SCHEMA], names=TRACE_SCHEMA.names)
        row0 += n
        yield ReadBatch(traces.cast(TRACE_SCHEMA), _empty_table(REJECT_READ_SCHEMA), n)


def _conform(table: pa.Table, target: pa.Schema, where: str) -> pa.Table:
    """Give every file's batches the schema of the first file (the one the pipeline plans with):
    annotation columns a later file lacks become nulls; columns the first file lacks are an error."""
    unknown = [n for n in table.column_names if n not in target.names]
    if unknown:
        raise InputError(
            f"{where}: has column(s) {', '.join(unknown)} that the first input file "
            "lacks; read files with different annotation columns separately"
        )
    cols = []
    for f in target:
        if f.name in table.column_names:
            if f.name in CORE_COLUMNS:
                _no_text_from_other_types(table.column(f.name).type, f, where)
            try:
                cols.append(table.column(f.name).cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                raise InputError(f"{where}: column {f.name!r} is {table.column(f.name).type}, "
                                 f"not {f.type} as in the first input file ({e})") from None
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=target)


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path if isinstance(path, Path) else _open(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None


class TableSource(Source):
    """An in-memory input: list of dicts, pyarrow Table, polars DataFrame or `datasets.Dataset`."""

    def __init__(self, obj: Any, options: ReadOptions, name: str):
        if type(obj).__name__ in ("DatasetDict", "IterableDatasetDict"):
            splits = ", ".join(obj)
            raise InputError(f"{name}: a DatasetDict holds several splits ({splits}); pass one, e.g. ds['train']")
        tabular = isinstance(obj, (pa.Table, pa.RecordBatch)) or type(obj).__module__.split(".")[0] in (
            "polars", "pandas", "datasets")
        if not tabular and (isinstance(obj, (str, bytes, dict)) or not hasattr(obj, "__iter__")):
            raise InputError(
                f"cannot read a {type(obj).__name__}: pass a path, a list of paths or records, a pyarrow "
                "Table, a polars DataFrame or a datasets.Dataset"
            )
        self.obj = obj
        self.options = options
        self.name = name
        self._fingerprint: str | None = None
        self._table: pa.Table | None = None

    def describe(self) -> dict[str, Any]:
        return {"in_memory": type(self.obj).__name__, "name": self.name, "format": self.options.format}

    def _arrow(self) -> pa.Table | None:
        if self._table is not None:
            return self._table
        obj = self.obj
        if isinstance(obj, pa.Table):
            self._table = obj
        elif isinstance(obj, pa.RecordBatch):
            self._table = pa.Table.from_batches([obj])
        elif type(obj).__module__.startswith("polars"):
            self._table = obj.to_arrow() if hasattr(obj, "to_arrow") else obj.collect().to_arrow()
        elif type(obj).__name__ == "Dataset" and hasattr(obj, "with_format"):
            self._table = obj.with_format("arrow")[:]  # honours select/shuffle index mappings
        elif type(obj).__module__.startswith("pandas"):
            self._table = pa.Table.from_pandas(obj, preserve_index=False)
        return self._table

    def schema(self) -> pa.Schema:
        table = self._arrow()
        if table is not None and _fast_path(self.options, table.schema):
            return _cast_curate(_empty_table(table.schema), self.name).schema.remove_metadata()
        return TRACE_SCHEMA

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(_options_key(self.options))
            table = self._arrow()
            if table is not None:
                sink = io.BytesIO()
                with pa.ipc.new_stream(sink, table.schema) as w:
                    w.write_table(table)
                h.update(sink.getvalue())
            else:
                for rec in self.obj:
                    h.update(_json_text(rec).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _records(self, batch_size: int) -> Iterator[tuple[int, Any, Any]]:
        table = self._arrow()
        if table is not None:
            return _table_records(table.to_batches(batch_size))
        return ((i, rec, None) for i, rec in enumerate(self.obj, 1))

    def batches(self, batch_size: int = 1024) -> Iterator[ReadBatch]:
        builder = _RowBuilder(self.options)
        asm = _BatchAssembler(batch_size, self.options)
        table = self._arrow()
        if table is not None and _fast_path(self.options, table.schema):
            yield from _curate_table_batches(table.to_batches(batch_size), self.name, asm)
            return
        if self.options.format != "auto":
            fmt = get_format(self.options.format)
        else:
            fmt = _detect(self.name, self._records(batch_size))
            if fmt is None:
                return
        yield from _records_to_batches(self._records(batch_size), self.name, self.name, fmt, builder, asm)
        if asm.rows or asm.rejects:
            yield asm.emit()


def _dataset_folder_files(p: Path) -> list[Path] | None:
    """The data shards of a curate dataset folder (one with a manifest.json), else None."""
    manifest = p / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        files = doc["output"]["files"]
    except (ValueError, KeyError, TypeError):
        return None
    configs = doc.get("configs") or {}
    if len(configs) > 1:  # variants have their own columns: one at a time
        raise InputError(f"{p}: the dataset has configs {', '.join(configs)}; read one of them, "
                         f"e.g. {p / 'data' / next(iter(configs))}")
    return [p / f for f in files]


def _expand(path: str | os.PathLike, skipped: list[dict[str, str]] | None = None) -> list[Path]:
    """The input files ``path`` names. A folder's files of a type curate does not read are an
    error naming each one and why, unless ``skipped`` is a list: then they are listed there."""
    if str(path).startswith("hf://"):
        raise InputError(f"{path}: read one hf:// path at a time (a glob in it selects several files)")
    p = Path(path)
    if p.is_dir():
        shards = _dataset_folder_files(p)
        if shards is not None:
            return shards
        found = sorted(
            q for q in p.rglob("*")
            if q.is_file() and not any(part.startswith((".", "_")) for part in q.relative_to(p).parts)
        )
        files = [q for q in found if _maybe_kind(q)]
        unsupported = [(q, why) for q in found if q not in files and (why := _unsupported(q))]
        listed = "; ".join(f"{q.relative_to(p)} ({why})" for q, why in unsupported[:10])
        listed += f"; and {len(unsupported) - 10} more" if len(unsupported) > 10 else ""
        if not files:
            raise InputError(f"{p}: directory holds no .jsonl, .json or .parquet files"
                             + (f", only: {listed}" if listed else ""))
        if unsupported and skipped is None:
            raise InputError(f"{p}: holds file(s) curate cannot read: {listed}. Convert or move "
                             "them, or pass skip_unsupported=True (recipe input: skip_unsupported: true) "
                             "to read the rest")
        if skipped is not None:
            skipped += [{"path": str(q), "reason": why} for q, why in unsupported]
        return files
    if any(ch in str(path) for ch in "*?["):
        files = sorted(Path(q) for q in globlib.glob(str(path), recursive=True) if Path(q).is_file())
        if not files:
            raise InputError(f"{path}: the pattern matches no file")
        for q in files:
            _kind(q)
        return files
    if not p.exists():
        raise InputError(f"{p}: no such file")
    _kind(p)
    return [p]


def _maybe_kind(p: Path) -> bool:
    try:
        _kind(p)
        return True
    except InputError:
        return False


def read_options(format: str = "auto", on_error: OnError = "reject", domain: str | None = None,
                 source: str | None = None, teacher: str | None = None, max_chars: int | None = None,
                 skip_unsupported: bool = False) -> ReadOptions:
    """Checked reader options (the keyword arguments of ``read``)."""
    if on_error not in ("reject", "raise"):
        raise ValueError(f"on_error must be 'reject' or 'raise', not {on_error!r}")
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, not {domain!r}")
    if format != "auto":
        try:
            get_format(format)
        except KeyError as e:
            raise InputError(str(e.args[0])) from None
    return ReadOptions(format, on_error, domain, source, teacher, max_chars, skip_unsupported)


def _unsupported(p: Path) -> str | None:
    """Why a folder's file is not read (None for documentation files, which are left out quietly)."""
    name = p.name.lower()
    if name.endswith(_DOC_FILES) or name.split(".")[0] in _DOC_NAMES:
        return None
    tool = _COMPRESSED.get(p.suffix.lower())
    if tool is not None:
        return f"{p.suffix} compression is not read, only .gz: decompress it ({tool}) or gzip it"
    kind = p.suffix.lower() or "no extension"
    return f"{kind}: not a type curate reads (.jsonl, .ndjson, .json, .parquet, optionally .gz)"


def read(
    data: Any,
    format: str = "auto",
    *,
    on_error: OnError = "reject",
    domain: str | None = None,
    source: str | None = None,
    teacher: str | None = None,
    max_chars: int | None = None,
    skip_unsupported: bool = False,
) -> Source:
    """Open traces for a pipeline: a path, glob, directory or list of paths, or an in-memory
    table (list of dicts, pyarrow Table, polars DataFrame, `datasets.Dataset`).

    ``format`` is one of ``curate formats`` (auto-detected from the first record by default).
    Row-level problems become rejects (``on_error="reject"``) or raise ``InputError``. A folder
    holding files of other types is an error naming them, unless ``skip_unsupported`` (then they
    are listed in ``describe()["skipped"]``, so in the run's manifest, and a warning says so).
    """
    options = read_options(format, on_error, domain, source, teacher, max_chars, skip_unsupported)
    if isinstance(data, Source):
        return data
    if isinstance(data, str) and data.startswith("hf://"):  # a hub dataset, streamed (curate.io.hub)
        from curate.io.hub import hub_source

        return hub_source(data, options)
    paths: list | None = None
    if isinstance(data, (str, os.PathLike)):
        paths = [data]
    elif isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
        paths = list(data)
    if paths is None:
        return TableSource(data, options, name=source or "<memory>")
    skipped: list[dict[str, str]] | None = [] if skip_unsupported else None
    src = FileSource([p for d in paths for p in _expand(d, skipped)], options)
    if skipped:
        src.skipped = skipped
        warnings.warn(f"skipped {len(skipped)} file(s) curate cannot read: "
                      + "; ".join(f"{s['path']} ({s['reason']})" for s in skipped), stacklevel=2)
    return src
