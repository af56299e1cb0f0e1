"""A process pool with a per-item budget enforced from the parent.

An item's budget is CPU time (the worker's, read from ``/proc``), so a verdict depends on the item,
not on how busy the machine is; wall-clock time is only an outer guard (``wall_factor`` times the
budget plus ``wall_slack_s``) for an item that blocks without using CPU (a worker that is
runnable, only waiting for a CPU, gets ten times as long). A worker that dies
mid-item (killed, out of memory) has its item retried once in a fresh worker before the item is
reported as a crash.

Why not ``concurrent.futures``: a future cannot be cancelled once it runs, and killing one of its
workers breaks the whole executor. math-verify's own timeout is a ``SIGALRM`` that only works in a
main thread and cannot interrupt a C call that never returns to the interpreter, so a verifier
needs a parent that watches the clock, kills the one worker that ran over and carries on.

Workers are forks of one fresh interpreter, the *zygote* (``python -c``, talking over a socketpair
with ``multiprocessing.connection``), not forks of the parent: the parent has polars' threads, forking
it is unsafe, and ``spawn``/``forkserver`` re-run the caller's ``__main__`` (a script without the
``if __name__ == "__main__"`` guard would start pools recursively). The zygote imports the heavy
modules once (calling their ``warmup()`` if they have one) and has no threads; each worker is a
``fork`` of it, so it starts in milliseconds with the imports and warm caches already in place
(one interpreter's start-up for the whole pool, and a killed worker is replaced at once, with no
warm spare waiting). The zygote is each worker's parent: it reaps them and reports exit codes.
An item's clock starts only when a ready worker starts running it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import pickle
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from curate.cpus import available_cpus

_READY = "ready"
DEPTH = 2  # items sent to a worker ahead: the one it runs and the next
POLL_S = 0.05  # how often running items' CPU time is read
# a runnable process waiting for a CPU (a loaded machine) is killed by a wall-clock guard only after
# 10x as long: the pool's workers and the code sandbox's programs alike
STARVED_FACTOR = 10
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds() -> float:
    """This process's CPU time, its waited-for children's included (as ``_proc_cpu`` counts it)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _proc_stat(pid: int) -> tuple[float, bool] | None:
    """CPU seconds of process ``pid`` and its waited-for children, and whether it is runnable
    (state R: running, or waiting for a CPU); None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(x) for x in fields[11:15]) / _TICK, fields[0] == b"R"  # utime, stime, cutime, cstime


def _proc_cpu(pid: int) -> float | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[0]


@dataclass(frozen=True)
class Failed:
    """What a slot holds when an item did not produce a value."""

    kind: str  # "timeout" | "crash" | "error"
    message: str
    seconds: float


# Workers must not import from the caller's working directory (a `timeit.py` there would shadow
# the stdlib in every worker): -P (3.11+) leaves it off sys.path; the code drops it on 3.10.
_SAFE_PATH = ("-P",) if sys.version_info >= (3, 11) else ()
# Ctrl-C reaches the terminal's whole process group: the parent stops the pool, so workers ignore
# SIGINT (else each prints a KeyboardInterrupt traceback).
_ZYGOTE_CODE = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
                "from curate.ops.verify.pool import _zygote; _zygote(int(sys.argv[1]))")


def _zygote(fd: int) -> None:
    """Zygote main: import the preload modules, say ready, then fork a worker per request (its
    socket comes with the request) and reap workers when asked, until told to stop."""
    import importlib
    import logging
    from multiprocessing.reduction import recv_handle

    conn = Connection(fd)
    fn, preload = pickle.loads(conn.recv_bytes())
    for name in preload:
        module = importlib.import_module(name)
        warm = getattr(module, "warmup", None)
        if callable(warm):
            warm()  # first calls build parsers and caches: once, shared by every fork
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)  # timeouts are reported in the verdict
    gc.freeze()  # what the zygote holds stays out of the forks' collections: their pages stay shared
    # a check allocates thousands of sympy objects, nearly all freed by reference counting: the
    # default thresholds (700, 10, 10) ran ~660 collections per 2,000 math rows, 0.3 CPU s of ~6
    gc.set_threshold(10_000, 20, 20)
    conn.send(_READY)
    children: set[int] = set()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = None
        if msg is None:
            for pid in children:  # told to stop (or the parent is gone): no worker outlives us
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
                _reap(pid, None)
            return
        what, arg = msg
        if what == "fork":
            child = recv_handle(conn)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    conn.close()
                    _serve(Connection(child), fn)
                    code = 0
                finally:
                    os._exit(code)
            os.close(child)
            children.add(pid)
            conn.send(pid)
        elif what == "wait":
            pid, timeout = arg
            code = _reap(pid, timeout)
            if code is not None:
                children.discard(pid)
            conn.send(code)


def _reap(pid: int, timeout: float | None) -> int | None:
    """Wait up to ``timeout`` seconds (None: for ever) for child ``pid``; its exit code as
    ``Popen.returncode`` gives it (-N: killed by signal N), or None while it still runs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:
            return -9  # already reaped: only an exit we caused can be missed this way
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """Worker main (a fork of the zygote): say ready, then answer (index, item) messages."""
    conn.send(_READY)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, item = msg
        try:
            value = fn(item)
            conn.send((index, True, value, time.monotonic(), _cpu_seconds()))
        except BaseException as e:  # noqa: BLE001 - the worker must report and live on
            tail = traceback.format_exception_only(type(e), e)[-1].strip()
            conn.send((index, False, tail[:500], time.monotonic(), _cpu_seconds()))


class _Zygote:
    """The parent's end of the zygote: start it (not waiting for its imports), fork workers, reap them."""

    def __init__(self, fn: Callable[[Any], Any], preload: Sequence[str]):
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])  # the folder holding the curate package
        env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, *_SAFE_PATH, "-c", _ZYGOTE_CODE, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env, close_fds=True,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send_bytes(pickle.dumps((fn, tuple(preload))))
        self.ready = False

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the zygote has imported and warmed up (a clear error if it died or hung)."""
        if self.ready:
            return
        try:
            if not self.conn.poll(timeout_s):
                raise RuntimeError(f"verify worker not ready after {timeout_s:g}s")
            self.ready = self.conn.recv() == _READY
        except (EOFError, OSError):
            raise RuntimeError(f"verify worker failed to start (exit code {self.process.wait()})") from None

    def fork(self, timeout_s: float = 120.0) -> _Worker:
        """A new worker, connected and about to say ready."""
        from multiprocessing.reduction import send_handle

        self.wait_ready(timeout_s)
        ours, theirs = socket.socketpair()
        try:
            self.conn.send(("fork", None))
            send_handle(self.conn, theirs.fileno(), self.process.pid)
            pid = self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"verify worker pool's zygote died (exit code {self.process.poll()})") from None
        finally:
            theirs.close()
        return _Worker(_Forked(pid, self), Connection(ours.detach()))

    def reap(self, pid: int, timeout: float | None) -> int | None:
        try:
            self.conn.send(("wait", (pid, timeout)))
            return self.conn.recv()
        except (EOFError, OSError):
            return None

    def close(self) -> None:
        """Stop the zygote (it kills and reaps any worker left); kill it if it does not stop."""
        if self.ready:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)
        if self.process.poll() is None:  # still importing, or stuck: nothing of value in it
            self.process.kill()
            self.process.wait()
        self.conn.close()


@dataclass
class _Forked:
    """A forked worker's process: its pid, and kill/wait through its parent, the zygote."""

    pid: int
    zygote: _Zygote
    returncode: int | None = None

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, 9)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if it still runs after ``timeout`` seconds."""
        if self.returncode is None:
            self.returncode = self.zygote.reap(self.pid, timeout)
        return self.returncode


@dataclass
class _Worker:
    process: _Forked
    conn: Connection
    ready: bool = False
    queue: deque = field(default_factory=deque)  # (index, item, sent) in flight, running one first
    started: float = 0.0  # when the running item started
    cpu_started: float | None = None  # the worker's CPU seconds then (None: not known)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self.conn.close()


_EARLY: dict[tuple[Callable[[Any], Any], tuple[str, ...]], _Zygote] = {}


def start_early(fn: Callable[[Any], Any], preload: Sequence[str]) -> None:
    """Launch the zygote a pool of ``fn`` with these ``preload`` modules will ask for, now: its
    imports then run beside the caller's own (``curate run`` calls this before importing polars),
    and the pool's ``launch`` adopts it. One not adopted is stopped at exit."""
    key = (fn, tuple(preload))
    if key not in _EARLY:
        if not _EARLY:
            atexit.register(_close_early)
        _EARLY[key] = _Zygote(fn, preload)


def _close_early() -> None:
    while _EARLY:
        _EARLY.popitem()[1].close()


class WorkerPool:
    """Map a top-level function over items in ``workers`` processes, each item bounded by a budget.

    ``map`` returns one entry per item, in order: the function's value, or a :class:`Failed`
    (``timeout``: killed after ``timeout_s`` of CPU time, or the wall-clock guard; ``crash``: the
    worker died twice on it, e.g. out of memory; ``error``: the function raised). A killed or dead
    worker is replaced by a fresh fork of the zygote and the run goes on.
    """

    def __init__(self, fn: Callable[[Any], Any], workers: int, timeout_s: float,
                 preload: Sequence[str] = (), wall_factor: float = 4.0, wall_slack_s: float = 5.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.fn, self.n, self.timeout_s = fn, workers, timeout_s
        self.wall_factor, self.wall_slack_s = wall_factor, wall_slack_s
        self.preload = tuple(preload)
        self.zygote: _Zygote | None = None
        self.workers: list[_Worker] = []
        self.replaced = 0  # workers killed or lost and replaced
        self.last_seconds: list[float] = []  # per item of the last map: time from send to answer

    # --- worker processes ------------------------------------------------------------------------
    def launch(self) -> None:
        """Start the zygote's imports in the background and return at once (``map`` and ``start``
        wait for them): a caller with other work to do first overlaps the two."""
        if self.zygote is None:
            self.zygote = _EARLY.pop((self.fn, self.preload), None) or _Zygote(self.fn, self.preload)

    def _start(self) -> _Worker:
        self.launch()
        assert self.zygote is not None
        return self.zygote.fork()

    def _ensure(self) -> None:
        while len(self.workers) < self.n:
            self.workers.append(self._start())

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = self._start()
        self.replaced += 1

    def start(self, timeout_s: float = 120.0) -> None:
        """Start every worker and wait until all have imported and warmed up."""
        self.launch()
        assert self.zygote is not None
        self.zygote.wait_ready(timeout_s)
        self._ensure()
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            while not w.ready:
                if not w.conn.poll(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"verify worker not ready after {timeout_s:g}s")
                try:
                    w.ready = w.conn.recv() == _READY
                except (EOFError, OSError):
                    raise RuntimeError(f"verify worker failed to start (exit code {w.process.wait(5)})") from None

    # --- mapping ---------------------------------------------------------------------------------
    def wall_guard(self, limit: float) -> float:
        """The wall-clock seconds after which an item with CPU budget ``limit`` is killed anyway."""
        return limit * self.wall_factor + self.wall_slack_s

    def map(self, items: Iterable[Any], timeouts: Sequence[float] | None = None,
            progress: Callable[[int], Any] | None = None) -> list[Any]:
        """Results in item order; ``timeouts`` overrides the pool's CPU budget item by item;
        ``progress(1)`` is called as each item finishes (a progress bar).

        Each worker holds up to ``DEPTH`` items (one running, the next queued), so it never waits
        for the parent between items; only the running item's budget runs. Its start is known
        exactly: the later of its send time and the previous item's end, which the worker reports
        with its CPU time then (``time.monotonic`` is system-wide on Linux and macOS).
        """
        items = list(items)
        limits = list(timeouts) if timeouts is not None else [self.timeout_s] * len(items)
        if len(limits) != len(items):
            raise ValueError(f"{len(limits)} timeouts for {len(items)} items")
        results: list[Any] = [None] * len(items)
        self.last_seconds = seconds = [0.0] * len(items)
        for index, value, took in self._run(zip(items, limits, strict=True), progress):
            results[index], seconds[index] = value, took
        return results

    def imap(self, items: Iterable[tuple[Any, float]],
             progress: Callable[[int], Any] | None = None) -> Iterator[Any]:
        """``map`` over a stream of (item, CPU budget) pairs: each result is yielded, in item
        order, as soon as it and all before it are done, and items are taken from the stream only
        as workers have room, so a caller can feed batch after batch without the pool running dry
        at each batch's end (the last slow item of one batch runs beside the next batch)."""
        done: dict[int, Any] = {}
        nxt = 0
        for index, value, _ in self._run(iter(items), progress):
            done[index] = value
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1

    def _run(self, source: Iterator[tuple[Any, float]],
             progress: Callable[[int], Any] | None) -> Iterator[tuple[int, Any, float]]:
        """(index, result or Failed, seconds) of every item of ``source``, numbered from 0, in the
        order they finish; ``source`` is read one item ahead of what the workers hold."""
        todo: deque = deque()  # (index, item) sent back by a lost worker: they go first
        limit: dict[int, float] = {}  # CPU budget of each item taken and not yet finished
        taken = 0

        def take() -> bool:
            """Move the source's next item into ``todo``; False when the source is exhausted."""
            nonlocal taken, source
            if source is None:
                return False
            try:
                item, budget = next(source)
            except StopIteration:
                source = None
                return False
            todo.append((taken, item))
            limit[taken] = budget
            taken += 1
            return True

        def finished(index: int, value: Any, took: float) -> tuple[int, Any, float]:
            del limit[index]
            return index, value, took

        try:
            retried: set[int] = set()  # items whose worker died once: their second death is final
            self._ensure()
            while todo or take() or any(w.queue for w in self.workers):
                for w in list(self.workers):
                    while w.ready and len(w.queue) < DEPTH and (todo or take()):
                        index, item = todo.popleft()
                        try:
                            w.conn.send((index, item))
                        except OSError:  # died: this item goes back
                            todo.appendleft((index, item))
                            if not w.queue:  # died idle: replaced, nothing of its own lost
                                self._lost(w, todo, None)
                            # else its running item's death is read below, where a death counts
                            # against that item's one retry (here it would be retried for free)
                            break
                        now = time.monotonic()
                        if not w.queue:
                            w.started, w.cpu_started = now, _proc_cpu(w.process.pid)
                        w.queue.append((index, item, now))
                active = [w for w in self.workers if w.queue or not w.ready]
                now = time.monotonic()
                running = [w for w in active if w.queue]
                heads = [w.started + self.wall_guard(limit[w.queue[0][0]]) for w in running]
                wake = min(heads, default=now + 1.0) - now
                if any(w.cpu_started is not None for w in running):
                    wake = min(wake, POLL_S)
                ready = wait([w.conn for w in active], timeout=max(0.0, wake))
                for w in active:
                    if w.conn not in ready:
                        continue
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        code = w.process.wait(timeout=2)
                        if not w.queue and not w.ready and not any(x.ready for x in self.workers if x is not w):
                            raise RuntimeError(f"verify worker failed to start (exit code {code})") from None
                        if w.queue and w.queue[0][0] not in retried:  # once more, in a fresh worker
                            retried.add(w.queue[0][0])
                            self._lost(w, todo, None)
                            continue
                        lost = self._lost(w, todo, Failed(
                            "crash", f"worker died (exit code {code}), also when retried in a fresh worker", 0.0))
                        if lost is not None:
                            if progress is not None:
                                progress(1)
                            yield finished(*lost)
                        continue
                    if msg == _READY:
                        w.ready = True
                        continue
                    index, ok, value, t_end, cpu_end = msg
                    head, _, _ = w.queue.popleft()
                    assert head == index, "worker answered out of order"
                    took = t_end - w.started
                    if w.queue:
                        w.started, w.cpu_started = max(t_end, w.queue[0][2]), cpu_end
                    if progress is not None:
                        progress(1)
                    yield finished(index, value if ok else Failed("error", value, took), took)
                now = time.monotonic()
                for w in list(self.workers):
                    if not w.queue or w.conn in ready:
                        continue
                    index = w.queue[0][0]
                    wall = now - w.started
                    stat = _proc_stat(w.process.pid) if w.cpu_started is not None else None
                    guard = self.wall_guard(limit[index])
                    if stat is not None and stat[0] - w.cpu_started >= limit[index]:
                        what = f"no result after {limit[index]:g}s of CPU time; worker killed"
                    elif wall >= guard and (stat is None or not stat[1] or wall >= guard * STARVED_FACTOR):
                        # a runnable worker is waiting for a CPU (a loaded machine), not hung: its CPU
                        # budget decides, unless the wait is absurd
                        what = (f"no result after {wall:.0f}s wall-clock (the outer guard of a {limit[index]:g}s "
                                "CPU budget); worker killed")
                    else:
                        continue
                    lost = self._lost(w, todo, Failed("timeout", what, wall))
                    if lost is not None:
                        if progress is not None:
                            progress(1)
                        yield finished(*lost)
        finally:  # left with items in flight (the caller's stream raised, or it stopped reading):
            for w in list(self.workers):  # their answers must not reach the next map
                if w.queue:
                    w.queue.clear()
                    self._replace(w)

    def _lost(self, w: _Worker, todo: deque, head: Failed | None) -> tuple[int, Failed, float] | None:
        """A worker is gone or killed: its running item gets ``head`` (returned as (index, result,
        seconds)), the queued ones go back (the running one too when ``head`` is None)."""
        failed = None
        if w.queue and head is not None:
            index = w.queue.popleft()[0]
            took = head.seconds or time.monotonic() - w.started
            failed = (index, Failed(head.kind, head.message, took), took)
        for index, item, _ in reversed(w.queue):
            todo.appendleft((index, item))
        w.queue.clear()
        self._replace(w)
        return failed

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.conn.send(None)
        for w in self.workers:
            if w.process.wait(timeout=1) is None:
                w.process.kill()
                w.process.wait(timeout=1)
            w.conn.close()
        self.workers = []
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_workers() -> int:
    """The CPUs this process may run on (``CURATE_WORKERS`` when a distributed engine reserved fewer)."""
    if os.environ.get("CURATE_WORKERS", "").isdigit():
        return max(1, int(os.environ["CURATE_WORKERS"]))
    return available_cpus()


def probe(item: Any) -> Any:
    """A diagnostic task for tests and benchmarks: ``("hang", s)`` sleeps ``s`` seconds with
    SIGALRM blocked (a hang no in-worker timeout can end), ``("busy", s)`` runs ``s`` CPU seconds,
    ``("exit", code)`` kills the worker, ``("exit_once", path)`` kills it unless ``path`` exists
    (creating it), ``("raise", msg)`` raises, ``("echo", x)`` returns x."""
    import signal

    what, arg = item
    if what == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(arg)
        return "woke"
    if what == "busy":
        t0 = time.process_time()
        while time.process_time() - t0 < arg:
            pass
        return "done"
    if what == "exit_once":
        if not os.path.exists(arg):
            open(arg, "w").close()  # noqa: SIM115
            os._exit(9)
        return "second try"
    if what == "exit":
        os._exit(arg)
    if what == "raise":
        raise ValueError(arg)
    return arg
