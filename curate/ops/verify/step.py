"""Verification: judge each answer (math-verify, sandboxed tests, option letters) and pair traces.

``verify`` writes a three-way verdict (``verify_correct`` true / false / null = unverifiable, with
the reason in ``verify_error``) and keeps the correct rows (rejection sampling), all rows, or the
incorrect ones (negatives). Work runs in a process pool whose per-row deadline is enforced by the
parent, so one pathological expression or program costs at most its timeout. A model-judge
verdict can be added later as ``verify_judge_correct`` next to these columns.

``pair_preferences`` turns several verified traces of one problem into (problem, chosen,
rejected) rows for DPO-style training.
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import polars as pl
import pyarrow as pa

from curate.ops.verify import PRELOAD, pool_size, verify_task
from curate.ops.verify.mcq import gold_letter
from curate.ops.verify.pool import Failed, WorkerPool, default_workers
from curate.progress import rows_done
from curate.step import REJECT_REASON, Step, StepResult

if TYPE_CHECKING:
    from curate.card.section import CardContext, CardSection

Domain = Literal["auto", "math", "code", "mcq"]
Keep = Literal["correct", "all", "incorrect"]
DOMAINS, KEEP = get_args(Domain), get_args(Keep)
_OPTIONS = re.compile(r"^\s*\(?[A-J][.):]\s+\S", re.MULTILINE)
GRACE_S = 0.5  # the pool kills a worker this long after a row's own timer should have fired
THINKING_SENT = 4000  # math/mcq read at most the last 3000 characters of the thinking
JUDGE_COLUMN = "verify_judge_correct"  # reserved for a model-judge verdict (not written yet)


def _kind(domain: str, row: dict[str, Any]) -> str:
    """Which verifier a row gets under ``domain: auto``."""
    if domain != "auto":
        return domain
    if row.get("domain") == "code" or row.get("test_cases"):
        return "code"
    ref = row.get("reference_answer")
    if ref and gold_letter(str(ref)) is not None and len(_OPTIONS.findall(row.get("problem") or "")) >= 2:
        return "mcq"
    if row.get("domain") == "science" and ref and gold_letter(str(ref), row.get("problem") or "") is not None:
        return "mcq"
    return "math"


@cache
def _warm_inline() -> None:
    """What the pool's workers do before their first row, once per process for ``workers: 0``."""
    from curate.ops.verify.math import warmup

    warmup()


def _shutdown(pool: WorkerPool) -> None:
    pool.close()


@dataclass
class Verify(Step):
    """Check each answer against its reference (math-verify, sandboxed code tests, option letters); keep correct, all or incorrect rows.

    ``verify_correct`` is true/false, or null when the row cannot be judged (no reference, a gold
    that does not parse, a timeout) — null never counts as correct. Rows are verified in a
    process pool; each row's deadline is enforced from outside the worker, which is killed and
    replaced when it runs over. Code runs in a sandbox (see ``curate.ops.verify.sandbox``).
    """

    name = "verify"
    writes: ClassVar[dict[str, pa.DataType]] = {
        "verify_correct": pa.bool_(),
        "verify_error": pa.string(),
        "verify_method": pa.string(),
        "verify_gold": pa.large_string(),
        "verify_pred": pa.large_string(),
        "verify_pass_rate": pa.float64(),
    }

    domain: Domain = field(default="auto", metadata={"help": "auto | math | code | mcq (auto: code when the row has tests, mcq for lettered options, else math)"})
    keep: Keep = field(default="correct", metadata={"help": "correct (rejection sampling) | all (annotate only) | incorrect (negatives)"})
    timeout_s: float = field(default=5.0, metadata={"help": "CPU-time limit of one math/mcq row (a timer in the worker; the parent kills the worker 0.5 s of CPU later, or after a roomy wall-clock guard). Code rows have their own limits: code_test_timeout_s and code_row_timeout_s"})
    workers: int | None = field(default=None, metadata={"help": "worker processes (default: the CPUs available; 0 = inline, no pool)"})
    lenient: bool = field(default=True, metadata={"help": "math: when the response states no anchored answer (boxed, 'final answer is'), parse it as plain math-verify does (any expression) instead of judging it wrong; false = strict"})
    keep_unverifiable: bool = field(default=False, metadata={"help": "keep rows whose verdict is null (otherwise they are rejected)"})
    code_test_timeout_s: float = field(default=4.0, metadata={"help": "CPU-time limit of one code test (RLIMIT_CPU, whole seconds rounded up; a program that sleeps is stopped by a wall-clock guard 3x as long + 2 s)"})
    code_row_timeout_s: float = field(default=30.0, metadata={"help": "CPU-time limit for all tests of one code row (the tests left are not run)"})
    code_max_tests: int = field(default=50, metadata={"help": "run at most this many tests per code row"})
    code_memory_mb: int = field(default=1024, metadata={"help": "address-space limit of a code run (MB)"})

    process_local = ("_pool",)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = inline), got {self.workers}")
        for name in ("code_test_timeout_s", "code_row_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.code_max_tests < 1:
            raise ValueError(f"code_max_tests must be >= 1, got {self.code_max_tests}")
        if self.code_memory_mb < 64:
            raise ValueError(f"code_memory_mb must be >= 64, got {self.code_memory_mb}")
        self._pool: WorkerPool | None = None

    def worker_resources(self) -> dict[str, float] | None:
        # long-lived workers keep their checker pool warm across batches, one CPU per pool process
        return {"num_cpus": float(max(1, min(default_workers(), 8) if self.workers is None else self.workers))}

    def columns_read(self) -> tuple[str, ...]:
        return ("problem", "thinking", "solution", "answer", "reference_answer", "domain",
                "test_cases", "test_fn_name")

    # --- work ------------------------------------------------------------------------------------
    def tasks(self, batch: pl.DataFrame) -> list[dict[str, Any]]:
        """One checker task per row (what `run_tasks` verifies): a step that verifies other text
        (e.g. sampled completions in its columns) builds its tasks here."""
        tasks = []
        for row in batch.select(self.columns_read()).iter_rows(named=True):
            kind = _kind(self.domain, row)
            thinking = row["thinking"]
            if kind != "code" and thinking and len(thinking) > THINKING_SENT:
                thinking = thinking[-THINKING_SENT:]  # only the end is read; don't ship 100 kB to a worker
            task = {"kind": kind, "reference": row["reference_answer"], "solution": row["solution"],
                    "thinking": thinking, "answer": row["answer"], "problem": row["problem"],
                    "timeout_s": self.timeout_s, "lenient": self.lenient}
            if kind == "code":
                task.update(tests=row["test_cases"] or [], fn_name=row["test_fn_name"],
                            per_test_s=self.code_test_timeout_s, row_timeout_s=self.code_row_timeout_s,
                            max_tests=self.code_max_tests, memory_mb=self.code_memory_mb)
            tasks.append(task)
        return tasks

    def _deadline(self, task: dict[str, Any]) -> float:
        """The pool's hard CPU limit: the row's own limit plus a grace for the in-worker timer to
        fire (the pool adds a wall-clock guard several times as long)."""
        if task["kind"] == "code":
            return self.code_row_timeout_s + self.code_test_timeout_s + 5.0
        return self.timeout_s + GRACE_S

    def warm_up(self) -> None:
        """Start the pool's imports in the background (the runner calls this before reading)."""
        if self._pool_size() > 0:
            self._get_pool().launch()

    def start_pool(self) -> None:
        """Start the worker pool now and wait until every worker is ready (benchmarks, services)."""
        self._get_pool().start()

    def _pool_size(self) -> int:
        return pool_size(self.workers)

    def _get_pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(verify_task, max(1, self._pool_size()), self.timeout_s + GRACE_S,
                                    preload=PRELOAD)
            weakref.finalize(self, _shutdown, self._pool)
        return self._pool

    def run_tasks(self, tasks: list[dict[str, Any]],
                  progress: Callable[[int], Any] | None = None) -> list[dict[str, Any]]:
        """Verdicts for plain task dicts (what ``apply`` does, without polars); ``progress(1)``
        as each task finishes."""
        if self._pool_size() == 0:
            _warm_inline()  # math-verify's lazy set-up, paid once and not on the first row's clock
            raw: list[Any] = []
            for t in tasks:
                try:
                    raw.append(verify_task(t))
                except Exception as e:  # noqa: BLE001 - a verifier bug must not end the run
                    raw.append(Failed("error", f"{type(e).__name__}: {e}", 0.0))
                if progress is not None:
                    progress(1)
        else:
            raw = self._get_pool().map(tasks, [self._deadline(t) for t in tasks], progress=progress)
        return self._verdicts(tasks, raw)

    @staticmethod
    def _verdicts(tasks: list[dict[str, Any]], raw: list[Any]) -> list[dict[str, Any]]:
        """The checker's results as verdict dicts (a pool's failure becomes an unverifiable verdict)."""
        out = []
        for task, r in zip(tasks, raw, strict=True):
            if isinstance(r, Failed):
                what = {"timeout": "timeout", "crash": "verifier crashed", "error": "verifier error"}[r.kind]
                r = {"correct": None, "error": f"{what}: {r.message}", "method": task["kind"],
                     "gold": None, "pred": None}
            out.append(r)
        return out

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        # rows_done: the stage's progress bar moves as each row is checked, not once per part
        return self._result(batch, self.run_tasks(self.tasks(batch), progress=rows_done) if batch.height else [])

    def apply_parts(self, parts: Iterator[tuple[pl.DataFrame, int]]) -> Iterator[StepResult]:
        """``apply`` over a stream of parts through one pool: the next part's rows go to the
        workers while this one's last rows finish, so no worker idles at a part's end; each part's
        result is the one ``apply`` gives it."""
        if self._pool_size() == 0:
            yield from super().apply_parts(parts)
            return
        pending: deque[tuple[pl.DataFrame, list[dict[str, Any]]]] = deque()  # parts sent, not answered
        got: list[Any] = []  # the pool's results not yet given to a part, in row order

        def rows() -> Iterator[tuple[dict[str, Any], float]]:
            for batch, _ in parts:
                tasks = self.tasks(batch) if batch.height else []
                pending.append((batch, tasks))
                yield from ((t, self._deadline(t)) for t in tasks)

        def answered() -> Iterator[StepResult]:
            while pending and len(got) >= len(pending[0][1]):
                batch, tasks = pending.popleft()
                raw = got[:len(tasks)]
                del got[:len(tasks)]
                yield self._result(batch, self._verdicts(tasks, raw))

        for r in self._get_pool().imap(rows(), progress=rows_done):
            got.append(r)
            yield from answered()
        yield from answered()

    def _result(self, batch: pl.DataFrame, verdicts: list[dict[str, Any]]) -> StepResult:
        """A part's kept and rejected rows from its rows' verdicts."""
        annotated = batch.with_columns(
            pl.Series("verify_correct", [v["correct"] for v in verdicts], dtype=pl.Boolean),
            pl.Series("verify_error", [v["error"] for v in verdicts], dtype=pl.String),
            pl.Series("verify_method", [v["method"] for v in verdicts], dtype=pl.String),
            pl.Series("verify_gold", [v["gold"] for v in verdicts], dtype=pl.String),
            pl.Series("verify_pred", [v["pred"] for v in verdicts], dtype=pl.String),
            pl.Series("verify_pass_rate", [v.get("pass_rate") for v in verdicts], dtype=pl.Float64),
        )
        sources = batch["source"].to_list() if "source" in batch.columns else [None] * batch.height
        stats = _verdict_counts(sources, verdicts)
        if self.keep == "all":
            return StepResult(annotated, None, stats)
        reasons = [self._reject_reason(v) for v in verdicts]
        drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
        tagged = annotated.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
        return StepResult(annotated.filter(~drop), tagged.filter(drop), stats)

    def _reject_reason(self, v: dict[str, Any]) -> str | None:
        correct = v["correct"]
        if correct is None:
            return None if self.keep_unverifiable else f"unverifiable: {v['error']}"
        if self.keep == "correct" and not correct:
            detail = v["error"] or f"answer {_short(v['pred'])} != reference {_short(v['gold'])}"
            return f"incorrect: {detail}"
        if self.keep == "incorrect" and correct:
            return "correct (keep=incorrect keeps only wrong answers)"
        return None

    # --- the dataset card ------------------------------------------------------------------------
    @classmethod
    def card_section(cls, ctx: CardContext) -> CardSection:
        from curate.ops.verify.report import card_section

        return card_section(ctx)


def _verdict_counts(sources: list[str | None], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-source verdict counts for the funnel: {"by_source": {src: {correct, incorrect, unverifiable}}}."""
    by_source: dict[str, dict[str, int]] = {}
    for src, v in zip(sources, verdicts, strict=True):
        key = {True: "correct", False: "incorrect", None: "unverifiable"}[v["correct"]]
        counts = by_source.setdefault(src or "(none)", {"correct": 0, "incorrect": 0, "unverifiable": 0})
        counts[key] += 1
    return {"by_source": by_source}


def _short(s: str | None, n: int = 60) -> str:
    if s is None:
        return "none"
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _norm_problem(text: str | None) -> str:
    return " ".join((text or "").split())


@dataclass
class PairPreferences(Step):
    """Build (problem, chosen, rejected) pairs from verified traces that share a problem (DPO-style data).

    Each kept row is a correct trace (the chosen side) carrying one incorrect trace of the same
    problem in the ``pair_rejected_*`` columns. Rows used as a rejected side, rows left without a
    partner, and unverifiable rows go to rejects with the reason. Run ``verify`` (keep: all) first.
    """

    name = "pair_preferences"
    needs_global_pass = True
    writes: ClassVar[dict[str, pa.DataType]] = {
        "pair_rejected_id": pa.string(),
        "pair_rejected_thinking": pa.large_string(),
        "pair_rejected_solution": pa.large_string(),
        "pair_rejected_answer": pa.large_string(),
    }

    by: str = field(default="problem", metadata={"help": "column whose (whitespace-normalised) value groups traces of one problem"})
    max_pairs_per_problem: int = field(default=1, metadata={"help": "at most this many pairs per problem (each trace is used once)"})

    def __post_init__(self) -> None:
        if self.max_pairs_per_problem < 1:
            raise ValueError(f"max_pairs_per_problem must be >= 1, got {self.max_pairs_per_problem}")
        if not self.by:
            raise ValueError("by must name a column")
        self._chosen: dict[int, int] = {}  # global row -> global row of its rejected partner
        self._rejected_side: dict[int, int] = {}  # global row -> chosen partner
        self._texts: dict[int, tuple[Any, ...]] = {}

    def columns_read(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.by, "id", "thinking", "solution", "verify_correct", "verify_pred")))

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        good: dict[str, list[int]] = defaultdict(list)
        bad: dict[str, list[int]] = defaultdict(list)
        texts: dict[int, tuple[Any, ...]] = {}
        offset = 0
        for batch in batches:
            cols = batch.select(self.by, "id", "thinking", "solution", "verify_correct", "verify_pred")
            for k, (key, rid, thinking, solution, correct, pred) in enumerate(cols.iter_rows()):
                g = offset + k
                key = _norm_problem(str(key) if key is not None else None)
                if correct is True and len(good[key]) < self.max_pairs_per_problem:
                    good[key].append(g)
                elif correct is False and len(bad[key]) < self.max_pairs_per_problem:
                    bad[key].append(g)
                    texts[g] = (rid, thinking, solution, pred)
            offset += batch.height
        self._chosen, self._rejected_side, self._texts = {}, {}, {}
        for key, chosen in good.items():
            for c, r in zip(chosen, bad.get(key, []), strict=False):
                self._chosen[c], self._rejected_side[r] = r, c
                self._texts[r] = texts[r]

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        rows = range(offset, offset + batch.height)
        partner = [self._chosen.get(g) for g in rows]
        part = [self._texts[p] if p is not None else (None, None, None, None) for p in partner]
        annotated = batch.with_columns(
            pl.Series("pair_rejected_id", [t[0] for t in part], dtype=pl.String),
            pl.Series("pair_rejected_thinking", [t[1] for t in part], dtype=pl.String),
            pl.Series("pair_rejected_solution", [t[2] for t in part], dtype=pl.String),
            pl.Series("pair_rejected_answer", [t[3] for t in part], dtype=pl.String),
        )
        correct = batch["verify_correct"].to_list()
        reasons: list[str | None] = []
        for g, p, c in zip(rows, partner, correct, strict=True):
            if p is not None:
                reasons.append(None)
            elif g in self._rejected_side:
                reasons.append("used as the rejected side of a pair")
            elif c is None:
                reasons.append("unverifiable: no verdict to pair on")
            elif c:
                reasons.append("no incorrect trace of this problem to pair with (or pair limit reached)")
            else:
                reasons.append("no correct trace of this problem to pair with (or pair limit reached)")
        drop = pl.Series([r is not None for r in reasons], dtype=pl.Boolean)
        tagged = annotated.with_columns(pl.Series(REJECT_REASON, reasons, dtype=pl.String))
        return StepResult(annotated.filter(~drop), tagged.filter(drop))
