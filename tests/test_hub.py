"""Input from the Hugging Face Hub, streamed through huggingface_hub from a loopback server that
speaks the hub's file API (revision info, tree listing, resolve with ranges), serving real traces."""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("huggingface_hub")

from curate import Pipeline, read  # noqa: E402
from curate.errors import InputError, RecipeError  # noqa: E402
from curate.io.hub import read_hub, split_of  # noqa: E402
from curate.recipe import load_recipe, run_recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO / "curate" / "data" / "real" / "traces"
V1, MAIN = "1" * 40, "2" * 40


def _records(name: str) -> list[dict]:
    return [json.loads(x) for x in gzip.open(TRACES / f"{name}.jsonl.gz", "rt", encoding="utf-8") if x.strip()]


def _parquet(records: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records), sink, row_group_size=8)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def hub() -> Iterator[dict]:
    """A dataset repo `someone/traces` with two commits: tag v1 has one train shard, main two
    train shards and a test split (gzipped JSONL) and a README."""
    amc = _records("skythought_corrupt07_32b_amc23")  # 40 real traces
    aime = _records("skythought_reflection10_32b_aime24")  # 30
    v1 = {"data/train-00000-of-00001.parquet": _parquet(amc[:20]), ".gitattributes": b"*.parquet filter=lfs\n"}
    main = {"data/train-00000-of-00002.parquet": _parquet(amc[:20]),
            "data/train-00001-of-00002.parquet": _parquet(amc[20:]),
            "data/test-00000-of-00001.jsonl.gz": gzip.compress("".join(json.dumps(r) + "\n" for r in aime).encode()),
            "README.md": b"---\nlicense: apache-2.0\n---\n# traces\n", ".gitattributes": b""}
    commits = {V1: v1, MAIN: main}
    refs = {"v1": V1, "main": MAIN, V1: V1, MAIN: MAIN}
    log: list[tuple[str, str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
            self.send_response(code)
            for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj, code: int = 200, headers: dict | None = None) -> None:
            self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _missing(self, what: str) -> None:
            self._json({"error": f"{what} not found"}, 404, {"X-Error-Code": what, "X-Error-Message": f"{what} not found"})

        def _route(self, head: bool) -> None:
            path = unquote(urlparse(self.path).path)
            log.append((self.command, path, self.headers.get("Range")))
            if path == "/api/datasets/someone/traces":  # no revision: the default branch
                path += "/revision/main"
            m = re.fullmatch(r"/api/datasets/someone/traces/(revision|tree)/([^/]+)(?:/(.*))?", path)
            if m:
                sha = refs.get(m.group(2))
                if sha is None:
                    return self._missing("RevisionNotFound")
                files = commits[sha]
                if m.group(1) == "revision":
                    return self._json({"id": "someone/traces", "sha": sha, "private": False,
                                       "siblings": [{"rfilename": f} for f in files]})
                return self._json([{"type": "file", "oid": f"{abs(hash(f)):x}", "size": len(b), "path": f}
                                   for f, b in sorted(files.items())]
                                  + [{"type": "directory", "oid": "0", "size": 0, "path": "data"}])
            m = re.fullmatch(r"/datasets/someone/traces/resolve/([^/]+)/(.+)", path)
            if not m:
                return self._missing("RepoNotFound")
            sha = refs.get(m.group(1))
            if sha is None or m.group(2) not in commits[sha]:
                return self._missing("EntryNotFound")
            body = commits[sha][m.group(2)]
            headers = {"ETag": f'"{sha}-{len(body)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            rng = self.headers.get("Range")
            if rng and not head:
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else len(body) - 1, len(body) - 1)
                if start >= len(body):
                    return self._send(416, b"", headers)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
                return self._send(206, body[start:end + 1], headers)
            return self._send(200, body, headers, head=head)

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"endpoint": f"http://127.0.0.1:{server.server_address[1]}", "log": log, "amc": amc, "aime": aime}
    server.shutdown()
    server.server_close()


@pytest.fixture
def on_hub(hub, monkeypatch, tmp_path) -> dict:
    monkeypatch.setenv("HF_ENDPOINT", hub["endpoint"])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # nothing may land in a cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub["log"].clear()
    return hub


def _texts(df) -> list[tuple[str, str]]:
    return list(zip(df["problem"].to_list(), df["thinking"].to_list()))


def test_split_names_follow_datasets() -> None:
    assert split_of("data/train-00000-of-00002.parquet") == "train"
    assert split_of("validation/part.jsonl") == "validation" and split_of("dev.jsonl") == "validation"
    assert split_of("data/test-00000-of-00001.jsonl.gz") == "test" and split_of("traces.jsonl") is None


def test_parquet_shards_stream_by_range_at_the_pinned_commit(on_hub, tmp_path) -> None:
    src = read_hub("someone/traces", split="train")
    local = read(TRACES / "skythought_corrupt07_32b_amc23.jsonl.gz").to_polars()
    got = src.to_polars()
    assert got.height == 40 and _texts(got) == _texts(local)
    assert set(got["source"]) == {"train-00000-of-00002", "train-00001-of-00002"}
    reads = [r for m, p, r in on_hub["log"] if m == "GET" and "/resolve/" in p]
    assert reads and all(r and r.startswith("bytes=") for r in reads)  # ranged reads, no whole download
    assert all(f"/resolve/{MAIN}/" in p for m, p, r in on_hub["log"] if "/resolve/" in p)  # one commit
    assert not any((tmp_path / "hf-home").rglob("*.parquet"))  # streamed, not copied to a cache


def test_jsonl_gz_by_url_with_glob_and_revision(on_hub) -> None:
    got = read("hf://datasets/someone/traces@main/data/test-*.jsonl.gz").to_polars()
    assert got.height == 30 and got["problem"].to_list() == [r["question"] for r in on_hub["aime"]]
    assert got["thinking"].str.len_chars().min() > 1000  # the real long traces came through whole


def test_recipe_hub_input_records_the_revision_in_the_manifest(on_hub, tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input: {hub: someone/traces, split: train, revision: v1}\n"
                      "steps:\n  - filter: {min_thinking_chars: 200}\noutput: {path: out}\n")
    result = run_recipe(recipe, out=tmp_path / "out", progress=False)
    hub_info = result.manifest["input"]["hub"]
    assert hub_info == {"repo": "someone/traces", "revision": "v1", "commit": V1, "pattern": None,
                        "split": "train", "config": None}
    assert result.manifest["input"]["paths"] == [f"hf://datasets/someone/traces@{V1}/data/train-00000-of-00001.parquet"]
    funnel = result.funnel.row(0, named=True)
    assert funnel["rows_in"] == 20 and result.rows + result.rejects("filter").height == 20
    # the same input read again gives the same fingerprint: a finished run is found, nothing re-read
    again = Pipeline(load_recipe(recipe).pipeline.steps).run(read_hub("someone/traces", revision="v1"),
                                                              out=tmp_path / "again", progress=False)
    assert again.manifest["input"]["fingerprint"] == result.manifest["input"]["fingerprint"]


def test_hub_errors_are_one_clear_line(on_hub, tmp_path) -> None:
    with pytest.raises(InputError, match=r"someone/traces@v9: the dataset has no revision 'v9'"):
        read_hub("someone/traces", revision="v9")
    with pytest.raises(InputError, match=r"split validation.*no \.jsonl"):
        read_hub("someone/traces", split="validation")
    with pytest.raises(InputError, match="one hf:// path at a time"):
        read(["hf://datasets/someone/traces", "hf://datasets/someone/other"])
    with pytest.raises(InputError, match="no such dataset repository"):
        read("hf://datasets/someone/missing")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {path: x.jsonl, revision: v1}\nsteps: []\n")
    with pytest.raises(RecipeError, match="go with hub"):
        load_recipe(bad)
