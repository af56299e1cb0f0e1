"""Readers: bad input (each case's exact outcome), every input kind, and re-reading curate output."""

from __future__ import annotations

import gzip
import importlib
import json
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import InputError, Pipeline, read
from curate.ops import ExtractAnswer
from curate.schema import TRACE_SCHEMA

TRACES = "skythought_correct5k27b_math500.jsonl"


@pytest.fixture(scope="module")
def real_lines(shared_data) -> list[str]:
    return (shared_data / "traces" / TRACES).read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def real_records(real_lines) -> list[dict]:
    return [json.loads(line) for line in real_lines[:40]]


def ids(source) -> list[tuple[str, str]]:
    df = source.to_polars()
    return list(zip(df["id"], df["source_id"], strict=True))


# --- bad input -------------------------------------------------------------------------------------


def _bad_lines(real_lines: list[str]) -> tuple[list[bytes], str]:
    """Ten input rows (real lines, each broken in one way) and the 2 MB trace's text."""
    recs = [json.loads(line) for line in real_lines[:8]]

    def with_(i: int, **changes) -> bytes:
        rec = {**recs[i], **changes}
        for k, v in changes.items():
            if v is _DROP:
                del rec[k]
        return json.dumps(rec, ensure_ascii=False).encode()

    big_thinking = (recs[0]["code"][0].split("<|begin_of_thought|>")[1].split("<|end_of_thought|>")[0].strip()
                    + "\n\n") * 1000
    big = f"<|begin_of_thought|>\n\n{big_thinking}<|end_of_thought|>\n\n<|begin_of_solution|>\n\n42\n\n<|end_of_solution|>"
    non_utf8 = with_(4).replace(b'"question": "', b'"question": "\xff\xfe', 1)
    rows = [
        real_lines[0].encode(),                      # 1 good
        real_lines[1].encode()[:300],                # 2 malformed JSON (cut line)
        with_(2, question=_DROP),                    # 3 missing required field
        with_(3, question=7),                        # 4 wrong type
        non_utf8,                                    # 5 not UTF-8
        with_(5, question="   "),                    # 6 empty problem
        with_(6, code=[""]),                         # 7 empty response
        with_(7, code=[big]),                        # 8 a 2 MB trace: fine
        real_lines[0].encode(),                      # 9 duplicate id (idx 0 again)
        b"[1, 2]",                                   # 10 not an object
    ]
    return rows, big_thinking.strip()


_DROP = object()

EXPECTED_REJECTS = {  # line -> reason
    3: "harness: field 'question': missing",
    4: "harness: field 'question': expected a string, got int",
    5: "not valid UTF-8 (byte 24 of the line)",
    6: "harness: field 'question': empty",
    7: "harness: field 'code[0]': empty: no thinking and no solution text",
    9: "harness: field 'source_id': duplicate id '0:0' (first seen at {file}:1)",
    10: "expected a JSON object, got list",
}


@pytest.fixture()
def bad_file(real_lines, tmp_path) -> tuple[Path, str]:
    rows, big_thinking = _bad_lines(real_lines)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(rows[:5]) + b"\n\n" + b"\n".join(rows[5:]) + b"\n")  # a blank line is no row
    return path, big_thinking


def test_bad_rows_become_rejects_with_file_line_and_field(bad_file):
    path, big_thinking = bad_file
    batches = list(read(path).batches())
    traces = pa.concat_tables([b.traces for b in batches]).to_pylist()
    rejects = pa.concat_tables([b.rejects for b in batches]).to_pylist()
    assert sum(b.rows for b in batches) == 10 == len(traces) + len(rejects)
    assert [t["source_id"] for t in traces] == ["0:0", "7:0"]
    assert len(traces[1]["thinking"]) == len(big_thinking) > 2_000_000 and traces[1]["thinking"] == big_thinking
    by_line = {r["line"]: r for r in rejects}
    assert sorted(by_line) == [2, 3, 4, 5, 7, 8, 10, 11]  # file lines (line 6 is blank)
    file_line = {2: 2, 3: 3, 4: 4, 5: 5, 6: 7, 7: 8, 9: 10, 10: 11}  # row number -> file line
    for row, reason in EXPECTED_REJECTS.items():
        got = by_line[file_line[row]]
        assert got["reject_reason"] == reason.format(file=path)
        assert got["source_file"] == str(path) and got["reject_step"] == "read"
    assert by_line[2]["reject_reason"].startswith("malformed JSON (")
    assert by_line[2]["raw"] == path.read_bytes().split(b"\n")[1].decode()
    assert "\\xff\\xfe" in by_line[5]["raw"]  # undecodable bytes are kept, escaped


def test_funnel_counts_read_rejects(bad_file, tmp_path):
    path, _ = bad_file
    result = Pipeline([]).run(read(path), out=tmp_path / "ds", progress=False)
    read_stage = result.funnel.row(0, named=True)
    assert (read_stage["name"], read_stage["rows_in"], read_stage["kept"], read_stage["rejected"]) == ("read", 10, 2, 8)
    rejects = result.rejects()
    assert rejects.height == 8 and set(rejects["reject_step"]) == {"read"}
    assert sorted(rejects["line"].to_list()) == [2, 3, 4, 5, 7, 8, 10, 11]
    assert result.to_polars().height == 2


@pytest.mark.parametrize(("row", "message"), [
    (2, r"malformed JSON"),
    (3, r"field 'question': missing"),
    (4, r"field 'question': expected a string, got int"),
    (5, r"not valid UTF-8"),
    (6, r"field 'question': empty"),
    (7, r"field 'code\[0\]': empty"),
    (9, r"field 'source_id': duplicate id '0:0'"),
    (10, r"expected a JSON object, got list"),
])
def test_on_error_raise_names_file_line_and_field(real_lines, tmp_path, row, message):
    rows, _ = _bad_lines(real_lines)
    path = tmp_path / "one_bad.jsonl"
    path.write_bytes(rows[0] + b"\n" + rows[row - 1] + b"\n")
    with pytest.raises(InputError, match=rf"^{path}:2: .*{message}"):
        read(path, on_error="raise").to_polars()
    assert read(path).to_polars().height == 1  # the default rejects the row instead


def test_a_2mb_trace_reads_fine(real_lines, tmp_path):
    rows, big_thinking = _bad_lines(real_lines)
    path = tmp_path / "big.jsonl"
    path.write_bytes(rows[7] + b"\n")
    assert len(rows[7]) > 2 * 1024 * 1024
    df = read(path, on_error="raise").to_polars()
    assert df["thinking"].to_list() == [big_thinking] and df["solution"].to_list() == ["42"]


def test_duplicate_ids_are_per_file(shared_data, tmp_path):
    # eval dumps number every file from 0: the same idx in two files is not a duplicate
    src = read([shared_data / "traces" / TRACES, shared_data / "traces" / "skythought_correct5k27b_minerva.jsonl"])
    df = src.to_polars()
    assert df.height == 772 and df.filter(pl.col("source_id") == "0:0")["source"].to_list() == [
        "skythought_correct5k27b_math500", "skythought_correct5k27b_minerva"]


def test_unknown_format_name():
    with pytest.raises(InputError, match=r"unknown format 'sky_t1'; known formats: sky-t1, openr1, .* or 'auto'"):
        read("whatever.jsonl", format="sky_t1")


def test_unknown_extension_and_missing_file(tmp_path):
    csv = tmp_path / "traces.csv"
    csv.write_text("question,answer\n1+1,2\n")
    with pytest.raises(InputError, match=r"traces.csv: unknown file type \(expected .jsonl, .ndjson, .json, .parquet"):
        read(csv)
    with pytest.raises(InputError, match=r"nope.jsonl: no such file"):
        read(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match=r"the pattern matches no file"):
        read(str(tmp_path / "*.jsonl"))
    with pytest.raises(InputError, match=r"directory holds no .jsonl, .json or .parquet files"):
        read(tmp_path)


def test_undetectable_format(shared_data, tmp_path):
    problems = shared_data / "problems" / "deepscaler_train_aime.json"  # problems without responses
    with pytest.raises(InputError, match=r"deepscaler_train_aime.json: cannot detect the trace format .*"
                                         r"\[problem, solution, answer, .*name it with format="):
        Pipeline([]).run(read(problems), out=tmp_path / "ds", progress=False)
    junk = tmp_path / "junk.jsonl"  # 300 lines, none an object: 300 rejects, not an error or no rows
    junk.write_text("1\n2\n" * 150)
    batches = list(read(junk).batches())
    reasons = [r["reject_reason"] for b in batches for r in b.rejects.to_pylist()]
    assert reasons == ["expected a JSON object, got int"] * 300


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("binary garbage", b"\x80\x81\xfe\xff\x00" * 50 + b"\n\xc3\x28\x00\x9f\n", "not valid UTF-8"),
    ("plain text", b"These are notes.\nNot JSON at all.\n", "malformed JSON (Expecting value at char 0)"),
    ("csv renamed", b"question,answer\n1+1,2\n2+2,4\n", "malformed JSON ("),
    ("latin-1", '{"question": "caf\xe9", "code": ["x"], "gt": "1"}\n'.encode("latin-1") * 3,
     "not valid UTF-8 (byte 17 of the line)"),
], ids=["binary", "text", "csv", "latin-1"])
def test_a_file_of_no_records_is_all_rejects_not_an_empty_input(tmp_path, name, content, reason):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    lines = [n for n, line in enumerate(content.split(b"\n"), 1) if line.strip()]
    result = Pipeline([]).run(read(path), out=tmp_path / "ds", progress=False)
    rejects = result.rejects()
    assert result.rows == 0 and sorted(rejects["line"].to_list()) == lines, name
    assert set(rejects["source_file"]) == {str(path)}
    assert all(r.startswith(reason) for r in rejects["reject_reason"]), (name, rejects["reject_reason"].to_list())


def test_malformed_json_reason_reads_well(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"question": "abc\n')
    rejects = [r for b in read(path).batches() for r in b.rejects.to_pylist()]
    assert [r["reject_reason"] for r in rejects] == ["malformed JSON (Unterminated string starting at char 13)"]


@pytest.fixture(params=["orjson", "stdlib"])
def json_parser(request, monkeypatch):
    """Both JSON parsers read.py may run with (orjson when installed, else the stdlib's)."""
    if request.param == "stdlib":
        r = importlib.import_module("curate.io.read")  # the module (curate.io.read is also the function)
        monkeypatch.setattr(r, "_loads", json.loads)
        monkeypatch.setattr(r, "_JSONError", (json.JSONDecodeError, ValueError, RecursionError))
    return request.param


def test_lone_surrogates_and_deep_nesting_are_rejects_not_crashes(real_lines, tmp_path, json_parser):
    good = json.loads(real_lines[0])
    lines = [
        real_lines[0],
        json.dumps({**good, "idx": 1, "question": "a \ud800 b"}),  # dumps writes the escape "\ud800"
        json.dumps({**good, "idx": 2})[:-1] + ', "deep": ' + "[" * 1000 + "]" * 1000 + "}",
        json.dumps({**good, "idx": 3})[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}",
        json.dumps({**good, "idx": 4}),
    ]
    assert "\\ud800" in lines[1]
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = Pipeline([]).run(read(path), out=tmp_path / "ds", progress=False)
    rejects = {r["line"]: r["reject_reason"] for r in result.rejects().iter_rows(named=True)}
    assert result.rows + len(rejects) == 5 and set(rejects) >= {2, 4}
    assert "surrogate" in rejects[2]
    assert "nested too deeply" in rejects[4]
    if 3 in rejects:  # 1000 levels: within orjson's limit, then too deep to keep as `extra` text
        assert "nested too deeply" in rejects[3]


def test_a_folder_with_files_curate_cannot_read_is_refused_unless_skipping(real_lines, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(real_lines[:3]) + "\n")
    (folder / "b.csv").write_text("question,answer\n1+1,2\n")
    (folder / "c.jsonl.bz2").write_bytes(b"BZh91AY&SY")
    (folder / "README.md").write_text("# notes\n")  # documentation is no data: left out quietly
    with pytest.raises(InputError, match=r"holds file\(s\) curate cannot read: b.csv \(.csv: not a type "
                                         r"curate reads.*c.jsonl.bz2 \(.bz2 compression is not read, only "
                                         r".gz: decompress it \(bunzip2\).*skip_unsupported"):
        read(folder)
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\).*b.csv.*c.jsonl.bz2"):
        src = read(folder, skip_unsupported=True)
    assert [p.name for p in src.paths] == ["a.jsonl"]
    result = Pipeline([]).run(src, out=tmp_path / "ds", progress=False)
    skipped = result.manifest["input"]["skipped"]
    assert [Path(s["path"]).name for s in skipped] == ["b.csv", "c.jsonl.bz2"] and result.rows == 3
    from curate.recipe import parse_recipe

    recipe = parse_recipe({"input": {"path": str(folder), "skip_unsupported": True}, "steps": []})
    with pytest.warns(UserWarning, match=r"skipped 2 file"):
        assert [p.name for p in recipe.source().paths] == ["a.jsonl"]


def test_an_integer_problem_column_is_an_error_not_text(tmp_path):
    cols = {f.name: pa.nulls(2, f.type) for f in TRACE_SCHEMA}
    cols.update(problem=pa.array([101, 102]), id=pa.array(["x", "y"]), domain=pa.array(["math", "math"]),
                thinking=pa.array(["t", "t"]))
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table(cols), path)
    with pytest.raises(InputError, match=r"ints.parquet: column 'problem' is int64, but trace schema v1 needs text"):
        read(path).to_polars()


def test_named_format_that_does_not_fit_rejects_every_row(shared_data, tmp_path):
    path = tmp_path / "five.jsonl"
    path.write_text("\n".join((shared_data / "traces" / TRACES).read_text().splitlines()[:5]) + "\n")
    result = Pipeline([]).run(read(path, format="sky-t1"), out=tmp_path / "ds", progress=False)
    assert result.funnel.row(0, named=True)["rejected"] == 5
    assert set(result.rejects()["reject_reason"]) == {"sky-t1: field 'conversations': missing"}


def test_empty_file_reads_as_no_rows(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert read(empty).to_polars().height == 0
    result = Pipeline([]).run(read(empty), out=tmp_path / "ds", progress=False)
    assert result.funnel.row(0, named=True)["rows_in"] == 0 and result.rows == 0


def test_broken_containers_give_input_errors_not_tracebacks(real_lines, tmp_path):
    bad_pq = tmp_path / "x.parquet"
    bad_pq.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(InputError, match=r"x.parquet: not a readable Parquet file"):
        read(bad_pq).to_polars()
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(("\n".join(real_lines[:20]) + "\n").encode())[:5000])
    with pytest.raises(InputError, match=r"t.jsonl.gz: cannot read the file"):
        read(gz).to_polars()
    doc = tmp_path / "t.json"
    doc.write_text('[{"question": "a",\n "code": ["b"], "gt": "1"},\n {"question": ]')
    with pytest.raises(InputError, match=r"t.json:3:15: malformed JSON: Expecting value"):
        read(doc).to_polars()


def test_curate_parquet_with_a_wrongly_typed_column(tmp_path):
    table = TRACE_SCHEMA.empty_table().to_pylist()
    cols = {f.name: pa.nulls(1, f.type) for f in TRACE_SCHEMA}
    cols.update(problem=pa.array(["p"], pa.large_string()), id=pa.array(["x"]), domain=pa.array(["math"]),
                thinking_closed=pa.array(["yes"]))
    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table(cols), path)
    assert table == []
    with pytest.raises(InputError, match=r"column 'thinking_closed' is string, but trace schema v1 needs bool"):
        Pipeline([]).run(read(path), out=tmp_path / "ds", progress=False)


def test_bad_arguments_to_read():
    with pytest.raises(ValueError, match="on_error must be 'reject' or 'raise'"):
        read([{"a": 1}], on_error="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="domain must be one of"):
        read([{"a": 1}], domain="biology")
    with pytest.raises(InputError, match="cannot read a int"):
        read(5)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"a": 1}])})
    with pytest.raises(InputError, match=r"a DatasetDict holds several splits \(train\); pass one"):
        read(dd)


# --- every input kind gives the same traces -------------------------------------------------------


def test_json_jsonl_gz_parquet_and_in_memory_inputs_agree(real_lines, real_records, tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(real_lines[:40]) + "\n")
    expected = ids(read(jsonl))
    assert len(expected) == 40 and expected[3][1] == "3:0"

    as_json = tmp_path / "t.json"
    as_json.write_text(json.dumps(real_records))
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    as_parquet = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(real_records), as_parquet)
    hf = datasets.Dataset.from_list(real_records)
    for data in (as_json, gz, as_parquet, pa.Table.from_pylist(real_records), pl.DataFrame(real_records),
                 real_records, hf):
        assert ids(read(data)) == expected, type(data)
    # a Dataset view (select) is honoured
    assert ids(read(hf.select(range(5, 10)))) == expected[5:10]
    # extra keeps the list-valued per-response fields sliced, from Arrow as from JSON
    row = read(as_parquet).to_polars().row(0, named=True)
    assert json.loads(row["extra"])["score"] is True


def test_directory_and_glob_inputs(real_lines, tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(real_lines[:3]) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text("\n".join(real_lines[3:5]) + "\n")
    (tmp_path / ".hidden.jsonl").write_text("garbage\n")
    (tmp_path / "_tmp").mkdir()
    (tmp_path / "_tmp" / "c.jsonl").write_text("garbage\n")
    (tmp_path / "notes.txt").write_text("not data")
    assert read(tmp_path).to_polars()["source"].to_list() == ["a"] * 3 + ["b"] * 2
    assert read(str(tmp_path / "**" / "*.jsonl")).to_polars().height == 5


# --- curate output read back ----------------------------------------------------------------------


def test_curate_output_folder_reads_back_with_typed_annotations(real_lines, tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(real_lines[:60]) + "\n")
    first = Pipeline([ExtractAnswer()]).run(read(src), out=tmp_path / "a", progress=False)
    before = first.to_polars()
    again = read(tmp_path / "a")  # the folder: its manifest names the shards
    assert again.schema().field("answer_method").type == pa.string()
    df = again.to_polars()
    assert df.equals(before)
    assert read(tmp_path / "a" / first.manifest["output"]["files"][0]).to_polars().equals(before)
    # and a pipeline over it keeps the annotation columns, with their types
    second = Pipeline([]).run(read(tmp_path / "a"), out=tmp_path / "b", progress=False)
    schema = pq.read_schema(tmp_path / "b" / second.manifest["output"]["files"][0])
    assert schema.field("answer_method").type == pa.string()
    assert second.to_polars()["answer_method"].to_list() == before["answer_method"].to_list()
    assert second.funnel.row(0, named=True)["rows_in"] == 60


def test_curate_table_annotations_of_other_types_survive(real_lines, tmp_path):
    base = read([json.loads(line) for line in real_lines[:20]]).to_polars()
    annotated = base.with_columns(
        verify_correct=pl.Series([i % 3 == 0 if i % 5 else None for i in range(20)], dtype=pl.Boolean),
        difficulty_pass_rate=pl.Series([i / 8 for i in range(20)], dtype=pl.Float64),
        structure_steps=pl.Series([[i, i + 1] for i in range(20)], dtype=pl.List(pl.Int32)),
    )
    path = tmp_path / "annotated.parquet"
    annotated.write_parquet(path)
    for data in (path, annotated, annotated.to_arrow(), datasets.Dataset(annotated.to_arrow())):
        src = read(data)
        schema = src.schema()
        assert schema.field("verify_correct").type == pa.bool_()
        assert schema.field("difficulty_pass_rate").type == pa.float64()
        assert schema.field("structure_steps").type.value_type == pa.int32()
        result = Pipeline([]).run(src, out=tmp_path / f"out-{type(data).__name__}", progress=False)
        out = result.to_polars()
        assert out["verify_correct"].to_list() == annotated["verify_correct"].to_list()
        assert out["difficulty_pass_rate"].to_list() == annotated["difficulty_pass_rate"].to_list()
        assert out["structure_steps"].to_list() == annotated["structure_steps"].to_list()


def test_curate_table_rows_with_empty_problem_are_rejected(real_lines, tmp_path):
    base = read([json.loads(line) for line in real_lines[:5]]).to_polars()
    broken = base.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(pl.lit(" ")).otherwise(pl.col("problem")).alias("problem"))
    path = tmp_path / "broken.parquet"
    broken.write_parquet(path)
    result = Pipeline([]).run(read(path), out=tmp_path / "ds", progress=False)
    assert result.funnel.row(0, named=True)["rejected"] == 1 and result.rows == 4
    rej = result.rejects().row(0, named=True)
    assert (rej["reject_reason"], rej["line"]) == ("curate: field 'problem': empty", 3)
    with pytest.raises(InputError, match=r"broken.parquet:3: curate: field 'problem': empty"):
        read(path, on_error="raise").to_polars()


def test_mixed_files_take_the_first_files_columns(real_lines, tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(real_lines[:10]) + "\n")
    first = Pipeline([ExtractAnswer()]).run(read(src), out=tmp_path / "a", progress=False)
    shard = tmp_path / "a" / first.manifest["output"]["files"][0]
    more = tmp_path / "more.jsonl"
    more.write_text("\n".join(real_lines[10:15]) + "\n")
    mixed = Pipeline([]).run(read([shard, more]), out=tmp_path / "b", progress=False).to_polars()
    assert mixed.height == 15
    assert mixed["answer_method"].null_count() == 5  # the JSONL rows have no annotation yet
    with pytest.raises(InputError, match=r"train-00000-of-00001.parquet: has column\(s\) answer_method that the first input file lacks"):
        read([more, shard]).to_polars()


@pytest.mark.parametrize("options", [{}, {"source": "S", "teacher": "T", "domain": "science", "max_chars": 40}])
def test_text_columns_convert_as_the_per_row_path_does(tmp_path, monkeypatch, options):
    """A Parquet of plain text columns in curate's layout is converted column by column; traces and
    rejects (empty problem, duplicate id, bad domain, over max_chars) equal the per-row adapter's."""
    reader = importlib.import_module("curate.io.read")  # the module (curate.io.read is also the function)
    table = pa.table({
        "id": ["a", "b", None, "d", "e", "a", "g", "h"],
        "problem": ["P1", "P2 ", "P3", "P4", "P5", "P6", "  ", "P8"],
        "thinking": ["t", None, "", "x", "y", "z", "w", "v" * 50],
        "solution": ["s", "s2", "sol", None, "", "q", "r", "u"],
        "source": ["", None, "src", "s", "s", "s", "s", "s"],
        "domain": ["math", "", None, "code", "math", "math", "math", "chemistry"],
        "answer": ["", None, "1", "2", "3", "4", "5", "6"],
        "teacher": [None, "", "m", "m", "m", "m", "m", "m"],
        "finish_reason": ["stop", None, "length", None, "unknown", None, None, None],
    })
    path = tmp_path / "texts.parquet"
    pq.write_table(table, path)
    clean = tmp_path / "clean.parquet"
    pq.write_table(table.slice(0, 5), clean)

    columnar_check, grouped = reader._columnar, reader._grouped_batches

    def batches(p: Path, columnar: bool) -> tuple[pa.Table, pa.Table]:
        monkeypatch.setattr(reader, "_columnar", columnar_check if columnar else lambda *a: False)
        monkeypatch.setattr(reader, "_grouped_batches", grouped if columnar else reader._records_to_batches)
        got = list(read(p, **options).batches(4))
        return pa.concat_tables([b.traces for b in got]), pa.concat_tables([b.rejects for b in got])

    for p in (path, clean):
        fast, slow = batches(p, True), batches(p, False)
        assert fast[0].equals(slow[0]) and fast[1].equals(slow[1])
    assert slow[0].num_rows == 5 and slow[1].num_rows == 0
    assert batches(path, False)[1].num_rows >= 2


# --- JSONL batches built column by column (issue 19) ---------------------------------------------------


def _all_batches(source, batch_size: int) -> list[tuple[pa.Table, pa.Table, int]]:
    return [(b.traces, b.rejects, b.rows) for b in source.batches(batch_size)]


def _column_and_record_paths(make_source, batch_size: int) -> tuple[list, list, int]:
    """The batches of ``make_source()`` read as shipped (clean JSONL batches built column by column)
    and with the per-record path only; and how many batches the column path built."""
    reader = importlib.import_module("curate.io.read")  # the module (curate.io.read is also the function)
    built = []
    finish_group = reader._finish_group

    def counted(*args, **kwargs):
        table = finish_group(*args, **kwargs)
        built.append(table is not None)
        return table

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "_finish_group", counted)
        column = _all_batches(make_source(), batch_size)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "_grouped_batches", reader._records_to_batches)
        record = _all_batches(make_source(), batch_size)
    return column, record, sum(built)


def _assert_same_batches(column: list, record: list) -> None:
    assert [b[2] for b in column] == [b[2] for b in record]  # the same batch boundaries
    for (ct, cr, _), (rt, rr, _) in zip(column, record, strict=True):
        assert ct.schema.equals(rt.schema, check_metadata=True) and ct.equals(rt)
        assert cr.schema.equals(rr.schema, check_metadata=True) and cr.equals(rr)


def _shipped_recipe_sources() -> list[tuple[str, object]]:
    from curate.recipe import load_recipe

    found = []
    for recipe in sorted((Path(__file__).resolve().parent.parent / "pipelines").glob("*.yaml")):
        r = load_recipe(recipe)
        if "path" in r.input:
            found.append((recipe.name, r.source))
    return found


@pytest.mark.parametrize("batch_size", [1024, 7])
def test_jsonl_column_path_equals_per_record_path_on_shipped_recipe_inputs(batch_size):
    """Every shipped recipe's input (harness layout, 1 to 8 responses a record) reads to the same
    batches, rows, rejects and boundaries either way; batch_size 7 cuts records' responses apart."""
    sources = _shipped_recipe_sources()
    assert len(sources) >= 8
    for name, make_source in sources:
        column, record, built = _column_and_record_paths(make_source, batch_size)
        _assert_same_batches(column, record)
        assert sum(b[2] for b in column) > 0 and built > 0, name


def test_jsonl_column_path_equals_per_record_path_on_real_files(samples_dir, shared_data, tmp_path):
    """The samples, every real trace and response file, and a LIMO-layout file made from the real
    training problems (str, int and list answers, ids, a nested field)."""
    files = sorted(samples_dir.glob("*.jsonl")) + sorted((shared_data / "traces").glob("*.jsonl"))
    files += sorted((shared_data / "responses").glob("*.jsonl"))
    problems = json.loads((shared_data / "problems" / "deepscaler_train_aime.json").read_text())
    limo = tmp_path / "limo.jsonl"
    with limo.open("w", encoding="utf-8") as f:
        for i, p in enumerate(problems):
            answer = [p["answer"]] if i % 7 == 3 else int(p["answer"]) if i % 5 == 1 and p["answer"].isdigit() else p["answer"]
            f.write(json.dumps({"id": f"a{i}", "question": p["problem"], "answer": answer,
                                "solution": f"Think.\n\nSo the answer is $\\boxed{{{p['answer']}}}$.",
                                "meta": {"year": p.get("year"), "tags": ["aime", "é\u0001\t"]}},
                               ensure_ascii=i % 2 == 0) + "\n")
    for path in [*files, limo]:
        fmt = "limo" if path == limo else "auto"
        for options in ({}, {"source": "S", "teacher": "T", "domain": "science", "max_chars": 200_000}):
            column, record, built = _column_and_record_paths(lambda p=path, f=fmt, o=options: read(p, f, **o), 64)
            _assert_same_batches(column, record)
            assert built == len(column) > 0, path.name  # clean files: every batch built column-wise


def test_jsonl_bad_lines_mixed_in_read_as_the_per_record_path_does(real_lines, tmp_path):
    """Each kind of bad line, in a file of good ones: the batches holding one go the per-record way
    (same rejects, reasons, rows and boundaries), the clean batches around them column by column."""
    rows, _ = _bad_lines(real_lines)
    good = [line.encode() for line in real_lines[10:190]]
    extra_bad = [
        b"",                                                           # blank line
        json.dumps({**json.loads(real_lines[11]), "input_output": '{"inputs": ["1"], "outputs": ["2"]}'}).encode(),
        json.dumps({**json.loads(real_lines[12]), "gt": 7.5, "idx": 512}).encode(),   # numeric reference
        json.dumps({**json.loads(real_lines[13]), "idx": 513, "finish_reason": ["stop"]}).encode(),
        json.dumps({**json.loads(real_lines[14]), "idx": 514, "code": []}).encode(),  # no response
        json.dumps({**json.loads(real_lines[15]), "idx": 515, "code": "text"}).encode(),  # not a list
        b'{"question": "q", "code": ["a"], "gt": "1", "idx": 516, "deep": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        real_lines[16].encode()[:-1] + b', "idx": 10}',                # duplicate key: the last wins
    ]
    lines = []
    for k, line in enumerate(good):
        lines.append(line)
        if k % 9 == 4:  # each bad line once, then a few again
            lines.append((rows[1:] + extra_bad)[(k // 9) % (len(rows) - 1 + len(extra_bad))])
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    for batch_size in (3, 8):
        for options in ({}, {"max_chars": 30_000}):
            column, record, built = _column_and_record_paths(lambda o=options: read(path, **o), batch_size)
            _assert_same_batches(column, record)
            rejects = pa.concat_tables([b[1] for b in record]).num_rows
            assert rejects >= 15 and 0 < built < len(column)
    for row in (rows[1], rows[5], good[3]):  # on_error="raise": the same error, file and line
        one = tmp_path / "raise.jsonl"
        one.write_bytes(b"\n".join([*good[:20], row]) + b"\n")
        errors = []
        for route in ("column", "record"):
            with pytest.MonkeyPatch.context() as mp:
                if route == "record":
                    reader = importlib.import_module("curate.io.read")
                    mp.setattr(reader, "_grouped_batches", reader._records_to_batches)
                with pytest.raises(InputError) as e:
                    _all_batches(read(one, on_error="raise"), 8)
                errors.append(str(e.value))
        assert errors[0] == errors[1] and f"{one}:21: " in errors[0]


def test_batches_built_through_polars_equal_pyarrows_own(real_lines):
    """``_arrow_table`` (polars, no pandas import) builds what ``pa.Table.from_pydict`` does."""
    reader = importlib.import_module("curate.io.read")
    rows = [dict.fromkeys(TRACE_SCHEMA.names) for _ in range(3)]
    rows[0].update(id="x", problem="p", thinking="", solution="é\x00", domain="code", thinking_closed=False,
                   test_cases=[{"input": "1", "output": "2"}, {"input": "", "output": "\n"}])
    rows[1].update(id="y", problem="q" * 100_000, thinking="t", solution="s", domain="math", test_cases=[],
                   thinking_closed=True, extra='{"a": 1}')
    columns = {f.name: [r[f.name] for r in rows] for f in TRACE_SCHEMA}
    ours = reader._arrow_table(columns, TRACE_SCHEMA)
    theirs = pa.Table.from_pydict(columns, schema=TRACE_SCHEMA)
    assert ours.schema.equals(theirs.schema, check_metadata=True) and ours.equals(theirs)
    assert ours.column("test_cases").to_pylist()[0][1] == {"input": "", "output": "\n"}
    empty = reader._arrow_table({f.name: [] for f in reader.REJECT_READ_SCHEMA}, reader.REJECT_READ_SCHEMA)
    assert empty.equals(pa.Table.from_pylist([], schema=reader.REJECT_READ_SCHEMA))


def test_parquet_records_column_path_equals_per_record_path(shared_data, tmp_path):
    """Parquet in another layout (harness rows, as the hub serves them) goes record by record through
    the adapter, then batch by batch through the same column path as JSONL."""
    recs = [json.loads(line) for f in sorted((shared_data / "traces").glob("*.jsonl")) for line in f.open()]
    recs = [r for r in recs if "solution" not in r or isinstance(r["solution"], str)]  # one type per column
    for i, r in enumerate(recs):
        r["idx"] = i  # each file numbers its rows from 0: unique ids in the one file
    recs[5]["question"] = "  "  # one reject: that batch goes the per-record way
    path = tmp_path / "harness.parquet"
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in ("idx", "question", "gt", "code", "pred", "score")}
                                         for r in recs]), path)
    column, record, built = _column_and_record_paths(lambda: read(path), 100)
    _assert_same_batches(column, record)
    assert 0 < built == len(column) - 1 and sum(b[1].num_rows for b in column) == 1
