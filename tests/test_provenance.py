"""The distribution name is free of the unrelated `curate` on PyPI, and a card's reproduce line
installs this project at the commit the manifest records."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from curate import provenance
from curate.provenance import DIST_NAME, install_line, pip_url, source_info

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_distribution_name_and_self_references() -> None:
    text = (REPO / "pyproject.toml").read_text()  # (tomllib is not in Python 3.10)
    assert re.search(r'^name = "([^"]+)"', text, re.M).group(1) == DIST_NAME == "curate-cot"
    # `pip index versions curate` lists someone else's 0.1 ... 0.15
    assert '"curate[' not in text and '"curate-cot[ray]"' in text


def test_install_line_prefers_the_commit() -> None:
    src = {"version": "0.1.0", "commit": "a" * 40, "url": pip_url("git@github.com:org/curate.git")}
    assert install_line(src) == f'pip install "curate-cot @ git+https://github.com/org/curate.git@{"a" * 40}"'
    assert install_line({"version": "0.1.0"}) == 'pip install "curate-cot==0.1.0"'
    assert install_line(None, "0.1.0") == 'pip install "curate-cot==0.1.0"'  # manifests from before
    assert install_line({"version": "0.1.0", "commit": "b" * 40}).endswith(f"# source commit {'b' * 40}")


def test_manifest_and_card_record_the_checkout_commit(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.fail("run the tests from a git checkout: the card's install line needs the commit")
    from curate import Pipeline, read
    from curate.card import write_card

    out = tmp_path / "ds"
    Pipeline([]).run(read(REPO / "curate" / "data" / "samples" / "skythought_correct5k27b_minerva.jsonl"),
                     out=out, progress=False)
    write_card(out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["curate_source"]["commit"] == _git("rev-parse", "HEAD")
    assert m["curate_source"]["distribution"] == "curate-cot"
    card = (out / "README.md").read_text()
    assert install_line(m["curate_source"]) in card and "pip install curate==" not in card


def test_pip_installs_the_recorded_commit_and_it_reports_itself(tmp_path: Path, monkeypatch) -> None:
    """`pip install "curate-cot @ git+URL@COMMIT"`, run for real from this repository (a file:// URL),
    installs this project; the installed copy records the same commit and prints the same line."""
    commit = _git("rev-parse", "HEAD")
    url = f"git+file://localhost{REPO}"  # pip 23 refuses an empty host in a requirement
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), f"{DIST_NAME} @ {url}@{commit}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    code = ("import json, curate, curate.provenance as p; "
            "print(json.dumps([curate.__file__, p.source_info(), p.install_line(p.source_info())]))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    file, info, line = json.loads(shown.stdout)
    assert file.startswith(str(target))
    assert info["commit"] == commit and info["url"] == url
    assert line == f'pip install "curate-cot @ {url}@{commit}"'


def test_source_info_outside_a_checkout(monkeypatch) -> None:
    monkeypatch.setattr(provenance, "_direct_url", lambda: {})
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", Path("/nonexistent/curate"))
    info = source_info()
    assert "commit" not in info and install_line(info).startswith('pip install "curate-cot==')
