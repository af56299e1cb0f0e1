"""Structural corruptions of the thinking: shuffle, delete and insert steps (the solution is never touched)."""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import polars as pl
import pyarrow as pa
import xxhash

from curate.ops.corrupt.base import (
    COMMON_COLUMNS,
    NOT_PUBLIC,
    Corruption,
    row_rng,
    row_segmentations,
    share,
)
from curate.ops.structure.segment import Steps, join
from curate.ops.structure.step import STEPS_COLUMNS, Segmentation
from curate.step import StepResult

if TYPE_CHECKING:
    from curate.card.section import VariantStep


@dataclass
class _StepCorruption(Segmentation, Corruption):
    writes: ClassVar[dict[str, pa.DataType]] = {
        **COMMON_COLUMNS,
        "corrupt_steps": pa.list_(pa.int32()),
        "corrupt_order": pa.list_(pa.int32()),
        **STEPS_COLUMNS,
    }

    def columns_read(self) -> tuple[str, ...]:
        return ("id", "problem", "thinking", "solution")

    @classmethod
    def card_what(cls, step: VariantStep) -> str:
        return step.describe(hidden=("mode",))  # segmentation rules, unused on segmented rows

    @classmethod
    def method_origin(cls, step: VariantStep) -> str:
        return NOT_PUBLIC

    def _edit(self, rng: random.Random, steps: Steps, row_id: str) -> tuple[list[str], list[str], list[int], list[int], list[str]]:
        """(bodies, seps, touched original indices, order, donors) of the edited thinking."""
        raise NotImplementedError

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        new_thinking, units, touched, touched_idx, orders, donors = [], [], [], [], [], []
        st_start, st_end, st_count, reasons, methods = [], [], [], [], []
        for row_id, text, starts, method in row_segmentations(batch, self):
            steps = Steps.of(text, starts)
            methods.append(method)
            rng = row_rng(self.name, self.seed, row_id)
            bodies, seps, hit, order, donor = self._edit(rng, steps, row_id)
            new_text, s, e = join(bodies, seps)
            new_thinking.append(new_text)
            units.append(len(steps))
            touched.append(len(hit))
            touched_idx.append(hit)
            orders.append(order)
            donors.append(donor)
            st_start.append(s)
            st_end.append(e)
            st_count.append(len(s))
            reasons.append(None if hit else f"{self.name}: nothing to corrupt ({len(steps)} steps)")
        extra: dict[str, list[Any]] = {"corrupt_steps": touched_idx, "corrupt_order": orders}
        if "corrupt_donors" in self.writes:
            extra["corrupt_donors"] = donors
        result = self._finish(batch, {"thinking": new_thinking}, units, touched, extra, reasons,
                              refresh_steps=False)
        # the edit knows the new step boundaries exactly: record them (overrides resegment)
        fix = pl.DataFrame({"steps_start": pl.Series(st_start, dtype=pl.List(pl.Int32)),
                            "steps_end": pl.Series(st_end, dtype=pl.List(pl.Int32)),
                            "steps_count": pl.Series(st_count, dtype=pl.Int32)})
        fix = fix.with_columns(pl.Series("steps_method", methods, dtype=pl.String))
        if result.rejected is None:
            return StepResult(result.kept.with_columns(*fix.get_columns()), None, result.stats)
        keep = pl.Series([r is None for r in reasons])
        return StepResult(result.kept.with_columns(*fix.filter(keep).get_columns()),
                          result.rejected.with_columns(*fix.filter(~keep).get_columns()), result.stats)


@dataclass
class ShuffleSteps(_StepCorruption):
    """Reorder a ratio of the thinking's steps among themselves (paper: 33/67/100%); other steps stay put.

    ``round_half_up(ratio * steps)`` positions are chosen (at least 2 when any, one step cannot
    move) and their steps permuted by a random cycle, so every chosen step lands somewhere else.
    ``corrupt_order[i]`` is the original index of the step now at position i (a permutation);
    ``corrupt_steps`` the chosen original indices. Separators stay in place.
    """

    name = "shuffle_steps"

    ratio: float = field(default=1.0, metadata={"help": "share of steps to reorder, in [0, 1]"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows with fewer than 2 steps: keep unchanged, or reject"})

    def __post_init__(self) -> None:
        self._check_segmentation()
        self._check_common()

    def _edit(self, rng, steps, row_id):  # type: ignore[no-untyped-def]
        n = len(steps)
        k = share(self.ratio, n)
        if k == 1:
            k = 2 if n >= 2 else 0
        pos = sorted(rng.sample(range(n), k)) if k else []
        order = list(range(n))
        if k >= 2:
            cycle = pos[:]
            # Sattolo's algorithm: a uniformly random cyclic permutation (no fixed point)
            for i in range(k - 1, 0, -1):
                j = rng.randrange(i)
                cycle[i], cycle[j] = cycle[j], cycle[i]
            for p, src in zip(pos, cycle, strict=True):
                order[p] = src
        bodies = [steps.bodies[i] for i in order]
        return bodies, list(steps.seps), pos, order, []


@dataclass
class DeleteSteps(_StepCorruption):
    """Drop a ratio of the thinking's steps (paper: 67%), chosen uniformly; the rest keep their order.

    ``round_half_up(ratio * steps)`` steps are removed; ``corrupt_steps`` lists them and
    ``corrupt_order`` the surviving original indices. ratio 1.0 empties the thinking.
    """

    name = "delete_steps"

    ratio: float = field(default=0.67, metadata={"help": "share of steps to delete, in [0, 1]"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows with no step deleted (empty thinking): keep unchanged, or reject"})

    def __post_init__(self) -> None:
        self._check_segmentation()
        self._check_common()

    def _edit(self, rng, steps, row_id):  # type: ignore[no-untyped-def]
        n = len(steps)
        gone = sorted(rng.sample(range(n), share(self.ratio, n)))
        dropped = set(gone)
        kept = [i for i in range(n) if i not in dropped]
        bodies = [steps.bodies[i] for i in kept]
        seps = [steps.seps[i] for i in kept]
        if seps:
            seps[-1] = steps.seps[-1]  # the text ends as it did
        return bodies, seps, gone, kept, []


@dataclass
class InsertSteps(_StepCorruption):
    """Insert steps of other traces of the dataset into each trace (paper: "inserted steps", 33/67/100%).

    ``insert`` (default): ``round_half_up(ratio * steps)`` donor steps go in at random positions and
    every original step is kept, so ratio 1.0 doubles the step count. The paper (Li et al. 2025,
    Table 2) names this perturbation insertion of steps from other samples; its code for it is not
    public (the ``corrupt`` branch of NovaSky-AI/SkyThought has only the digit and keyword scripts),
    so position and donor choice here are this toolkit's reading. ``replace``: that many chosen
    steps are replaced by donor steps instead (an option of this toolkit, not the paper's). Donors
    are steps of other traces of similar length (within a factor 2 when the pool has one, else the
    closest), any domain, from a pool of up to ``pool_size`` steps drawn from the whole input in a
    global pass (the steps with the smallest seeded hash, so the pool does not depend on
    batching); a row never receives its own steps. Rows keep their own segmentation (segment_steps,
    model-made included) for both the row and the donor pool. ``corrupt_donors`` names each donor
    as ``id:step``; ``corrupt_order`` gives, per new position, the original index or -1 for a donor;
    ``corrupt_steps`` the inserted steps' new positions (insert) or the replaced original indices
    (replace).
    """

    name = "insert_steps"
    needs_global_pass = True
    writes: ClassVar[dict[str, pa.DataType]] = {
        **_StepCorruption.writes, "corrupt_donors": pa.list_(pa.string())}

    ratio: float = field(default=0.67, metadata={"help": "steps added (insert) or replaced (replace), as a share of the row's steps, in [0, 1]"})
    mode: Literal["insert", "replace"] = field(  # type: ignore[assignment]
        default="insert", metadata={"help": "insert donor steps (the paper's perturbation), or replace chosen steps with them"})
    seed: int = field(default=0, metadata={"help": "random seed (per row: combined with the row id)"})
    pool_size: int = field(default=50_000, metadata={"help": "donor steps kept from the global pass"})
    min_donor_chars: int = field(default=20, metadata={"help": "ignore donor steps shorter than this"})
    on_untouched: Literal["keep", "reject"] = field(
        default="keep", metadata={"help": "rows with nothing inserted (empty thinking): keep unchanged, or reject"})

    # InsertSteps has its own `mode`; segmentation mode is `split`.
    split: Literal["transition", "paragraph"] = field(
        default="transition", metadata={"help": "segmentation rules (see segment_steps.mode)"})

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if self.min_donor_chars < 0:
            raise ValueError(f"min_donor_chars must be >= 0, got {self.min_donor_chars}")
        self._check_common()
        self._seg = Segmentation(mode=self.split, transitions=self.transitions, split_inline=self.split_inline,
                                 inline_transitions=self.inline_transitions, min_step_chars=self.min_step_chars,
                                 min_steps=self.min_steps)
        self._seg._check_segmentation()
        self._lens: list[int] = []
        self._pool: list[tuple[int, str, str]] = []  # (length, donor "id:step", body), sorted by length
        self._fitted = False

    @classmethod
    def card_what(cls, step: VariantStep) -> str:
        return step.describe()  # `mode` is insert/replace here (segmentation is `split`): shown

    @classmethod
    def method_origin(cls, step: VariantStep) -> str:
        return NOT_PUBLIC if step.params.get("mode", "insert") == "insert" else "this toolkit's option (replace)"

    def starts(self, text: str) -> list[int]:
        return self._seg.starts(text)

    def segment(self, text: str) -> tuple[list[int], str]:
        return self._seg.segment(text)

    def method(self) -> str:
        return self._seg.method()

    def kind(self) -> str:
        return f"{self.name}:{self.mode}"

    def fit(self, batches: Iterator[pl.DataFrame]) -> None:
        heap: list[tuple[int, str, str]] = []  # max-heap on key via negation: (-key, donor, body)
        for batch in batches:
            for row_id, text, starts, _ in row_segmentations(batch, self):
                if not text:
                    continue
                steps = Steps.of(text, starts)
                for i, body in enumerate(steps.bodies):
                    if len(body) < self.min_donor_chars:
                        continue
                    key = xxhash.xxh3_64_intdigest(f"{self.seed}\x00{row_id}\x00{i}".encode())
                    item = (-key, f"{row_id}:{i}", body)
                    if len(heap) < self.pool_size:
                        heapq.heappush(heap, item)
                    elif item > heap[0]:
                        heapq.heapreplace(heap, item)
        self._pool = sorted(((len(b), d, b) for _, d, b in heap), key=lambda x: (x[0], x[1]))
        self._lens = [x[0] for x in self._pool]
        self._fitted = True

    def _donor(self, rng: random.Random, length: int, row_id: str) -> tuple[str, str] | None:
        lo = bisect.bisect_left(self._lens, max(1, length // 2))
        hi = bisect.bisect_right(self._lens, max(2 * length, self.min_donor_chars))
        own = f"{row_id}:"
        for _ in range(8):
            if hi > lo:
                j = rng.randrange(lo, hi)
            else:  # no donor of similar length: the closest one
                j = min(max(bisect.bisect_left(self._lens, length), 0), len(self._pool) - 1)
            _, donor, body = self._pool[j]
            if not donor.startswith(own):
                return donor, body
            lo, hi = 0, len(self._pool)  # widen after hitting the row's own step
        return None

    def _edit(self, rng, steps, row_id):  # type: ignore[no-untyped-def]
        assert self._fitted, "fit() must run before apply()"
        n = len(steps)
        if not n or not self._pool:
            return list(steps.bodies), list(steps.seps), [], list(range(n)), []
        k = max(share(self.ratio, n), 1 if self.ratio > 0 else 0)  # a one-step row still gets one
        bodies, seps, order, donors = list(steps.bodies), list(steps.seps), list(range(n)), []
        if self.mode == "replace":
            hit = sorted(rng.sample(range(n), k))
            done = []
            for i in hit:
                got = self._donor(rng, len(steps.bodies[i]), row_id)
                if got is None:
                    continue
                donors.append(got[0])
                bodies[i] = got[1]
                order[i] = -1
                done.append(i)
            return bodies, seps, done, order, donors
        # insert: k donor steps after random gaps (0 = before the first step)
        gaps = sorted(rng.randrange(n + 1) for _ in range(k))
        out_b, out_s, out_o = [], [], []
        g = 0
        for pos in range(n + 1):
            while g < len(gaps) and gaps[g] == pos:
                ref = steps.bodies[min(pos, n - 1)]
                got = self._donor(rng, len(ref), row_id)
                g += 1
                if got is None:
                    continue
                donors.append(got[0])
                out_b.append(got[1])
                out_s.append("\n\n")
                out_o.append(-1)
            if pos < n:
                out_b.append(steps.bodies[pos])
                out_s.append(steps.seps[pos] if pos < n - 1 else "\n\n")
                out_o.append(pos)
        out_s[-1] = steps.seps[-1]
        added = [i for i, o in enumerate(out_o) if o < 0]  # new positions of the inserted steps
        return out_b, out_s, added, out_o, donors
