"""Run untrusted Python in a sandbox: limits, isolation, and a verdict that says what stopped it.

Layers, each applied where the machine allows it (``isolation()`` reports which hold here):

- always (POSIX): its own session and process group (killed as a group), a fresh temporary
  working directory, a scrubbed environment, ``python -I``, and resource limits: RLIMIT_CPU,
  RLIMIT_AS, RLIMIT_FSIZE (stdout/stderr go to files, so the cap covers them too), RLIMIT_NOFILE,
  RLIMIT_CORE=0, RLIMIT_NPROC; plus a wall-clock limit enforced by the caller, and
  PR_SET_PDEATHSIG so the program dies with the worker that started it.
- ``netns``: a new, empty network namespace (``unshare(CLONE_NEWNET)``; as root, or through a
  user namespace): no interface but a down loopback, so every connect fails.
- ``landlock`` (Linux >= 5.13 with the LSM on): filesystem allow-list. Read/execute only under
  the interpreter's prefix and the system library folders, read/write only in the temporary
  directory; with ABI >= 4 TCP bind/connect are denied too, with ABI >= 6 signals to processes
  outside the sandbox are. Inherited by every child, cannot be lifted.
- ``seccomp`` (Linux x86_64/aarch64): a syscall filter denying what Landlock and the empty
  network namespace leave open: ``socket``/``socketpair`` of AF_UNIX (a pathname socket outside
  is reachable through neither), ``unshare``, ``setns`` and ``clone`` with namespace flags (a
  user namespace inside), and io_uring (which could connect without a syscall).
- ``uid`` (when running as root): the program runs as an unprivileged uid of its own, so
  RLIMIT_NPROC holds (the kernel does not apply it to root) and nothing root owns is writable;
  every process left with that uid is killed after the run (catches ``setsid`` escapes).

The layers are applied by a launcher (``_launch.py``: a fresh ``python -I -S`` that locks itself
down, then execs the program's interpreter), not by ``preexec_fn``: the pool workers that call
this have threads, and Python code between fork and exec in a threaded process can deadlock.

Where a layer is missing, what it covered is open: without ``netns`` and ``landlock`` the program
can reach the network; without ``landlock`` it can read what its uid can read; without ``uid``
(non-root) RLIMIT_NPROC counts all processes of the calling user.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from curate.ops.verify._launch import SETUP_FAILED, landlock_abi
from curate.ops.verify.pool import STARVED_FACTOR

_LAUNCH = str(Path(__file__).with_name("_launch.py"))

SANDBOX_UID_BASE = 600000  # unprivileged uids with no passwd entry, one per worker process


@dataclass(frozen=True)
class Limits:
    """Per-run limits. ``wall_s`` is enforced by the parent; the rest by the kernel."""

    wall_s: float = 4.0
    cpu_s: int = 3
    memory_mb: int = 1024  # address space: Python itself needs ~40 MB
    file_mb: int = 16
    nproc: int = 16
    nofile: int = 64
    output_chars: int = 1 << 20


@dataclass
class RunResult:
    status: str  # ok | exit | timeout | cpu_limit | memory_limit | file_limit | process_limit | denied | killed
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    reason: str = ""
    layers: tuple[str, ...] = field(default_factory=tuple)
    cpu: float = 0.0  # CPU seconds the program (and its waited-for children) used

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --- capabilities of this machine ------------------------------------------------------------


def _world_executable(path: str) -> bool:
    """Whether an unprivileged uid can run ``path`` (every folder on the way o+x, the file o+rx)."""
    p = Path(path).resolve()
    try:
        for parent in reversed(p.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(p).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IXOTH and mode & stat.S_IROTH)


def _launcher(cfg: dict) -> list[str]:
    """argv of the launcher: this interpreter, isolated, loading ``_launch.py`` by path (no package
    import, so no polars, no threads) and handing it ``cfg``."""
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('_curate_launch', sys.argv[2]); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); m.main()")
    return [sys.executable, "-I", "-S", "-c", code, json.dumps(cfg), _LAUNCH]


def _probe(layer: str) -> bool:
    """Whether the launcher can apply ``layer`` (netns, seccomp) on this machine."""
    try:
        r = subprocess.run(_launcher({"probe": layer}), timeout=20, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)  # noqa: S603
    except (subprocess.SubprocessError, OSError):
        return False
    return r.returncode == 0


_CAPS: dict[str, object] | None = None


def isolation() -> dict[str, object]:
    """What holds on this machine: interpreter used, and which layers (netns, landlock, seccomp, uid)."""
    global _CAPS
    if _CAPS is None:
        root = os.geteuid() == 0
        python = sys.executable
        uid = False
        if root:
            if not _world_executable(python):
                alt = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
                python = alt if alt and _world_executable(alt) else python
            uid = _world_executable(python)
        abi = landlock_abi()
        _CAPS = {
            "python": python,
            "netns": _probe("netns"),
            "seccomp": sys.platform.startswith("linux") and _probe("seccomp"),
            "landlock": abi > 0,
            "landlock_abi": abi,
            "uid": uid,
            "root": root,
        }
    return _CAPS


def _read_paths(python: str) -> list[str]:
    exe = Path(python).resolve()
    prefix = exe.parent.parent  # .../bin/python3 -> ...
    paths = {str(prefix), "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo",
             "/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/urandom", "/dev/zero"}
    if python == sys.executable:
        paths.update({sysconfig.get_paths()["stdlib"], sys.base_prefix})
    return sorted(paths)


# --- running ---------------------------------------------------------------------------------


def _user_procs(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


def _live_procs(uid: int) -> list[int]:
    """Processes of ``uid`` that are not zombies (a killed zombie waits for its reaper)."""
    live = []
    for pid in _user_procs(uid):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[-1].split()[0] != b"Z":
                live.append(pid)
    return live


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of the sandbox uid, until none is left (fork bombs respawn)."""
    for _ in range(50):
        pids = _live_procs(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(chars * 4 + 4)
    except OSError:
        return ""
    return data.decode("utf-8", "replace")[:chars]


def _classify(code: int | None, timed_out: bool, cpu: float, limits: Limits, stderr: str) -> tuple[str, str]:
    last = stderr.strip().splitlines()[-1][:300] if stderr.strip() else ""
    if code == SETUP_FAILED and "curate-sandbox: setup failed" in stderr:
        return "sandbox_error", last
    if timed_out:
        if cpu >= limits.cpu_s - 0.05:
            return "cpu_limit", f"CPU time limit ({limits.cpu_s}s) reached; killed"
        return "timeout", f"wall-clock limit ({limits.wall_s:g}s) reached; killed"
    if code == 0:
        return "ok", ""
    # SIGXCPU comes only from RLIMIT_CPU's soft limit: proof on its own (the measured CPU time can
    # read a little under the limit); SIGKILL is the hard limit when the CPU time says so
    if code == -signal.SIGXCPU or code == -signal.SIGKILL and cpu >= limits.cpu_s - 0.05:
        return "cpu_limit", f"CPU time limit ({limits.cpu_s}s) reached; killed"
    if code == -signal.SIGXFSZ:
        return "file_limit", f"file size limit ({limits.file_mb} MB) reached; killed"
    if "MemoryError" in stderr or code in (-signal.SIGSEGV, -signal.SIGABRT) and "memory" in stderr.lower():
        return "memory_limit", f"address-space limit ({limits.memory_mb} MB) reached: {last}"
    if "File too large" in stderr:
        return "file_limit", f"file size limit ({limits.file_mb} MB) reached: {last}"
    if "BlockingIOError" in stderr and "Resource temporarily unavailable" in stderr:
        return "process_limit", f"process limit (RLIMIT_NPROC={limits.nproc}) reached: {last}"
    if "PermissionError" in stderr or "Operation not permitted" in stderr:
        return "denied", f"blocked by the sandbox: {last}"
    if code is not None and code < 0:
        return "killed", f"killed by signal {signal.Signals(-code).name}: {last}"
    return "exit", f"exit code {code}: {last}"


def run_python(code: str, stdin: str = "", limits: Limits | None = None,
               files: dict[str, str] | None = None, argv: list[str] | None = None) -> RunResult:
    """Run ``code`` (as ``prog.py``) in a fresh sandbox with ``stdin``; never raises for what the code does.

    ``files`` are extra files written into the working directory first; ``argv`` replaces the
    default ``["prog.py"]`` script arguments (the call-based harness uses it).
    """
    limits = limits or Limits()
    caps = isolation()
    workdir = tempfile.mkdtemp(prefix="curate-sbx-")
    uid = SANDBOX_UID_BASE + os.getpid() % 100000 if caps["uid"] else None
    layers = ["rlimits", "pgroup", "tmpdir", "env"] + [k for k in ("netns", "landlock", "seccomp", "uid") if caps[k]]
    try:
        wd = Path(workdir)
        (wd / "prog.py").write_text(code)
        for name, text in (files or {}).items():
            (wd / name).write_text(text)
        (wd / ".stdin").write_text(stdin)
        if uid is not None:
            _kill_uid(uid)  # leftovers of an earlier run would count against RLIMIT_NPROC
            for p in [wd, *wd.iterdir()]:
                os.chown(p, uid, uid)
            nproc = limits.nproc
        else:
            nproc = limits.nproc + (len(_user_procs(os.getuid())) if sys.platform.startswith("linux") else 0)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}
        out_path, err_path = wd / ".stdout", wd / ".stderr"
        t0 = time.monotonic()
        with open(wd / ".stdin", "rb") as fin, open(out_path, "wb") as fout, open(err_path, "wb") as ferr:
            if uid is not None:
                os.fchown(fout.fileno(), uid, uid)
                os.fchown(ferr.fileno(), uid, uid)
            cfg = {
                "limits": {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                           "nofile": limits.nofile},
                "netns": bool(caps["netns"]),
                "landlock_abi": int(caps["landlock_abi"]) if caps["landlock"] else 0,
                "read": _read_paths(str(caps["python"])),
                "write": [workdir, "/dev/null"],
                "uid": uid,
                "nproc": nproc,
                "seccomp": bool(caps["seccomp"]),
                "exec": [str(caps["python"]), "-I", *(argv or ["prog.py"])],
                "env": env,
            }
            proc = subprocess.Popen(  # noqa: S603 - the point of this module
                _launcher(cfg), stdin=fin, stdout=fout, stderr=ferr, cwd=workdir, env=env,
                start_new_session=True, close_fds=True,
            )
            timed_out = False
            try:
                _, status, usage = os.wait4(proc.pid, 0) if limits.wall_s <= 0 else _wait(proc, limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - t0
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # background children of the program
        if uid is not None:
            _kill_uid(uid)
        cpu = usage.ru_utime + usage.ru_stime
        stdout = _tail(out_path, limits.output_chars)
        stderr = _tail(err_path, 20000)
        status_name, reason = _classify(proc.returncode, timed_out, cpu, limits, stderr)
        return RunResult(status_name, proc.returncode, stdout, stderr, seconds, reason, tuple(layers), cpu)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_delay(pid: int) -> float | None:
    """Seconds process ``pid`` has spent runnable but waiting for a CPU (``/proc/PID/schedstat``,
    second field, ns); None where the kernel does not keep it."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _wait(proc: subprocess.Popen, wall_s: float) -> tuple[int, int, resource.struct_rusage]:
    """wait4 with a wall-clock guard (polls; the child's rusage tells CPU limits from wall limits).
    The guard counts the time the program was not waiting for a CPU: on a loaded machine a program
    that only starts slowly is not killed as one that blocks (capped at ``STARVED_FACTOR`` times
    the limit, as the verify pool's guard is)."""
    start = time.monotonic()
    delay = 0.0005
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return pid, status, usage
        elapsed = time.monotonic() - start
        if elapsed >= wall_s:
            waited = _run_delay(proc.pid) or 0.0
            if elapsed - waited >= wall_s or elapsed >= wall_s * STARVED_FACTOR:
                raise subprocess.TimeoutExpired(proc.args, wall_s)
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
