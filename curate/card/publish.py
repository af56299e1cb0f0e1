"""Publish a dataset folder to the Hugging Face hub: create the dataset repo if needed, upload
the card, plots, manifest, data and (by default) rejects in one commit.

Everything up to the network call (which files, the commit message, the token) is decided by
``plan`` so ``--dry-run`` and the tests see exactly what would be sent. Hub and network failures
become one ``PublishError`` line; the CLI prints it and exits 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from curate.card.card import CARD, write_card
from curate.errors import CurateError

LOG_FILE = "run.log"  # the run's log: local only, never uploaded
# above this, use the resumable multi-commit uploader when this huggingface_hub has one
LARGE_BYTES = 5 << 30


class PublishError(CurateError):
    """The dataset could not be published (no token, bad repo id, hub or network failure)."""


@dataclass
class Plan:
    """What a publish sends: the repo, the files (relative to the folder), the commit message."""

    folder: Path
    repo_id: str
    private: bool
    files: list[str]
    total_bytes: int
    commit_message: str
    card_written: bool  # README.md was missing and was generated for this upload

    @property
    def large(self) -> bool:
        return self.total_bytes > LARGE_BYTES

    def describe(self) -> str:
        lines = [f"repo: datasets/{self.repo_id} ({'private' if self.private else 'public'})",
                 f"commit message: {self.commit_message}",
                 f"{len(self.files)} files, {self.total_bytes:,} bytes"
                 + (" (resumable large-folder upload)" if self.large else "") + ":"]
        lines += [f"  {f}  ({(self.folder / f).stat().st_size:,} bytes)" for f in self.files]
        return "\n".join(lines)


def plan(folder: str | Path, repo_id: str, *, private: bool = False, include_rejects: bool = True) -> Plan:
    """Decide what to upload; writes the card first when the folder has none."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    root = Path(folder)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise PublishError(f"{root}: no manifest.json: not a finished curate dataset folder")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"invalid --repo-id {repo_id!r}: {str(e).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise PublishError(f"invalid --repo-id {repo_id!r}: use <user-or-org>/<name>")
    card_written = not (root / CARD).exists()
    if card_written:
        write_card(root)
    files = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*")
        if p.is_file() and _publishable(p.relative_to(root).parts)
        and (include_rejects or p.relative_to(root).parts[0] != "rejects")
    )
    manifest = json.loads(manifest_path.read_text())
    configs = manifest.get("configs") or {}
    what = f"{manifest['output']['rows']:,} rows" + (f" in {len(configs)} configs" if configs else "")
    message = (f"Upload {root.resolve().name}: {what} (curate {manifest.get('curate_version')}, "
               f"fingerprint {str(manifest.get('fingerprint'))[:12]})")
    total = sum((root / f).stat().st_size for f in files)
    return Plan(root, repo_id, private, files, total, message, card_written)


def _publishable(parts: tuple[str, ...]) -> bool:
    """Not the work folder, the stage cache, the lock, any other dot-file (a partial
    ``.NAME.PID.tmp`` write among them), a ``.tmp`` file or the run's log."""
    return (not any(part.startswith(".") for part in parts) and not parts[-1].endswith(".tmp")
            and parts != (LOG_FILE,))


def publish(p: Plan, *, token: str | None = None, endpoint: str | None = None) -> str:
    """Create the dataset repo (if needed) and upload the planned files; returns the commit URL."""
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    where = endpoint or api.endpoint
    try:
        api.create_repo(p.repo_id, repo_type="dataset", private=p.private, exist_ok=True)
        if p.large and hasattr(api, "upload_large_folder"):
            api.upload_large_folder(repo_id=p.repo_id, folder_path=p.folder, repo_type="dataset",
                                    allow_patterns=p.files, private=p.private)
            return f"{where}/datasets/{p.repo_id}"
        info = api.upload_folder(repo_id=p.repo_id, folder_path=p.folder, repo_type="dataset",
                                 commit_message=p.commit_message, allow_patterns=p.files)
    except Exception as e:  # any hub/HTTP/network failure: one line, no traceback
        first = (str(e).strip().splitlines() or [""])[0]
        raise PublishError(f"publishing to {where} failed ({type(e).__name__}): {first}") from None
    return str(getattr(info, "commit_url", info))
