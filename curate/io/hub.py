"""Input from the Hugging Face Hub, read as a stream through huggingface_hub (no local copy).

``hf://datasets/ORG/NAME[@REVISION][/PATTERN]`` (a glob inside the repository) or
``read_hub("ORG/NAME", split="train", revision=...)``. The revision (a branch, tag or commit) is
resolved once to its commit and every file is read at that commit, so a run reads one fixed
snapshot and the manifest records it (``input.hub``). JSONL files stream over one HTTP request;
Parquet files are read by row group through ranged requests. The endpoint is ``$HF_ENDPOINT``.
"""

from __future__ import annotations

import fnmatch
import functools
import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import SimpleNamespace
from typing import Any

from curate.errors import InputError
from curate.io.read import FileSource, read_options

PREFIX = "hf://datasets/"
_DATA = (".jsonl", ".ndjson", ".json", ".parquet")
# the split keywords of `datasets` (datasets/data_files.py: a split named in a file or folder name)
SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
               "test": ("test", "testing", "eval", "evaluation")}


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


@functools.lru_cache(maxsize=4)
def _fs(endpoint: str | None):
    from huggingface_hub import HfFileSystem

    return HfFileSystem(endpoint=endpoint)


def _api():
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise InputError("reading from the Hugging Face Hub needs huggingface_hub: "
                         "pip install 'curate-cot[hf]'") from None
    return HfApi(endpoint=_endpoint())


class _GzipStream(gzip.GzipFile):
    """A gzip reader that also closes the remote stream under it."""

    def close(self) -> None:
        raw = self.fileobj
        super().close()
        if raw is not None:
            raw.close()


@dataclass(frozen=True)
class HubFile:
    """One data file of a hub dataset at a pinned commit; opens itself as a byte stream."""

    repo_id: str
    commit: str
    path: str  # inside the repository
    size: int
    endpoint: str | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}@{self.commit}/{self.path}"

    def resolve(self) -> HubFile:
        return self

    def stat(self) -> SimpleNamespace:
        return SimpleNamespace(st_size=self.size)

    def open(self, mode: str = "rb"):
        """Parquet: a seekable file (ranged reads); JSONL / JSON: one streamed download."""
        seekable = self.name.lower().removesuffix(".gz").endswith(".parquet")
        try:
            f = _fs(self.endpoint).open(str(self), "rb", **({} if seekable else {"block_size": 0}))
        except Exception as e:  # noqa: BLE001  (network and hub errors alike: name the file)
            raise InputError(f"{self}: cannot open ({type(e).__name__}: {e})") from None
        return _GzipStream(fileobj=f, mode="rb") if self.suffix == ".gz" else f


def parse_url(url: str) -> tuple[str, str | None, str]:
    """``hf://datasets/ORG/NAME[@REV][/PATTERN]`` -> (repo id, revision or None, pattern or '')."""
    if not url.startswith(PREFIX):
        raise InputError(f"{url}: a hub path starts with {PREFIX} (datasets only)")
    m = re.fullmatch(r"([^/@]+/[^/@]+)(?:@([^/]+))?(?:/(.*))?", url[len(PREFIX):])
    if not m:
        raise InputError(f"{url}: expected {PREFIX}ORG/NAME[@REVISION][/path or glob]")
    return m.group(1), m.group(2), m.group(3) or ""


def _is_data(path: str) -> bool:
    return path.lower().removesuffix(".gz").endswith(_DATA)


def split_of(path: str) -> str | None:
    """The split a file belongs to by the `datasets` naming convention, or None."""
    tokens = set(re.split(r"[-._ /]", path.lower()))
    return next((split for split, words in SPLIT_WORDS.items() if tokens & set(words)), None)


def resolve(repo_id: str, revision: str | None, pattern: str = "", split: str | None = None,
            config: str | None = None) -> tuple[str, list[HubFile]]:
    """(commit, data files) of a dataset repository at a revision: those matching ``pattern``, or
    those of ``split`` (and under folder ``config``); a repo without split names is all train."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api, at = _api(), f"{PREFIX}{repo_id}@{revision or 'main'}"
    try:
        commit = api.dataset_info(repo_id, revision=revision).sha
        entries = [e for e in api.list_repo_tree(repo_id, repo_type="dataset", revision=commit, recursive=True)
                   if getattr(e, "size", None) is not None]  # files, not folders
    except RevisionNotFoundError:
        raise InputError(f"{at}: the dataset has no revision {revision!r} (a branch, tag or commit)") from None
    except RepositoryNotFoundError:
        raise InputError(f"{at}: no such dataset repository (a private one needs HF_TOKEN)") from None
    except (HfHubHTTPError, OSError) as e:
        raise InputError(f"{at}: the hub did not answer ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not commit:
        raise InputError(f"{at}: the hub gave no commit for this revision")
    files = sorted((e.path, e.size) for e in entries if _is_data(e.path))
    if pattern:
        files = [f for f in files if fnmatch.fnmatchcase(f[0], pattern) or f[0] == pattern]
    else:
        if config:
            files = [f for f in files if config in PurePosixPath(f[0]).parts[:-1]]
        split = split or "train"
        named = [f for f in files if split_of(f[0]) is not None]
        files = [f for f in files if split_of(f[0]) == split] if named else (files if split == "train" else [])
    where = f"{PREFIX}{repo_id}@{revision or 'main'}" + (f"/{pattern}" if pattern else f" (split {split})")
    if not files:
        raise InputError(f"{where}: no .jsonl, .json or .parquet file (optionally .gz) matches")
    return commit, [HubFile(repo_id, commit, p, size, _endpoint()) for p, size in files]


def hub_source(url: str, options: Any, split: str | None = None, config: str | None = None):
    """A streaming Source over a hub dataset URL (see module docstring)."""
    repo_id, revision, pattern = parse_url(url)
    commit, files = resolve(repo_id, revision, pattern, split, config)
    return HubSource(files, options, hub={"repo": repo_id, "revision": revision or "main", "commit": commit,
                                         "pattern": pattern or None, "split": None if pattern else (split or "train"),
                                         "config": config})


def read_hub(repo_id: str, split: str = "train", revision: str | None = None, config: str | None = None,
             format: str = "auto", **options: Any) -> HubSource:
    """Open a split of a hub dataset for a pipeline (``read``'s options apply)."""
    url = f"{PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    return hub_source(url, read_options(format, **options), split, config)


class HubSource(FileSource):
    """A FileSource whose files live on the hub at one commit."""

    def __init__(self, paths: list[HubFile], options: Any, target: Any = None, hub: dict | None = None):
        super().__init__(paths, options, target)  # type: ignore[arg-type]
        self.hub = hub or {}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hub": self.hub}

    def fingerprint(self) -> str:
        """Content is fixed by the commit: hash it with the files' paths and sizes, no download."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(vars(self.options), sort_keys=True).encode())
            for p in self.paths:
                h.update(f"{p.repo_id}@{p.commit}/{p.path}:{p.size}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def splits(self) -> list[HubSource]:
        target = self.schema()
        return [HubSource([p], self.options, target, self.hub) for p in self.paths]
