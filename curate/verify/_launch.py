"""The sandbox launcher: a fresh single-threaded interpreter that locks itself down, then execs.

``sandbox.run_python`` starts ``python -I -S -c <load this file> CONFIG`` instead of using
``preexec_fn``: the caller (a pool worker) has threads (polars, pyarrow), and running Python
between fork and exec in a threaded process can deadlock. This module imports only the standard
library so the launcher starts in milliseconds. Order: resource limits, network namespace,
Landlock, drop to the run's uid, RLIMIT_NPROC, parent-death signal, exec the target.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LL_FILE = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # execute, write, read, truncate, ioctl_dev
LL_READ = 1 | 4 | 8  # execute, read file, read dir
SETUP_FAILED = 125  # exit code when a layer could not be applied

_libc = ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    if not sys.platform.startswith("linux"):
        return 0
    return max(0, _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


def enter_netns() -> None:
    """A new, empty network namespace (as root, or through a user namespace)."""
    if _libc.unshare(CLONE_NEWNET) != 0 and _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock(read_paths: list[str], write_paths: list[str], abi: int) -> None:
    """Allow read/execute under ``read_paths``, everything under ``write_paths``, nothing else;
    with ABI >= 4 deny TCP bind/connect, with ABI >= 6 signals and abstract sockets outside."""
    fs = (1 << 13) - 1  # ABI 1 rights
    if abi >= 2:
        fs |= 1 << 13  # refer
    if abi >= 3:
        fs |= 1 << 14  # truncate
    if abi >= 5:
        fs |= 1 << 15  # ioctl_dev
    net = 3 if abi >= 4 else 0
    scoped = 3 if abi >= 6 else 0
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")

    def allow(path: str, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # a missing system folder is simply not allowed
        try:
            if not os.path.isdir(path):
                access &= LL_FILE
            rule = _PathBeneath(access & fs, fd)
            if _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")
        finally:
            os.close(fd)

    for p in read_paths:
        allow(p, LL_READ)
    for p in write_paths:
        allow(p, fs)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)


def launch(cfg: dict) -> None:
    """Apply every layer named in ``cfg``, then exec ``cfg['exec']`` (never returns)."""
    if cfg.get("probe") == "netns":
        enter_netns()
        os._exit(0)

    def lim(what: int, soft: int, hard: int | None = None) -> None:
        resource.setrlimit(what, (soft, soft if hard is None else hard))

    limits = cfg["limits"]
    lim(resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1)
    lim(resource.RLIMIT_AS, limits["memory_mb"] << 20)
    lim(resource.RLIMIT_FSIZE, limits["file_mb"] << 20)
    lim(resource.RLIMIT_NOFILE, limits["nofile"])
    lim(resource.RLIMIT_CORE, 0)
    if cfg["netns"]:
        enter_netns()
    if cfg["landlock_abi"]:
        landlock(cfg["read"], cfg["write"], cfg["landlock_abi"])
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    lim(resource.RLIMIT_NPROC, cfg["nproc"])
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
    os.execve(cfg["exec"][0], cfg["exec"], cfg["env"])


def main() -> None:
    try:
        launch(json.loads(sys.argv[1]))
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"curate-sandbox: setup failed: {type(e).__name__}: {e}\n".encode())
        os._exit(SETUP_FAILED)
