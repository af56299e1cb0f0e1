"""Exporters: a dataset folder of real traces to SFT `messages` and back to the Sky-T1 layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from curate import InputError, Pipeline, export, read
from curate.cli import main
from curate.prompts import SKY_T1_SYSTEM

FILES = ("skythought_correct5k27b_math500.jsonl", "skythought_reflection10_32b_aime24.jsonl")


@pytest.fixture(scope="module")
def dataset(shared_data, tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    """A dataset folder made from real traces: closed, truncated and unmarked responses."""
    out = tmp_path_factory.mktemp("export") / "ds"
    result = Pipeline([]).run(read([shared_data / "traces" / f for f in FILES]), out=out, progress=False)
    df = result.to_polars()
    closed = df["thinking_closed"].value_counts()
    assert set(closed["thinking_closed"].to_list()) == {True, False, None}
    return out, df


def back(path: Path, fmt: str) -> pl.DataFrame:
    return read(path, format=fmt, on_error="raise").to_polars()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_sky_t1_export_round_trips(dataset, tmp_path, suffix):
    folder, df = dataset
    out = tmp_path / f"sky{suffix}"
    assert export(folder, out, to="sky-t1") == df.height == 530
    again = back(out, "sky-t1")
    assert again.height == df.height
    for col in ("problem", "thinking", "solution", "id"):
        assert again[col].to_list() == df[col].to_list(), col
    # the exported id comes back as the source id, so results join to the export
    assert again["source_id"].to_list() == df["id"].to_list()
    # truncated traces stay truncated; closed ones stay closed
    orig = df["thinking_closed"].to_list()
    got = again["thinking_closed"].to_list()
    assert [g for o, g in zip(orig, got, strict=True) if o is not None] == [o for o in orig if o is not None]
    assert got.count(False) == orig.count(False) == 107


def test_sky_t1_export_layout(dataset, tmp_path):
    folder, df = dataset
    out = tmp_path / "sky.jsonl"
    export(folder, out, to="sky-t1")
    first = json.loads(out.open().readline())
    assert set(first) == {"id", "system", "conversations"}
    assert first["system"] == SKY_T1_SYSTEM
    user, asst = first["conversations"]
    assert user == {"from": "user", "value": df["problem"][0]}
    assert asst["from"] == "assistant"
    assert asst["value"].startswith("<|begin_of_thought|>\n\n" + df["thinking"][0][:50])
    assert asst["value"].endswith(df["solution"][0] + "\n\n<|end_of_solution|>")


def test_sky_t1_export_uses_sky_t1s_own_system_prompt(dataset, tmp_path):
    """`curate export --to sky-t1` writes the Sky-T1 system prompt verbatim (SkyThought@corrupt
    skythought/Qwen2.5-Math/evaluation/utils.py, "Sky-T1"), the one training and evaluation use."""
    folder, _ = dataset
    res = CliRunner().invoke(main, ["export", str(folder), str(tmp_path / "sky.jsonl"), "--to", "sky-t1"])
    assert res.exit_code == 0, res.output
    systems = {json.loads(line)["system"] for line in (tmp_path / "sky.jsonl").open()}
    assert systems == {SKY_T1_SYSTEM}
    assert SKY_T1_SYSTEM.startswith("Your role as an assistant involves thoroughly exploring questions")
    assert SKY_T1_SYSTEM.endswith("Now, try to solve the following question through the above guidelines:")
    assert hashlib.sha256(SKY_T1_SYSTEM.encode()).hexdigest() == \
        "7487b599a02fb6be689c19dec29c8fbb4933031de76dfe1fb546f2ef69a720d8"  # of the source's text
    from curate.train.template import SKY_T1

    assert SKY_T1.system_prompt == SKY_T1_SYSTEM


def test_messages_export_with_think_tags(dataset, tmp_path):
    folder, df = dataset
    out = tmp_path / "sft.jsonl"
    n = export(folder, out, to="messages", system_prompt="Please reason step by step.")
    rows = [json.loads(line) for line in out.open()]
    assert n == len(rows) == df.height
    truncated_at = df["thinking_closed"].to_list().index(False)
    for i in (0, truncated_at):
        msgs = rows[i]["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert msgs[1]["content"] == df["problem"][i]
        assert msgs[2]["content"].startswith("<think>\n" + df["thinking"][i])
    assert "</think>" in rows[0]["messages"][2]["content"]
    assert "</think>" not in rows[truncated_at]["messages"][2]["content"]  # left open, as the teacher did
    again = back(out, "messages")
    for col in ("problem", "thinking", "solution"):
        assert again[col].to_list() == df[col].to_list(), col
    assert {json.loads(e)["system"] for e in again["extra"]} == {"Please reason step by step."}


def test_messages_export_parquet_types_and_sky_markers(dataset, tmp_path):
    folder, df = dataset
    out = tmp_path / "sft.parquet"
    export(folder, out, to="messages", style="sky-t1")
    table = pq.read_table(out)
    assert table.schema.field("messages").type == pa.list_(
        pa.struct([("role", pa.string()), ("content", pa.large_string())]))
    content = table.column("messages")[0].as_py()[1]["content"]
    assert content.startswith("<|begin_of_thought|>")
    assert back(out, "messages")["thinking"].to_list() == df["thinking"].to_list()


def test_export_errors(dataset, tmp_path):
    folder, _ = dataset
    with pytest.raises(ValueError, match="to must be 'messages' or 'sky-t1', not 'alpaca'"):
        export(folder, tmp_path / "x.jsonl", to="alpaca")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x.csv: export writes .jsonl or .parquet"):
        export(folder, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="style must be 'think', 'sky-t1' or 'none', not 'xml'"):
        export(folder, tmp_path / "x.jsonl", style="xml")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no such dataset folder"):
        export(tmp_path / "missing", tmp_path / "x.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no dataset shards found"):
        export(tmp_path / "empty", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists() and not list(tmp_path.glob(".*.tmp"))


def test_export_of_a_variant_dataset_needs_a_config(tmp_path):
    from curate import Pipeline, read
    from curate.errors import InputError
    from curate.io.export import export
    from curate.ops import ShuffleSteps

    root = Path(__file__).resolve().parent.parent / "curate" / "data" / "samples"
    Pipeline([], variants={"clean": [], "shuffled": [ShuffleSteps(ratio=1.0)]}).run(
        read(root / "skythought_correct5k27b_minerva.jsonl"), out=tmp_path / "ds", card=False)
    with pytest.raises(InputError, match="has configs clean, shuffled; name one"):
        export(tmp_path / "ds", tmp_path / "x.jsonl")
    with pytest.raises(InputError, match="no config 'other'"):
        export(tmp_path / "ds", tmp_path / "x.jsonl", config="other")
    assert export(tmp_path / "ds", tmp_path / "x.jsonl", config="shuffled") == 60
