"""Publishing a real dataset folder: the exact file list and commit message (dry run), one-line
failures without token or network, and a full upload against a loopback server that implements
the three hub endpoints huggingface_hub uses (create repo, preupload, commit)."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("PIL")
pytest.importorskip("huggingface_hub")

from click.testing import CliRunner  # noqa: E402

from curate import run_recipe  # noqa: E402
from curate.card.publish import PublishError, plan, publish  # noqa: E402
from curate.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("publish") / "quickstart"
    run_recipe(REPO / "pipelines" / "long_cot_sample.yaml", out, progress=False, keep_work=True, card=False)
    return out


@pytest.fixture
def folder(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "quickstart"
    shutil.copytree(built, copy)
    return copy


EXPECTED = ["README.md", "data/train-00000-of-00001.parquet", "manifest.json", "plots/funnel.png",
            "plots/thinking_length.png", "rejects/03-filter.parquet", "rejects/04-sample.parquet"]


def test_plan_lists_exact_files_and_commit_message(folder: Path) -> None:
    assert (folder / ".curate").is_dir()  # work files exist and must stay home
    shutil.copytree(folder / ".curate", folder / ".curate-cache")  # as a run without keep_work leaves them
    assert (folder / "run.log").is_file()  # the run's log (local paths) stays home too
    assert not (folder / "README.md").exists()
    p = plan(folder, "someone/quickstart-cot", private=True)
    assert p.card_written and (folder / "README.md").exists()
    assert p.files == EXPECTED
    manifest = json.loads((folder / "manifest.json").read_text())
    assert p.commit_message == (f"Upload quickstart: 50 rows (curate {manifest['curate_version']}, "
                                f"fingerprint {manifest['fingerprint'][:12]})")
    assert p.total_bytes == sum((folder / f).stat().st_size for f in EXPECTED)
    assert plan(folder, "someone/quickstart-cot", include_rejects=False).files == \
        [f for f in EXPECTED if not f.startswith("rejects/")]


def test_partial_and_hidden_files_are_never_published(folder: Path) -> None:
    """A kill during a shard write leaves `.train-*.parquet.PID.tmp` beside the shards."""
    (folder / "data" / ".train-00000-of-00001.parquet.4242.tmp").write_bytes(b"PAR1 half")
    (folder / "data" / "notes.tmp").write_text("x")
    (folder / ".curate.lock").write_text("{}")
    (folder / "data" / ".DS_Store").write_bytes(b"\0")
    files = plan(folder, "someone/quickstart-cot").files  # writes the card (and its plots) first
    assert files == EXPECTED


def test_cli_dry_run_prints_files_and_message_and_sends_nothing(folder: Path) -> None:
    res = CliRunner().invoke(main, ["publish", str(folder), "--repo-id", "someone/qs", "--dry-run",
                                    "--endpoint", "http://127.0.0.1:9"])
    assert res.exit_code == 0, res.output
    assert "commit message: Upload quickstart: 50 rows" in res.output
    listed = [line.split()[0] for line in res.output.splitlines() if line.startswith("  ")]
    assert listed == EXPECTED


@pytest.mark.parametrize("args, env, expect", [
    (["--repo-id", "someone/qs", "--endpoint", "http://127.0.0.1:9"], {"HF_TOKEN": "hf_x"}, "failed (ConnectError)"),
    (["--repo-id", "someone/qs"], {"HF_TOKEN": ""}, "no Hugging Face token"),
    (["--repo-id", "not a repo"], {}, "invalid --repo-id"),
])
def test_cli_failures_are_one_line_exit_2(folder: Path, tmp_path: Path, monkeypatch, args, env, expect) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login
    for k, v in env.items():
        if v:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    res = CliRunner().invoke(main, ["publish", str(folder), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], res.output
    assert "Traceback" not in res.output


class _FakeHub(BaseHTTPRequestHandler):
    """The hub endpoints create_repo + upload_folder call; records what it received."""

    calls: list[tuple[str, str, bytes]] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append(("POST", self.path, body))
        base = f"http://{self.headers['Host']}"
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            self._reply(200, {"url": f"{base}/datasets/{req['organization']}/{req['name']}"})
        elif path == "/api/validate-yaml":  # the hub checks the card's YAML before the upload
            self._reply(200, {})
        elif path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                        for f in files]})
        elif path.endswith("/commit/main"):
            repo = path.removeprefix("/api/datasets/").removesuffix("/commit/main")
            self._reply(200, {"commitUrl": f"{base}/datasets/{repo}/commit/0123abc", "commitOid": "0123abc"})
        else:
            self._reply(404, {"error": f"fake hub: no route {path}"})

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(("GET", self.path, b""))
        self._reply(404, {"error": f"fake hub: no route {self.path}"})


@pytest.fixture
def fake_hub() -> Iterator[tuple[str, list]]:
    _FakeHub.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _FakeHub.calls
    finally:
        server.shutdown()
        server.server_close()


def test_publish_uploads_every_planned_file_in_one_commit(folder: Path, fake_hub) -> None:
    endpoint, calls = fake_hub
    p = plan(folder, "someone/quickstart-cot", private=True)
    url = publish(p, token="hf_test", endpoint=endpoint)
    assert url == f"{endpoint}/datasets/someone/quickstart-cot/commit/0123abc"
    routes = [(m, path.split("?")[0]) for m, path, _ in calls]
    assert routes[0] == ("POST", "/api/repos/create")
    validated = [json.loads(body) for m, path, body in calls if path == "/api/validate-yaml"]
    assert validated and validated[0]["repoType"] == "dataset"
    assert validated[0]["content"] == (folder / "README.md").read_text()
    create = json.loads(calls[0][2])
    assert create == {"name": "quickstart-cot", "organization": "someone", "visibility": "private", "type": "dataset"}
    commits = [body for m, path, body in calls if path.split("?")[0].endswith("/commit/main")]
    assert len(commits) == 1
    items = [json.loads(line) for line in commits[0].splitlines() if line.strip()]
    assert items[0]["key"] == "header" and items[0]["value"]["summary"] == p.commit_message
    sent = {i["value"]["path"]: base64.b64decode(i["value"]["content"]) for i in items if i["key"] == "file"}
    assert sorted(sent) == EXPECTED
    assert sent["manifest.json"] == (folder / "manifest.json").read_bytes()
    assert sent["data/train-00000-of-00001.parquet"] == (folder / "data/train-00000-of-00001.parquet").read_bytes()


def test_publish_reports_hub_errors_in_one_line(folder: Path, fake_hub) -> None:
    endpoint, _ = fake_hub
    p = plan(folder, "someone/quickstart-cot")
    # the hub refuses the first call (create repo): no rights in this org
    _FakeHub.do_POST, original = (lambda self: self._reply(403, {"error": "You don't have the rights"})), _FakeHub.do_POST
    try:
        with pytest.raises(PublishError, match=r"^publishing to http://127\.0\.0\.1:\d+ failed \(\w+\): .*") as info:
            publish(p, token="hf_test", endpoint=endpoint)
    finally:
        _FakeHub.do_POST = original
    assert "\n" not in str(info.value)
