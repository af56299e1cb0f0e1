"""The output folder of a run: one writer at a time, no partial files, filesystem failures in one line.

Two runs on one folder would delete each other's files; ``folder_lock`` takes an exclusive
``flock`` on ``OUT/.curate.lock`` (released by the kernel when the process dies, so a killed run
never leaves a stale lock) and a second run is told who holds it. Partial files (``.NAME.PID.tmp``,
left by a kill or a full disk during a write) are removed when a run starts. Old trees (a replaced
dataset, stale stages) go to ``Trash``: moved aside at once, deleted while the run goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from curate.errors import PipelineError

LOCK_NAME = ".curate.lock"
TRASH_NAME = ".curate-trash"


@contextlib.contextmanager
def folder_lock(out: Path, command: str | None = None) -> Iterator[None]:
    """Hold ``out`` for this process; raise PipelineError naming the holder when another has it."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise PipelineError(f"{out} is being written by another curate run ({_holder(path)}); "
                                "wait for it to finish, stop it, or choose another --out") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # the lock goes with the descriptor; the file stays (unlinking it would race)


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        h = {}
    if not h:
        return "it is just starting"
    what = f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}"
    return what + (f": {h['command']}" if h.get("command") else "")


class Trash:
    """Removes trees of an output folder on a helper thread: ``discard`` renames one into
    ``OUT/.curate-trash/`` (atomic: the path is free at once, and a kill never leaves half a
    stage where stages are looked for), then deletes it while the run goes on (deleting a few
    hundred parts waits on the disk, seconds when their inodes are no longer cached). ``close``
    waits for the deletions; what a killed run left in the trash goes at the next run's start."""

    def __init__(self, out: Path):
        self.folder = out / TRASH_NAME
        self._pool = ThreadPoolExecutor(1)
        if self.folder.is_dir():
            for old in self.folder.iterdir():
                self._pool.submit(shutil.rmtree, old, True)

    def discard(self, path: Path) -> None:
        """Take ``path`` (a folder, or a file) away now; it is deleted in the background."""
        if not path.exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        dest = self.folder / f"{path.name}-{uuid.uuid4().hex[:12]}"
        os.replace(path, dest)
        if dest.is_dir():
            self._pool.submit(shutil.rmtree, dest, True)
        else:
            self._pool.submit(dest.unlink, True)

    def close(self) -> None:
        """Wait for every deletion; the trash folder goes when it is empty."""
        self._pool.shutdown(wait=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


def remove_partial_files(out: Path) -> int:
    """Delete ``.NAME.PID.tmp`` files a killed run left anywhere under ``out``; returns how many."""
    n = 0
    for p in out.rglob(".*.tmp"):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def filesystem_error(e: OSError, out: Path) -> PipelineError | None:
    """One line saying what to do for a failure of the output folder's filesystem, else None."""
    text = str(e)
    where = e.filename or out
    if e.errno in _NO_SPACE or "No space left on device" in text or "Disk quota exceeded" in text:
        return PipelineError(f"no space left on the device holding {out} (writing {where}); free some space "
                             "or choose another --out, then run the same command again: it resumes")
    if e.errno == errno.EROFS or "Read-only file system" in text:
        return PipelineError(f"{out} is on a read-only file system; choose another --out")
    if e.errno in (errno.EACCES, errno.EPERM) and _under(where, out):
        return PipelineError(f"cannot write {where}: permission denied; make {out} writable or choose another --out")
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and _under(where, out):
        blocker = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), out)
        return PipelineError(f"--out {out}: {blocker} is a file, not a folder; choose another --out")
    return None


def _under(path: object, out: Path) -> bool:
    try:
        p = Path(os.fsdecode(path)).resolve()
    except (TypeError, ValueError, OSError):
        return False
    return p == out or out in p.parents or p in out.parents
