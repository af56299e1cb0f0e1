"""A process pool with a per-item deadline enforced from the parent.

Why not ``concurrent.futures``: a future cannot be cancelled once it runs, and killing one of its
workers breaks the whole executor. math-verify's own timeout is a ``SIGALRM`` that only works in a
main thread and cannot interrupt a C call that never returns to the interpreter, so a verifier
needs a parent that watches the clock, kills the one worker that ran over and carries on.

Workers are fresh interpreters (``python -c``, talking over a socketpair with
``multiprocessing.connection``), not forks: the parent has polars' threads, forking it is unsafe,
and ``spawn``/``forkserver`` re-run the caller's ``__main__`` (a script without the
``if __name__ == "__main__"`` guard would start pools recursively). Each worker imports the heavy
modules once (calling their ``warmup()`` if they have one) and says "ready"; an item's clock
starts only when a ready worker starts running it. A warm spare waits, so replacing a killed
worker costs no import time.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

_READY = "ready"
DEPTH = 2  # items sent to a worker ahead: the one it runs and the next


@dataclass(frozen=True)
class Failed:
    """What a slot holds when an item did not produce a value."""

    kind: str  # "timeout" | "crash" | "error"
    message: str
    seconds: float


def _serve(fd: int) -> None:
    """Worker main: import the preload modules, say ready, then answer (index, item) messages."""
    import importlib
    import logging

    conn = Connection(fd)
    fn, preload = pickle.loads(conn.recv_bytes())
    for name in preload:
        module = importlib.import_module(name)
        warm = getattr(module, "warmup", None)
        if callable(warm):
            warm()  # first calls build parsers and caches: not on an item's clock
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)  # timeouts are reported in the verdict
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
            conn.send((index, True, value, time.monotonic()))
        except BaseException as e:  # noqa: BLE001 - the worker must report and live on
            tail = traceback.format_exception_only(type(e), e)[-1].strip()
            conn.send((index, False, tail[:500], time.monotonic()))


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection
    ready: bool = False
    queue: deque = field(default_factory=deque)  # (index, item, sent) in flight, running one first
    started: float = 0.0  # when the running item started

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.conn.close()


class WorkerPool:
    """Map a top-level function over items in ``workers`` processes, each item bounded by a deadline.

    ``map`` returns one entry per item, in order: the function's value, or a :class:`Failed`
    (``timeout``: killed after the deadline; ``crash``: the worker died, e.g. out of memory;
    ``error``: the function raised). A killed or dead worker is replaced by a warm spare and the
    run goes on.
    """

    def __init__(self, fn: Callable[[Any], Any], workers: int, timeout_s: float,
                 preload: Sequence[str] = (), spare: bool = True):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.fn, self.n, self.timeout_s = fn, workers, timeout_s
        self.preload = tuple(preload)
        self.use_spare = spare
        self.workers: list[_Worker] = []
        self.spares: list[_Worker] = []
        self.replaced = 0  # workers killed or lost and replaced
        self.last_seconds: list[float] = []  # per item of the last map: time from send to answer

    # --- worker processes ------------------------------------------------------------------------
    def _start(self) -> _Worker:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the curate package
        env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", "import sys; from curate.verify.pool import _serve; _serve(int(sys.argv[1]))",
             str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env, close_fds=True,
        )
        theirs.close()
        conn = Connection(ours.detach())
        conn.send_bytes(pickle.dumps((self.fn, self.preload)))
        return _Worker(proc, conn)

    def _ensure(self) -> None:
        while len(self.workers) < self.n:
            self.workers.append(self._start())
        if self.use_spare and not self.spares:
            self.spares.append(self._start())

    def _replace(self, w: _Worker) -> None:
        w.kill()
        fresh = self.spares.pop(0) if self.spares else self._start()
        self.workers[self.workers.index(w)] = fresh
        if self.use_spare:
            self.spares.append(self._start())
        self.replaced += 1

    def start(self, timeout_s: float = 120.0) -> None:
        """Start every worker (and the spare) and wait until all have imported and warmed up."""
        self._ensure()
        deadline = time.monotonic() + timeout_s
        for w in [*self.workers, *self.spares]:
            while not w.ready:
                if not w.conn.poll(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"verify worker not ready after {timeout_s:g}s")
                try:
                    w.ready = w.conn.recv() == _READY
                except (EOFError, OSError):
                    raise RuntimeError(f"verify worker failed to start (exit code {w.process.wait()})") from None

    def _poll_spares(self) -> None:
        for s in self.spares:
            if not s.ready and s.conn.poll():
                with contextlib.suppress(EOFError, OSError):
                    s.ready = s.conn.recv() == _READY

    # --- mapping ---------------------------------------------------------------------------------
    def map(self, items: Iterable[Any], timeouts: Sequence[float] | None = None,
            progress: Callable[[int], Any] | None = None) -> list[Any]:
        """Results in item order; ``timeouts`` overrides the pool's deadline item by item;
        ``progress(1)`` is called as each item finishes (a progress bar).

        Each worker holds up to ``DEPTH`` items (one running, the next queued), so it never waits
        for the parent between items; only the running item's clock runs. Its start is known
        exactly: the later of its send time and the previous item's end, which the worker
        reports (``time.monotonic`` is system-wide on Linux and macOS).
        """
        todo = deque(enumerate(items))
        results: list[Any] = [None] * len(todo)
        seconds = [0.0] * len(todo)
        self.last_seconds = seconds
        limit = list(timeouts) if timeouts is not None else [self.timeout_s] * len(todo)
        if len(limit) != len(todo):
            raise ValueError(f"{len(limit)} timeouts for {len(todo)} items")
        self._ensure()
        while todo or any(w.queue for w in self.workers):
            self._poll_spares()
            for w in list(self.workers):
                while w.ready and len(w.queue) < DEPTH and todo:
                    index, item = todo.popleft()
                    try:
                        w.conn.send((index, item))
                    except OSError:  # died: its items go back, it is replaced
                        todo.appendleft((index, item))
                        self._lost(w, todo, results, seconds, None)
                        break
                    now = time.monotonic()
                    if not w.queue:
                        w.started = now
                    w.queue.append((index, item, now))
            active = [w for w in self.workers if w.queue or not w.ready]
            now = time.monotonic()
            heads = [w.started + limit[w.queue[0][0]] for w in active if w.queue]
            ready = wait([w.conn for w in active], timeout=max(0.0, min(heads, default=now + 1.0) - now))
            for w in active:
                if w.conn not in ready:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    try:
                        code = w.process.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        code = None
                    if not w.queue and not w.ready and not any(x.ready for x in self.workers if x is not w):
                        raise RuntimeError(f"verify worker failed to start (exit code {code})") from None
                    had_item = bool(w.queue)
                    self._lost(w, todo, results, seconds, Failed("crash", f"worker died (exit code {code})", 0.0))
                    if had_item and progress is not None:
                        progress(1)
                    continue
                if msg == _READY:
                    w.ready = True
                    continue
                index, ok, value, t_end = msg
                head, _, _ = w.queue.popleft()
                assert head == index, "worker answered out of order"
                seconds[index] = t_end - w.started
                results[index] = value if ok else Failed("error", value, seconds[index])
                if progress is not None:
                    progress(1)
                if w.queue:
                    w.started = max(t_end, w.queue[0][2])
            now = time.monotonic()
            for w in list(self.workers):
                if w.queue and w.conn not in ready and now - w.started >= limit[w.queue[0][0]]:
                    index = w.queue[0][0]
                    self._lost(w, todo, results, seconds,
                               Failed("timeout", f"no result after {limit[index]:g}s; worker killed", now - w.started))
                    if progress is not None:
                        progress(1)
        return results

    def _lost(self, w: _Worker, todo: deque, results: list[Any], seconds: list[float], head: Failed | None) -> None:
        """A worker is gone or killed: its running item gets ``head``, the queued ones go back."""
        if w.queue and head is not None:
            index = w.queue.popleft()[0]
            took = head.seconds or time.monotonic() - w.started
            seconds[index] = took
            results[index] = Failed(head.kind, head.message, took)
        for index, item, _ in reversed(w.queue):
            todo.appendleft((index, item))
        w.queue.clear()
        self._replace(w)

    def close(self) -> None:
        for w in [*self.workers, *self.spares]:
            with contextlib.suppress(Exception):
                w.conn.send(None)
        for w in [*self.workers, *self.spares]:
            try:
                w.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait(timeout=1)
            w.conn.close()
        self.workers, self.spares = [], []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_workers() -> int:
    """The CPUs this process may run on (``CURATE_WORKERS`` when a distributed engine reserved fewer)."""
    if os.environ.get("CURATE_WORKERS", "").isdigit():
        return max(1, int(os.environ["CURATE_WORKERS"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def probe(item: Any) -> Any:
    """A diagnostic task for tests and benchmarks: ``("hang", s)`` sleeps ``s`` seconds with
    SIGALRM blocked (a hang no in-worker timeout can end), ``("exit", code)`` kills the worker,
    ``("raise", msg)`` raises, ``("echo", x)`` returns x."""
    import signal

    what, arg = item
    if what == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(arg)
        return "woke"
    if what == "exit":
        os._exit(arg)
    if what == "raise":
        raise ValueError(arg)
    return arg
