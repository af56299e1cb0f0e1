"""Which curate made a dataset, and the pip line that installs that same curate again.

The distribution is ``curate-cot`` (``curate`` on the package index is an unrelated project); the
import name stays ``curate``. The commit comes from pip's record of a VCS install (PEP 610
``direct_url.json``) or, for a source checkout, from git itself.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

DIST_NAME = "curate-cot"
_PACKAGE_DIR = Path(__file__).resolve().parent


def _direct_url() -> dict[str, Any]:
    """PEP 610 record of how the installed distribution was fetched ({} when absent)."""
    try:
        text = metadata.distribution(DIST_NAME).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return {}
    with contextlib.suppress(ValueError, TypeError):
        return json.loads(text or "{}")
    return {}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_PACKAGE_DIR.parent), *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def pip_url(url: str) -> str:
    """A git remote as pip's VCS URL: ``git@host:org/repo`` becomes ``https://host/org/repo``."""
    m = re.fullmatch(r"[\w.-]+@([\w.-]+):(.+)", url)
    if m:
        url = f"https://{m.group(1)}/{m.group(2)}"
    return url if url.startswith("git+") else f"git+{url}"


def source_info() -> dict[str, Any]:
    """distribution, version, and where known commit, repository url and dirty (uncommitted edits)."""
    from curate import __version__

    info: dict[str, Any] = {"distribution": DIST_NAME, "version": __version__}
    with contextlib.suppress(metadata.PackageNotFoundError):
        info["version"] = metadata.version(DIST_NAME)
    direct = _direct_url()
    vcs = direct.get("vcs_info") or {}
    if vcs.get("commit_id"):
        info.update(commit=vcs["commit_id"], url=pip_url(direct["url"]), dirty=False)
        return info
    if (_PACKAGE_DIR.parent / ".git").exists() and (commit := _git("rev-parse", "HEAD")):
        info["commit"] = commit
        info["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "curate"))
        if remote := _git("remote", "get-url", "origin"):
            info["url"] = pip_url(remote)
    return info


def install_line(source: dict[str, Any] | None, version: str | None = None) -> str:
    """The pip command that installs the curate a manifest records: the commit when a repository
    URL and commit are known, else the version (with the commit noted when it has no URL)."""
    source = source or {}
    version = source.get("version") or version or "0.1.0"
    commit, url = source.get("commit"), source.get("url")
    if commit and url:
        line = f'pip install "{DIST_NAME} @ {url}@{commit}"'
        return line + ("  # the run had uncommitted edits under curate/" if source.get("dirty") else "")
    line = f'pip install "{DIST_NAME}=={version}"'
    return line + (f"  # source commit {commit}" + (" + uncommitted edits" if source.get("dirty") else "")
                   if commit else "")
