"""Code verification in the sandbox: real APPS-style tests pass, hostile programs are stopped.

The hostile programs run with small limits (8 processes, 256 MB, 1 s CPU, 2 s wall) so a
failure of a layer cannot hurt this machine. What holds where is in curate/ops/verify/sandbox.py.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.ops.verify.code import extract_program, outputs_match, verify_code
from curate.ops.verify.sandbox import SANDBOX_UID_BASE, Limits, _live_procs, isolation, run_python
from curate.ops.verify.step import Verify

REPO = Path(__file__).resolve().parent.parent
LIMITS = Limits(wall_s=2.0, cpu_s=1, memory_mb=256, file_mb=1, nproc=8)
CPU_LIMITS = Limits(wall_s=10.0, cpu_s=1, memory_mb=256, file_mb=1, nproc=8)
pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX")

# ../shared/data holds no code traces, so the code rows here are written for the test in the
# layouts real sets use: an APPS-style stdin/stdout task (count binary words by first/last bit),
# and LeetCode 1 (two sum) call-based, with its tests stored the way APPS stores call tests.
APPS_TESTS = [
    {"input": "4\n0001\n1000\n0011\n0111\n", "output": "1\n"},
    {"input": "1\n01\n", "output": "0\n\n"},
    {"input": "2\n00\n11\n", "output": "-1"},
]
APPS_PROGRAM = """```python
import sys
def main():
    data = sys.stdin.read().split()
    n = int(data[0])
    words = data[1:1 + n]
    kinds = {"00": 0, "01": 0, "10": 0, "11": 0}
    for w in words:
        kinds[w[0] + w[-1]] += 1
    if kinds["01"] == 0 and kinds["10"] == 0 and kinds["00"] and kinds["11"]:
        print(-1)
        return
    # answer: how many words to reverse so that |01 - 10| <= 1
    print(abs(kinds["01"] - kinds["10"]) // 2)
main()
```"""

# LeetCode 1 (two sum), call-based: tests as APPS stores them (inputs = argument lists).
TWO_SUM = {"inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6], [[3, 3], 6]], "outputs": [[0, 1], [1, 2], [0, 1]]}
TWO_SUM_OK = """Here is the solution:

```python
class Solution:
    def twoSum(self, nums, target):
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
```"""
TWO_SUM_WRONG = TWO_SUM_OK.replace("return [seen[target - x], i]", "return [i, seen[target - x]]")


def _call_tests(spec: dict) -> list[dict]:
    return [{"input": json.dumps(i), "output": json.dumps(o)} for i, o in zip(spec["inputs"], spec["outputs"])]


def test_extract_last_python_block() -> None:
    text = "Try:\n```python\nprint(1)\n```\nBetter:\n```py\nprint(2)\n```\nOutput:\n```text\n2\n```"
    assert extract_program(text) == "print(2)\n"
    assert extract_program("no code here") is None


def test_output_comparison() -> None:
    assert outputs_match("1\n3\n", "1\n3")
    assert outputs_match("1 3", "1\n3")  # token fallback
    assert outputs_match("0.3333333", "0.33333333")
    assert not outputs_match("1\n4\n", "1\n3\n")


def test_stdin_program_passes_and_fails() -> None:
    ok = verify_code({"solution": APPS_PROGRAM, "tests": APPS_TESTS, "per_test_s": 4})
    assert ok["correct"] is True and ok["pass_rate"] == 1.0 and ok["method"] == "code:stdio"
    bad = verify_code({"solution": APPS_PROGRAM.replace("// 2", "// 2 + 1"), "tests": APPS_TESTS, "per_test_s": 4})
    assert bad["correct"] is False and bad["pass_rate"] == pytest.approx(1 / 3)
    assert "test 0: wrong output '2" in bad["error"]


def test_call_based_leetcode() -> None:
    tests = _call_tests(TWO_SUM)
    ok = verify_code({"solution": TWO_SUM_OK, "tests": tests, "fn_name": "twoSum"})
    assert ok["correct"] is True and ok["pass_rate"] == 1.0 and ok["method"] == "code:call"
    bad = verify_code({"solution": TWO_SUM_WRONG, "tests": tests, "fn_name": "twoSum"})
    assert bad["correct"] is False and bad["pass_rate"] == 0.0
    missing = verify_code({"solution": TWO_SUM_OK, "tests": tests, "fn_name": "threeSum"})
    assert missing["correct"] is False and "no function or Solution method named threeSum" in missing["error"]


@pytest.mark.parametrize(("name", "code", "status", "says", "limits"), [
    ("read outside", "print(open('/etc/hostname').read())", {"denied"}, "Permission denied", LIMITS),
    ("read the repo", f"print(open({str(REPO / 'pyproject.toml')!r}).read())", {"denied"}, "Permission denied", LIMITS),
    ("write the repo", f"open({str(REPO / 'SANDBOX_ESCAPED')!r}, 'w').write('x')", {"denied"}, "Permission denied", LIMITS),
    ("socket", "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", {"denied", "exit"}, "Error", LIMITS),
    ("fork bomb", "import os\nwhile True:\n    os.fork()", {"process_limit", "cpu_limit", "timeout"}, "limit", LIMITS),
    ("50 GB", "x = bytearray(50 * 1024 ** 3)", {"memory_limit"}, "address-space limit", LIMITS),
    # CPU time accrues slower than wall time on a loaded machine: a roomy wall limit lets the CPU limit act
    ("infinite loop", "while True:\n    pass", {"cpu_limit"}, "CPU time limit", CPU_LIMITS),
    ("sleep forever", "import time\ntime.sleep(3600)", {"timeout"}, "wall-clock limit", LIMITS),
    ("flood stdout", "while True:\n    print('x' * 10000)", {"file_limit"}, "file size limit", LIMITS),
])
def test_hostile_code_is_stopped(name: str, code: str, status: set, says: str, limits: Limits) -> None:
    r = run_python(code, "", limits)
    assert r.status in status, (name, r)
    assert says in r.reason, (name, r.reason)
    assert r.seconds < limits.wall_s + 1.0
    assert not (REPO / "SANDBOX_ESCAPED").exists()


@pytest.fixture()
def unix_server():
    """A pathname AF_UNIX server outside the sandbox, reachable by any uid (a folder and a socket
    of mode 777, as /run and /tmp hold them): it records what it receives and answers."""
    import socket
    import tempfile
    import threading

    folder = Path(tempfile.mkdtemp(prefix="curate-unix-"))
    folder.chmod(0o777)
    path = folder / "s"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    path.chmod(0o777)
    srv.listen(4)
    srv.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(100))
                    conn.sendall(b"answer")
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, received
    stop.set()
    t.join(2)
    srv.close()
    path.unlink(missing_ok=True)
    folder.rmdir()


@pytest.mark.parametrize("kind", ["SOCK_STREAM", "SOCK_DGRAM", "socketpair"])
def test_unix_socket_outside_is_unreachable(unix_server, kind: str) -> None:
    path, received = unix_server
    if kind == "socketpair":  # a datagram pair may name any address in sendto
        code = (f"import socket\na, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                f"a.sendto(b'secret', {str(path)!r})")
    else:
        code = (f"import socket\ns = socket.socket(socket.AF_UNIX, socket.{kind})\n"
                f"s.connect({str(path)!r})\ns.sendall(b'secret')\nprint(s.recv(100))")
    r = run_python(code, "", LIMITS)
    assert received == [] and "answer" not in r.stdout, r
    assert r.status == "denied" and "Operation not permitted" in r.reason, r
    if isolation()["uid"]:  # the server is reachable from here: only the sandbox stops it
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"hello")
            assert s.recv(100) == b"answer"


@pytest.mark.parametrize(("name", "code"), [
    ("unshare user namespace", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
     "if libc.unshare(0x10000000) != 0:\n    raise PermissionError(ctypes.get_errno(), 'Operation not permitted')\n"
     "print('ESCAPED')"),
    ("unshare network namespace", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
     "if libc.unshare(0x40000000) != 0:\n    raise PermissionError(ctypes.get_errno(), 'Operation not permitted')\n"
     "print('ESCAPED')"),
    ("clone into a user namespace", "import ctypes, os, platform, signal\n"
     "nr = {'x86_64': 56, 'aarch64': 220}[platform.machine()]\nlibc = ctypes.CDLL(None, use_errno=True)\n"
     "pid = libc.syscall(nr, 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)\n"
     "if pid == 0:\n    os._exit(0)\n"
     "if pid < 0:\n    raise PermissionError(ctypes.get_errno(), 'Operation not permitted')\nprint('ESCAPED')"),
], ids=["unshare-user", "unshare-net", "clone-user"])
def test_namespaces_cannot_be_made_inside(name: str, code: str) -> None:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("the seccomp filter is for Linux x86_64 and aarch64")
    r = run_python(code, "", LIMITS)
    assert "ESCAPED" not in r.stdout and r.status == "denied", (name, r)


def test_ordinary_programs_still_run_under_the_filter() -> None:
    """The filter leaves fork, subprocess, threads and asyncio (a connected stream socketpair) alone."""
    code = ("import asyncio, subprocess, threading\nt = threading.Thread(target=print, args=('thread',))\n"
            "t.start(); t.join()\nasyncio.run(asyncio.sleep(0))\n"
            "print(subprocess.run(['/bin/echo', 'child'], capture_output=True, text=True).stdout.strip())")
    r = run_python(code, "", Limits(wall_s=20.0, cpu_s=5, memory_mb=512, nproc=16))
    assert r.ok and r.stdout.split() == ["thread", "child"], r


def test_a_program_waiting_within_its_cpu_limit_passes() -> None:
    """Limits are CPU time: a test that waits 1.5 s (as one does for CPU on a loaded machine) with
    a 1 s limit passes; wall time only guards (3 x 1 s + 2 s) against programs that never end."""
    waits = "```python\nimport time\ntime.sleep(1.5)\nprint(input())\n```"
    v = verify_code({"solution": waits, "tests": [{"input": "7\n", "output": "7\n"}], "per_test_s": 1.0})
    assert v["correct"] is True, v
    spins = "```python\nwhile True:\n    pass\n```"
    v = verify_code({"solution": spins, "tests": [{"input": "", "output": "1"}], "per_test_s": 1.0})
    assert v["correct"] is False and "CPU time limit (1s)" in v["error"], v


@pytest.mark.skipif(not Path("/proc/self/schedstat").exists() or not hasattr(os, "sched_setaffinity"),
                    reason="needs /proc/PID/schedstat and CPU affinity")
def test_a_program_starved_of_cpu_by_load_is_not_killed_by_the_wall_clock_guard() -> None:
    """The guard counts time the program was not waiting for a CPU: pinned to one CPU with five
    busy loops, a program needing ~0.5 s of CPU takes ~6x as long in wall time, past a 2 s guard,
    and still finishes (a sleeping one is still killed: test above)."""
    import subprocess
    import time

    cpu0 = {min(os.sched_getaffinity(0))}
    saved = os.sched_getaffinity(0)
    work = "n = 0\nfor i in range(10_000_000):\n    n += i\nprint(n % 7)"
    os.sched_setaffinity(0, cpu0)  # the hogs and the sandboxed program inherit the one CPU
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(5)]  # own sessions: the kernel's autogroups share the CPU by session
    time.sleep(0.5)  # the busy loops are running
    try:
        r = run_python(work, "", Limits(wall_s=2.0, cpu_s=5, memory_mb=256, file_mb=1, nproc=8))
    finally:
        os.sched_setaffinity(0, saved)
        for h in hogs:
            h.kill()
            h.wait()
    assert r.ok, r.reason
    assert r.stdout.strip() == str(sum(range(10_000_000)) % 7)
    assert r.seconds > 2.0  # it did run past the guard's two wall-clock seconds: the load was real


def test_isolation_layers_here() -> None:
    caps = isolation()
    if not caps["landlock"] and not caps["netns"]:
        pytest.skip("neither Landlock nor network namespaces on this machine")
    r = run_python("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))", "", LIMITS)
    assert r.status in {"denied", "exit"} and ("Permission denied" in r.reason or "unreachable" in r.reason.lower()
                                               or "refused" in r.reason.lower())


def test_setsid_escape_is_reaped() -> None:
    if not isolation()["uid"]:
        pytest.skip("per-run uid needs root")
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    r = run_python(code, "", LIMITS)
    assert r.ok and r.stdout.strip() == "parent done"
    uid = SANDBOX_UID_BASE + os.getpid() % 100000
    assert _live_procs(uid) == []


def test_verify_step_on_code_rows_goes_on_after_hostile_row() -> None:
    rows = pl.DataFrame({
        "problem": ["Two sum", "Two sum", "Polycarp words", "Polycarp words"],
        "thinking": ["", "", "", ""],
        "solution": [TWO_SUM_OK, "```python\nwhile True:\n    pass\n```", APPS_PROGRAM,
                     "```python\nimport os\nwhile True:\n    os.fork()\n```"],
        "answer": [None] * 4,
        "reference_answer": [None] * 4,
        "domain": ["code"] * 4,
        "test_cases": [_call_tests(TWO_SUM), _call_tests(TWO_SUM), APPS_TESTS, APPS_TESTS],
        "test_fn_name": ["twoSum", "twoSum", None, None],
    })
    # workers=2: the sandbox is launched from pool workers (which have polars' threads)
    step = Verify(keep="correct", workers=2, code_test_timeout_s=1.0, code_row_timeout_s=4.0, code_memory_mb=256)
    res = step.apply(rows, 0)
    assert res.kept["problem"].to_list() == ["Two sum", "Polycarp words"]
    reasons = res.rejected["reject_reason"].to_list()
    assert reasons[0] == "incorrect: program does not load: TimeoutError: per-test CPU time limit"
    assert reasons[1].startswith("incorrect: test 0: process limit (RLIMIT_NPROC")
    assert res.rejected["verify_pass_rate"].to_list() == [0.0, 0.0]


def test_test_layouts_of_real_datasets() -> None:
    from curate.io.formats import tests_from_record

    # APPS/TACO and OpenThoughts store the same JSON shape, under input_output / test_cases
    apps = {"input_output": json.dumps({"inputs": [t["input"] for t in APPS_TESTS],
                                        "outputs": [t["output"] for t in APPS_TESTS]})}
    tests, fn = tests_from_record(apps)
    assert fn is None and tests == [{"input": t["input"], "output": t["output"]} for t in APPS_TESTS]
    ot = {"test_cases": json.dumps({**TWO_SUM, "fn_name": "twoSum"})}
    tests, fn = tests_from_record(ot)
    assert fn == "twoSum" and json.loads(tests[0]["input"]) == [[2, 7, 11, 15], 9]
    assert verify_code({"solution": TWO_SUM_OK, "tests": tests, "fn_name": fn})["correct"] is True
    # CodeContests: parallel input/output lists per split
    cc = {"public_tests": {"input": [APPS_TESTS[0]["input"]], "output": [APPS_TESTS[0]["output"]]},
          "private_tests": {"input": [t["input"] for t in APPS_TESTS[1:]], "output": [t["output"] for t in APPS_TESTS[1:]]},
          "generated_tests": {"input": [], "output": []}}
    tests, fn = tests_from_record(cc)
    assert fn is None and len(tests) == 3
    assert verify_code({"solution": APPS_PROGRAM, "tests": tests})["pass_rate"] == 1.0
    assert tests_from_record({"problem": "no tests"}) == ([], None)


def test_call_based_limits_are_cpu_time_with_a_wall_guard_per_test() -> None:
    """A function that computes past its CPU limit fails that test; one that sleeps is stopped by
    the per-test wall guard (3 x 1 s + 2 s); the other tests still run and pass."""
    program = """```python
import time
def f(x):
    if x == 1:
        while True:
            pass
    if x == 2:
        time.sleep(600)
    return x
```"""
    tests = [{"input": json.dumps([x]), "output": json.dumps(x)} for x in (0, 1, 2, 3)]
    v = verify_code({"solution": program, "tests": tests, "fn_name": "f", "per_test_s": 1.0, "row_timeout_s": 60})
    assert v["pass_rate"] == 0.5 and v["error"] == "test 1: TimeoutError: per-test CPU time limit", v
