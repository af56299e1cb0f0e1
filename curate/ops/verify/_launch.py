"""The sandbox launcher: a fresh single-threaded interpreter that locks itself down, then execs.

``sandbox.run_python`` starts ``python -I -S -c <load this file> CONFIG`` instead of using
``preexec_fn``: the caller (a pool worker) has threads (polars, pyarrow), and running Python
between fork and exec in a threaded process can deadlock. This module imports only the standard
library so the launcher starts in milliseconds. Order: resource limits, network namespace,
Landlock, drop to the run's uid, RLIMIT_NPROC, parent-death signal, seccomp, exec the target.

The seccomp filter is a classic-BPF program built here and installed with
``prctl(PR_SET_SECCOMP)``: libseccomp's Python binding is not on the package index (Debian's
python3-seccomp serves the system interpreter only), and the launcher runs with ``-S`` (no
site-packages) to start fast, so a 30-line assembler is the dependency-free way.
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
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
AF_UNIX, SOCK_STREAM, SOCK_TYPE_MASK = 1, 1, 0xF
# clone() flags that make namespaces (CLONE_NEWTIME, 0x80, is unshare/clone3-only)
NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
# audit arch, then syscall numbers: socket, socketpair, clone, unshare, setns, clone3, io_uring_setup
_SYSCALLS = {
    "x86_64": (0xC000003E, dict(socket=41, socketpair=53, clone=56, unshare=272, setns=308, clone3=435,
                                io_uring_setup=425)),
    "aarch64": (0xC00000B7, dict(socket=198, socketpair=199, clone=220, unshare=97, setns=268, clone3=435,
                                 io_uring_setup=425)),
}

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


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k): deny (EPERM) ``socket(AF_UNIX)``, ``socketpair(AF_UNIX)``
    except connected stream pairs (asyncio's self-pipe), ``unshare``, ``setns``, ``clone`` with
    namespace flags, ``io_uring_setup`` (io_uring can connect without a syscall), every syscall of
    another ABI (x32, i386); ``clone3`` (flags behind a pointer) gets ENOSYS, so libc uses clone."""
    arch, nr = _SYSCALLS[machine]
    ld, jeq, jge, jset, ret, and_ = 0x20, 0x15, 0x35, 0x45, 0x06, 0x54
    allow, deny, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    arg0, arg1 = 16, 24  # low 32 bits of seccomp_data.args[0], args[1] (little-endian)
    prog: list[tuple] = [  # (code, true-label, false-label, k); labels resolve to jump offsets
        (ld, None, None, 4), (jeq, None, "deny", arch), (ld, None, None, 0), (jge, "deny", None, 0x40000000),
        (jeq, "socket", None, nr["socket"]), (jeq, "pair", None, nr["socketpair"]),
        (jeq, "deny", None, nr["unshare"]), (jeq, "deny", None, nr["setns"]),
        (jeq, "deny", None, nr["io_uring_setup"]), (jeq, "enosys", None, nr["clone3"]),
        (jeq, "clone", None, nr["clone"]), (ret, None, None, allow),
        "socket", (ld, None, None, arg0), (jeq, "deny", None, AF_UNIX), (ret, None, None, allow),
        "pair", (ld, None, None, arg0), (jeq, None, "allow", AF_UNIX), (ld, None, None, arg1),
        (and_, None, None, SOCK_TYPE_MASK), (jeq, "allow", "deny", SOCK_STREAM),
        "clone", (ld, None, None, arg0), (jset, "deny", None, NS_FLAGS),
        "allow", (ret, None, None, allow), "deny", (ret, None, None, deny), "enosys", (ret, None, None, enosys),
    ]
    labels, at = {}, 0
    for ins in prog:
        if isinstance(ins, str):
            labels[ins] = at
        else:
            at += 1
    out, at = [], 0
    for ins in prog:
        if isinstance(ins, str):
            continue
        code, jt, jf, k = ins
        out.append((code, labels[jt] - at - 1 if jt else 0, labels[jf] - at - 1 if jf else 0, k))
        at += 1
    return out


def install_seccomp() -> None:
    """Install the filter on this thread (after PR_SET_NO_NEW_PRIVS; inherited across exec)."""
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        raise OSError(0, f"no seccomp filter for {machine}")
    prog = seccomp_program(machine)
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def launch(cfg: dict) -> None:
    """Apply every layer named in ``cfg``, then exec ``cfg['exec']`` (never returns)."""
    if cfg.get("probe") == "netns":
        enter_netns()
        os._exit(0)
    if cfg.get("probe") == "seccomp":
        install_seccomp()
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
    if cfg.get("seccomp"):
        install_seccomp()
    os.execve(cfg["exec"][0], cfg["exec"], cfg["env"])


def main() -> None:
    try:
        launch(json.loads(sys.argv[1]))
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"curate-sandbox: setup failed: {type(e).__name__}: {e}\n".encode())
        os._exit(SETUP_FAILED)
