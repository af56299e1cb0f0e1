"""Pipeline: run steps over a source, write data/, rejects/ and manifest.json; resume when killed.

Every stage (the read, then each step) writes one Parquet part per input batch under
``OUT/.curate/stage-NN-name/``, atomically, so a killed run resumes at the first missing part
without duplicating or losing rows. A stage is identified by a fingerprint chained from the
input and every step before it: change a step and only it and the steps after it run again.
A finished run keeps its stages in ``OUT/.curate-cache/`` (the next run of a changed recipe
starts from them), writes ``OUT/run.log``, and says loudly when a step dropped every row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import importlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curate.engines.base import Engine, LocalEngine
from curate.engines.parts import (
    AUTO_PARTS,
    READ_BATCH_ROWS,
    PartStream,
    PartTask,
    apply_part,
    apply_parts,
    read_parts,
    read_split,
    reject_schema,
    write_shard,
)
from curate.errors import PipelineError
from curate.extras import check_extras
from curate.io.outdir import (
    LOCK_NAME,
    TRASH_NAME,
    Trash,
    filesystem_error,
    folder_lock,
    remove_partial_files,
)
from curate.io.read import Source, read
from curate.io.write import (
    concat_parquet,
    part_footer,
    shard_names,
    write_json_atomic,
    write_parquet_atomic,
)
from curate.progress import bar as progress_bar
from curate.progress import reporting
from curate.provenance import source_info
from curate.schema import SCHEMA_VERSION, TRACE_SCHEMA
from curate.step import REJECT_REASON, Step

WORK_DIR = ".curate"  # the stages of the run in progress
CACHE_DIR = ".curate-cache"  # the stages of the last finished run, where the next run starts from
LOG_FILE = "run.log"
MANIFEST = "manifest.json"
log = logging.getLogger("curate.run")
T = TypeVar("T")
_LIBRARIES = ("pyarrow", "polars", "numpy", "datasets", "huggingface_hub", "math-verify",
              "datasketch", "sentence-transformers", "torch", "transformers", "vllm")


class EmptyResultWarning(UserWarning):
    """A run wrote no rows, or one of its steps dropped every row it saw."""


class EmptyResultError(PipelineError):
    """``strict=True`` and the run came out empty (the dataset is written; the message says why)."""


def library_versions() -> dict[str, str]:
    """The versions of Python, curate and the libraries that shape the data (looked up once)."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "curate": source_info()["version"]}
    for name in _LIBRARIES:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[name] = importlib_metadata.version(name)
    return versions


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


@dataclass
class RunResult:
    """What a run produced: the dataset folder, its manifest, and the funnel."""

    out: Path
    manifest: dict[str, Any]
    reused: bool = False  # True when the folder already held this finished run and nothing ran

    @functools.cached_property
    def warnings(self) -> list[str]:
        """What came out empty: each step that dropped every row it saw (with its top reject
        reason), and a run or config that wrote no rows. Empty when all is well."""
        return empty_result_warnings(self.out, self.manifest)

    @property
    def funnel(self) -> pl.DataFrame:
        """Rows in / kept / rejected (and seconds) per stage, read first (`stats` for the counts
        steps report, such as verification accuracy per source)."""
        cols = ("step", "name", "rows_in", "kept", "rejected", "seconds")
        return pl.DataFrame([{k: f[k] for k in cols} for f in self.manifest["funnel"]])

    def stats(self, step: str) -> dict[str, Any]:
        """The counts a step reported (summed over batches), e.g. verify's per-source verdicts."""
        entries = [f for f in self.manifest["funnel"] if f["name"] == step]
        entries += [f for c in self.manifest.get("configs", {}).values() for f in c["funnel"] if f["name"] == step]
        if not entries:
            raise KeyError(f"no step {step!r} in this run")
        return entries[0].get("stats", {})

    @property
    def rows(self) -> int:
        """Rows written (summed over configs when the run has variants)."""
        return self.manifest["output"]["rows"]

    @property
    def configs(self) -> list[str]:
        """Variant config names (empty for a single-config dataset)."""
        return list(self.manifest.get("configs", {}))

    def to_polars(self, config: str | None = None) -> pl.DataFrame:
        """The kept rows; with variants, name the ``config`` to read."""
        configs = self.manifest.get("configs", {})
        if configs:
            if config not in configs:
                raise ValueError(f"this dataset has configs {', '.join(configs)}; pass config=<name>")
            files = configs[config]["files"]
        elif config is not None:
            raise ValueError("this dataset has no variant configs")
        else:
            files = self.manifest["output"]["files"]
        return pl.concat([pl.read_parquet(self.out / p) for p in files])

    def rejects(self, step: str | None = None) -> pl.DataFrame:
        """All rejected rows (or one step's), with `reject_step` and `reject_reason`."""
        files = [f for f in self.manifest["rejects"] if step is None or f["step"] == step]
        frames = [pl.read_parquet(self.out / f["path"]) for f in files]
        if not frames:
            return pl.DataFrame({"reject_step": [], "reject_reason": []}, schema={"reject_step": pl.String, "reject_reason": pl.String})
        return pl.concat(frames, how="diagonal_relaxed")

    def __repr__(self) -> str:
        return f"RunResult(out={str(self.out)!r}, rows={self.rows})"


def empty_result_warnings(out: Path, manifest: dict[str, Any]) -> list[str]:
    """One line per step that dropped all of the rows it saw, then one per empty output."""
    lines: list[str] = []
    chains = [(None, manifest["funnel"])]
    chains += [(name, c["funnel"]) for name, c in manifest.get("configs", {}).items()]
    for config, funnel in chains:
        for f in funnel:
            if f["rows_in"] and not f["kept"]:
                where = f"variant {config!r}: " if config else ""
                what = (f"the reader rejected all {f['rows_in']:,} input rows" if f["step"] == 0 else
                         f"{where}step {f['step']} '{f['name']}' dropped all {f['rows_in']:,} rows it saw")
                lines.append(what + _top_reason(out, manifest, f, config))
    rows = manifest["output"]["rows"]
    read = manifest["funnel"][0] if manifest["funnel"] else {"rows_in": 0}
    if not read["rows_in"]:
        lines.append("the input has no rows")
    if not rows:
        lines.append("the run wrote 0 rows")
    else:
        lines += [f"variant {name!r} has 0 rows" for name, c in manifest.get("configs", {}).items() if not c["rows"]]
    return lines


def top_reject_reason(out: Path, manifest: dict[str, Any], entry: dict[str, Any],
                      config: str | None = None) -> tuple[str, int, str] | None:
    """A funnel entry's most frequent kind of reject reason (the text before any ':', numbers
    as ``#``), its count and one full reason as an example, read from the step's rejects file;
    None when it has none."""
    name = f"{entry['step']:02d}-{entry['name']}.parquet"
    for r in manifest.get("rejects", []):
        if r.get("config") == config and Path(r["path"]).name == name and (out / r["path"]).exists():
            reasons = pl.read_parquet(out / r["path"], columns=[REJECT_REASON])[REJECT_REASON].fill_null("")
            if not reasons.len():
                return None
            kinds = reasons.str.replace(r":.*", "").str.replace_all(r"\d+(?:\.\d+)?", "#")
            reason, n = (kinds.value_counts(name="n").sort(["n", REJECT_REASON], descending=[True, False]).row(0))
            return reason, n, reasons.filter(kinds == reason)[0]
    return None


def _top_reason(out: Path, manifest: dict[str, Any], entry: dict[str, Any], config: str | None) -> str:
    """`` (top reject reason: ..., N rows, e.g. ...)`` for a warning line."""
    top = top_reject_reason(out, manifest, entry, config)
    if top is None:
        return ""
    reason, n, example = top
    example = example if len(example) <= 120 else example[:119] + "…"
    detail = f", e.g. {example!r}" if example != reason else ""
    return f" (top reject reason: {reason!r}, {n:,} row{'s' if n != 1 else ''}{detail})"


class Pipeline:
    """An ordered list of steps. ``Pipeline([ExactDedup(), Filter(...)]).run(source, out=...)``."""

    def __init__(self, steps: Sequence[Step], *, variants: dict[str, Sequence[Step]] | None = None,
                 batch_size: int | None = None, name: str | None = None, description: str | None = None,
                 card: dict[str, Any] | None = None):
        """``variants`` maps a config name to the extra steps that make it from the shared base
        (e.g. ``{"clean": [], "shuffle_67": [ShuffleSteps(ratio=0.67)]}``); the base runs once and
        each variant is written as its own config, ``data/<name>/train-*.parquet``.
        ``name``, ``description`` and ``card`` (``license``, ``pretty_name``) go to the manifest and
        the dataset card; they are not part of the fingerprint.
        ``batch_size``: rows per part (the unit every stage reads, applies and writes, and a killed
        run resumes from); None joins batches of 1,024 rows into parts of up to 16,384 rows or
        ~4 MiB, unless a step keeps a model or a worker pool (``part_rows``)."""
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.name, self.description, self.card = name, description, dict(card or {})
        self.steps = _check_steps(steps, "step")
        self.variants = {name: _check_steps(vs, f"variant {name!r} step") for name, vs in (variants or {}).items()}
        for name in self.variants:
            if not _CONFIG_NAME.fullmatch(name):
                raise ValueError(f"variant name {name!r}: use letters, digits, '_' and '-' (it names a folder)")
        self.batch_size = batch_size

    @property
    def all_steps(self) -> list[Step]:
        """The base steps, then each variant's."""
        return [*self.steps, *(s for vs in self.variants.values() for s in vs)]

    @property
    def part_rows(self) -> int | None:
        """Rows per part: ``batch_size``; else 1,024 when a step keeps a model or a worker pool
        (``worker_resources``), so a killed run redoes at most 1,024 rows of that work; else None,
        parts sized by content (``curate.engines.parts.joined``)."""
        if self.batch_size is not None:
            return self.batch_size
        return READ_BATCH_ROWS if any(s.worker_resources() is not None for s in self.all_steps) else None

    @property
    def parts(self) -> int | str:
        """How the input is cut into parts, as fingerprinted."""
        return self.part_rows or AUTO_PARTS

    def recipe(self) -> dict[str, Any]:
        """Steps (and variants) as recipe entries (``[{name: params}]``), the shape YAML recipes use."""
        recipe: dict[str, Any] = {"steps": [{s.name: s.params()} for s in self.steps]}
        if self.variants:
            recipe["variants"] = {n: [{s.name: s.params()} for s in vs] for n, vs in self.variants.items()}
        return recipe

    def plan(self, input_schema: pa.Schema = TRACE_SCHEMA) -> list[pa.Schema]:
        """The schema after each step; raises PipelineError when a step reads a missing column."""
        schemas = _plan_chain(self.steps, input_schema, first=1)
        self.variant_plans(schemas[-1] if schemas else input_schema)  # variants are checked too
        return schemas

    def variant_plans(self, base_schema: pa.Schema) -> dict[str, list[pa.Schema]]:
        return {n: _plan_chain(vs, base_schema, len(self.steps) + 1, n) for n, vs in self.variants.items()}

    def numbered(self) -> list[tuple[str, Step]]:
        """(where, step) for every step, base then variants: ``step 2 'verify'``."""
        first = len(self.steps) + 1
        out = [(f"step {i} '{s.name}'", s) for i, s in enumerate(self.steps, 1)]
        out += [(f"variant {v!r} step {i} '{s.name}'", s)
                for v, vs in self.variants.items() for i, s in enumerate(vs, first)]
        return out

    def describe(self) -> dict[str, Any]:
        """What the manifest records beside the recipe: name, description, card settings."""
        return {k: v for k, v in (("name", self.name), ("description", self.description),
                                  ("card", self.card)) if v}

    def run(
        self,
        data: Any,
        out: str | Path,
        *,
        resume: bool = True,
        overwrite: bool = False,
        progress: bool | None = None,
        engine: str | Engine = "local",
        address: str | None = None,
        keep_work: bool = False,
        shard_bytes: int = 256 << 20,
        command: str | None = None,
        card: bool = True,
        strict: bool = False,
        cache: bool = True,
    ) -> RunResult:
        """Run every step over ``data`` (a Source from ``read``, or anything ``read`` accepts)
        and write the dataset folder ``out`` (with its card, README.md, unless ``card=False``).
        A rerun of a finished run returns it unchanged (``result.reused``); a changed recipe on
        the same input reruns from the first changed step, reading the finished stages kept in
        ``out/.curate-cache`` (``cache=False``: keep none). ``overwrite`` (needed for another
        input) and ``resume=False`` recompute every step.

        A run that writes no rows, or a step that drops every row it saw, warns
        (``EmptyResultWarning``, ``result.warnings``); ``strict=True`` raises EmptyResultError
        instead, after writing the folder. Steps whose optional extras are missing are named
        before any work (MissingExtraError, with the pip command).

        ``engine="ray"`` runs the same steps on a Ray cluster (``address``: an existing one, e.g.
        ``"auto"`` or ``"ray://head:10001"``; default: start one on this machine) and writes the
        same dataset; ``out`` must then be on storage every node sees."""
        from curate.engines import get_engine

        source = data if isinstance(data, Source) else read(data)
        check_extras(self.numbered(), engine if isinstance(engine, str) else engine.name)
        runner = get_engine(engine, address)
        try:
            result = _Run(self, source, Path(out), resume, overwrite, progress, keep_work, shard_bytes, command,
                          card, runner, cache).go()
        except OSError as e:  # a full disk, a read-only folder, --out below a file: one line
            err = filesystem_error(e, Path(out).resolve())
            if err is None:
                raise
            raise err from None
        finally:
            if runner is not engine:  # an engine passed in is the caller's to close
                runner.close()
        problems = result.warnings
        if problems and strict:
            raise EmptyResultError(f"{result.out}: " + "; ".join(problems))
        for line in problems:
            warnings.warn(f"{result.out}: {line}", EmptyResultWarning, stacklevel=2)
        return result


_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _check_steps(steps: Sequence[Step], what: str) -> list[Step]:
    for i, s in enumerate(steps):
        if not isinstance(s, Step):
            raise TypeError(f"{what} {i} is {type(s).__name__}, not a curate Step")
    return list(steps)


def _plan_chain(steps: list[Step], current: pa.Schema, first: int, variant: str | None = None) -> list[pa.Schema]:
    schemas = []
    where = f"variant {variant!r}: " if variant else ""
    for i, step in enumerate(steps, first):
        names = set(current.names)
        missing = [c for c in step.columns_read() if c not in names]
        if missing:
            writers = [s.name for s in steps[i - first + 1:] if set(missing) & set(s.writes)]
            hint = f" ({', '.join(writers)} writes it, but runs later)" if writers else ""
            raise PipelineError(
                f"{where}step {i} '{step.name}' reads column(s) {', '.join(missing)} that neither the input "
                f"nor an earlier step provides{hint}"
            )
        for col, typ in step.writes.items():
            if col in names:
                old = current.field(col).type
                if old != typ and not (_is_text(old) and _is_text(typ)):
                    raise PipelineError(f"{where}step {i} '{step.name}' writes {col} as {typ}, but it is {old}")
            else:
                current = current.append(pa.field(col, typ))
        schemas.append(current)
    return schemas


class _Run:
    def __init__(self, pipeline: Pipeline, source: Source, out: Path, resume: bool, overwrite: bool,
                 progress: bool | None, keep_work: bool, shard_bytes: int, command: str | None,
                 card: bool, engine: Engine, cache: bool = True):
        self.p, self.source, self.shown = pipeline, source, out  # the folder as the caller named it
        self.out = out.resolve()  # what workers get: their working directory is not ours
        self.resume, self.overwrite, self.keep_work = resume, overwrite, keep_work
        self.progress_disabled = None if progress is None else not progress
        self.shard_bytes, self.command = shard_bytes, command
        self.work = self.out / WORK_DIR
        self.cache_dir = self.out / CACHE_DIR
        self.card, self.cache = card, cache
        self.engine = engine
        self.used: set[Path] = set()  # the stage folders of this run (the others are stale)
        self.trash: Trash  # old trees go there (made under the folder's lock, in go)
        self.kept_card: dict[str, Any] = {}
        self.ran: list[str] = []  # stages computed (not taken from a finished one)

    # --- the whole run -------------------------------------------------------------------------
    def go(self) -> RunResult:
        """Run under the output folder's lock (one writer), after removing partial files."""
        self.p.plan(self.source.schema())  # fail before any work, even before making the folder
        self._refuse_foreign()
        with folder_lock(self.out, self.command):
            remove_partial_files(self.out)
            self.trash = Trash(self.out)
            try:
                return self._logged()
            finally:
                self.trash.close()

    def _logged(self) -> RunResult:
        """The run, with its log file in the output folder."""
        input_schema = self.source.schema()
        schemas = self.p.plan(input_schema)  # fail before any work
        base_schema = schemas[-1] if schemas else input_schema
        variant_schemas = self.p.variant_plans(base_schema)
        fingerprint = _hash(self.source.fingerprint(), self.p.recipe(), SCHEMA_VERSION, self.p.parts)
        done = self._existing(fingerprint)  # refuses a folder that is not ours before writing to it
        self.out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out / LOG_FILE, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handler.setLevel(logging.DEBUG)

        def to_file(level: int, msg: str) -> None:  # what the caller says itself (the CLI, warnings)
            handler.handle(log.makeRecord(log.name, level, __file__, 0, msg, (), None))

        log.addHandler(handler)
        level = log.level
        if not log.isEnabledFor(logging.DEBUG):
            log.setLevel(logging.DEBUG)  # the file gets everything; console handlers keep their own level
        try:
            if done is not None:
                to_file(logging.INFO, f"{self.shown} already holds this run (finished "
                                      f"{done.manifest.get('created')}): nothing was run")
                result = done
            else:
                result = self._go(fingerprint, input_schema, schemas, base_schema, variant_schemas)
            for line in result.warnings:
                to_file(logging.WARNING, line)
            return result
        except BaseException as e:
            to_file(logging.ERROR, f"run failed: {type(e).__name__}: {e}")
            raise
        finally:
            log.removeHandler(handler)
            log.setLevel(level)
            handler.close()

    def _go(self, fingerprint: str, input_schema: pa.Schema, schemas: list[pa.Schema], base_schema: pa.Schema,
            variant_schemas: dict[str, list[pa.Schema]]) -> RunResult:
        log.info("run %s: %d step(s)%s, input %s, engine %s", self.shown, len(self.p.steps),
                 f" + variants {', '.join(self.p.variants)}" if self.p.variants else "",
                 ", ".join(map(str, self.source.describe().get("paths", []))) or "in memory", self.engine.name)
        if not self.resume:
            self.trash.discard(self.work)
            self.trash.discard(self.cache_dir)
        elif self.cache_dir.exists():
            if self.work.exists():  # a run started from the cache since: its stages are newer
                self.trash.discard(self.cache_dir)
            else:
                os.replace(self.cache_dir, self.work)
                log.debug("starting from the finished stages in %s", CACHE_DIR)
        started = time.time()
        from curate import __version__  # another curate release computes its own stages

        read_fp = _hash(self.source.fingerprint(), SCHEMA_VERSION, self.p.parts, __version__)
        if self.engine.name == "local":  # the steps run in this process: their start-up overlaps the read
            for step in self.p.all_steps:
                step.warm_up()
        if self.card:  # the card's imports (~0.1 s: plots, the hub's card class) while the steps started
            with contextlib.suppress(ImportError):  # above warm up (verify's zygote), not after the last step
                importlib.import_module("curate.card.card")
        reading = self._read_stage(read_fp, input_schema, stream=self._can_stream(read_fp))
        try:  # a streamed read feeds the first step its parts as they are read
            base_fp, base, funnel_steps = self._chain(self.p.steps, schemas, read_fp, reading, first=1,
                                                      folder=self.work)
        finally:
            if isinstance(reading, _StreamedRead):
                reading.close()  # when the first step failed: the read stops at its next part
        funnel = [reading.entry() if isinstance(reading, _StreamedRead) else reading, *funnel_steps]
        outputs: dict[str | None, tuple[dict, pa.Schema, list[dict]]] = {}
        if not self.p.variants:
            outputs[None] = (base, base_schema, [])
        for name, steps in self.p.variants.items():
            _, last, vfunnel = self._chain(steps, variant_schemas[name], base_fp, base,
                                           first=len(self.p.steps) + 1, folder=self.work / f"variant-{name}",
                                           label=f"{name}: ")
            outputs[name] = (last, variant_schemas[name][-1] if steps else base_schema, vfunnel)
        return self._finish(fingerprint, funnel, outputs, started)

    def _chain(self, steps: list[Step], schemas: list[pa.Schema], fp: str, prev: dict[str, Any] | _StreamedRead,
               first: int, folder: Path, label: str = "") -> tuple[str, dict[str, Any], list[dict]]:
        """Run steps one stage each from the stage ``prev`` (its funnel entry, or the streamed read), chaining fingerprints;
        returns the last fingerprint, the last stage's entry, and the funnel."""
        funnel = []
        for i, (step, schema) in enumerate(zip(steps, schemas), first):
            fp = _step_fingerprint(fp, step)
            stage = _stage_dir(folder, i, step.name)
            prev = self._step_stage(i, step, fp, prev, schema, stage, label + step.name)
            funnel.append(prev)
        return fp, prev, funnel

    def _existing(self, fingerprint: str) -> RunResult | None:
        """The finished run when the folder holds this one; else clear the old dataset's files (a
        changed recipe on the same input replaces it, from the finished stages; another input
        needs ``overwrite``, which also drops every stage)."""
        manifest_path = self.out / MANIFEST
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            damaged = _check_outputs(self.out, manifest)
            if damaged and manifest.get("fingerprint") == fingerprint and not self.overwrite:
                warnings.warn(f"{self.out}: {damaged}; making the dataset again", stacklevel=4)
                manifest_path.unlink()
                return None
            if manifest.get("fingerprint") == fingerprint and not self.overwrite:
                return self._reuse(manifest)
            if manifest.get("input", {}).get("fingerprint") != self.source.fingerprint() and not self.overwrite:
                raise PipelineError(
                    f"{self.out} holds a dataset made from another input; "
                    "pass overwrite=True (--overwrite) to replace it"
                )
            self.kept_card = manifest.get("card") or {}  # set by `curate card --license ...`: kept
            for name in ("data", "rejects", "plots"):
                self.trash.discard(self.out / name)
            manifest_path.unlink()
            (self.out / "README.md").unlink(missing_ok=True)
            if self.overwrite:  # asked for: a dataset made from scratch
                self.trash.discard(self.work)
                self.trash.discard(self.cache_dir)
        return None

    def _refuse_foreign(self) -> None:
        """Never write into a folder that holds something else (checked before taking its lock)."""
        if (self.out.is_dir() and not (self.out / MANIFEST).exists() and not self.work.exists()
                and not self.overwrite
                and any(p.name not in (WORK_DIR, CACHE_DIR, LOG_FILE, LOCK_NAME, TRASH_NAME) for p in self.out.iterdir())):
            raise PipelineError(
                f"{self.out} exists and is not a curate dataset folder; choose another --out or pass --overwrite"
            )

    def _reuse(self, manifest: dict[str, Any]) -> RunResult:
        """This run is already in the folder: nothing runs (the card is written if it is missing,
        and rewritten when the recipe's name, description or card settings changed)."""
        described = self.p.describe()  # what the recipe sets wins; what `curate card` set stays
        if "card" in described:
            described["card"] = {**(manifest.get("card") or {}), **described["card"]}
        stale = any(manifest.get(k) != v for k, v in described.items())
        if stale:
            manifest = {**manifest, **described}
            write_json_atomic(manifest, self.out / MANIFEST)
        if self.card and (stale or not (self.out / "README.md").exists()):  # or killed before the card
            _write_card(self.out)
        self._park_work()  # killed between the manifest and the clean-up
        return RunResult(self.shown, manifest, reused=True)

    def _open_stage(self, folder: Path, fingerprint: str) -> bool:
        """Prepare a stage folder; returns True when the stage already completed."""
        self.used.add(folder)
        meta = _stage_meta(folder)
        if meta.get("fingerprint") == fingerprint:
            if meta.get("complete"):
                return True
            log.debug("%s: resuming a stage begun before", folder.relative_to(self.work))
            self.ran.append(_stage_label(folder))
            return False
        self.trash.discard(folder)
        self.ran.append(_stage_label(folder))
        write_json_atomic({"fingerprint": fingerprint, "complete": False}, folder / "_meta.json")
        return False

    def _close_stage(self, folder: Path, fingerprint: str, extra: dict[str, Any]) -> None:
        write_json_atomic({"fingerprint": fingerprint, "complete": True, **extra}, folder / "_meta.json")

    def _bar(self, desc: str, total: int | None) -> tqdm:
        return progress_bar(total=total, desc=desc, unit=" rows", disable=self.progress_disabled, leave=False,
                            dynamic_ncols=True, file=sys.stderr)

    def _done(self, label: str, entry: dict[str, Any], reused: bool) -> dict[str, Any]:
        """Log a finished stage (one line: what it kept and dropped, or that it was reused)."""
        how = "reused (finished before)" if reused else f"{entry['seconds']:.1f} s"
        log.info("%s: %s rows in, %s kept, %s rejected; %s", label, f"{entry['rows_in']:,}",
                 f"{entry['kept']:,}", f"{entry['rejected']:,}", how)
        return entry

    # --- stage 0: read ---------------------------------------------------------------------------
    def _can_stream(self, read_fp: str) -> bool:
        """Whether the read stage can hand its parts to the first step as it reads them: on this
        process's engine, for a first step that needs neither a global pass nor a model, when
        neither stage is finished already."""
        if not isinstance(self.engine, LocalEngine) or not self.p.steps:
            return False
        first = self.p.steps[0]
        if first.needs_global_pass or first.model_settings() is not None:
            return False
        return not (_finished(_stage_dir(self.work, 0, "read"), read_fp)
                    or _finished(_stage_dir(self.work, 1, first.name), _step_fingerprint(read_fp, first)))

    def _read_stage(self, fingerprint: str, schema: pa.Schema, stream: bool = False) -> dict[str, Any] | _StreamedRead:
        """The read stage's funnel entry; with ``stream``, a read running on a thread whose parts
        the first step takes as they come (its entry once it is done)."""
        folder = _stage_dir(self.work, 0, "read")
        label = f"[0/{len(self.p.steps)}] read"
        if self._open_stage(folder, fingerprint):
            return self._done(label, self._stage_stats(0, "read", folder), True)
        bar = self._bar(label, None)
        splits = list(enumerate(self.source.splits()))
        batch_size = self.p.part_rows

        def produce(put: Callable[[Path, pa.Table], None] | None = None) -> None:
            def work(_: Any, item: tuple[int, Source]) -> dict[str, int]:
                return read_split(item[1], item[0], folder, schema, batch_size, put)

            self.engine.map(work, splits, on_result=lambda r: bar.update(r["rows"]))
            if not any(folder.glob("part-*.parquet")):  # empty input: one empty part keeps the stage well-formed
                empty, path = schema.empty_table(), folder / "part-00000-00000.parquet"
                write_parquet_atomic(empty, path, {"part": {"rows_in": 0, "rejected": 0, "seconds": 0.0}})
                if put is not None:
                    put(path, empty)

        def close() -> dict[str, Any]:
            bar.close()
            self._close_stage(folder, fingerprint, {})
            return self._done(label, self._stage_stats(0, "read", folder), False)

        if stream:
            return _StreamedRead(PartStream(produce), close)
        produce()
        return close()

    # --- stage i: one step ---------------------------------------------------------------------
    def _step_stage(self, i: int, step: Step, fingerprint: str, prev: dict[str, Any] | _StreamedRead,
                    out_schema: pa.Schema, folder: Path, step_label: str) -> dict[str, Any]:
        """One step over the stage before: its finished parts (``prev``'s funnel entry), or the read's
        parts as they come (a ``_StreamedRead``: see ``_can_stream``)."""
        n = len(self.p.steps) + max((len(v) for v in self.p.variants.values()), default=0)
        streamed = prev if isinstance(prev, _StreamedRead) else None
        if self._open_stage(folder, fingerprint):  # never with a streamed read: it is for unfinished stages
            return self._done(f"[{i}/{n}] {step_label}", self._stage_stats(i, step.name, folder), True)
        fit_seconds = 0.0
        planned = None
        total = None
        if streamed is None:
            parts = [Path(p) for p, _ in prev["_parts"]]  # the input stage's parts, counted when it closed
            counts = [rows for _, rows in prev["_parts"]]
            total = sum(counts)
            if step.needs_global_pass:
                t0 = time.perf_counter()
                bar = self._bar(f"[{i}/{n}] {step_label} (fit)", total)
                planned = self.engine.fit(step, parts, counts, folder / "_fit", lambda: _frames(parts, bar),
                                          progress=bar.update)
                bar.close()
                fit_seconds = time.perf_counter() - t0
        step.prepare()  # with a streamed read: beside the read of the first part
        rschema = reject_schema(out_schema, step)
        bar = self._bar(f"[{i}/{n}] {step_label}", total)
        within = _RowCount(bar)  # rows a step reports inside a part (in this process) move the bar early

        def on_result(r: dict[str, int]) -> None:
            bar.update(max(0, r["rows"] - within.take()))

        if streamed is not None:  # on this process's engine, with no global pass and no model
            inputs = ((src, table.num_rows, table) for src, table in streamed.parts)
            with reporting(within.add):
                apply_parts(step, i, _pending(folder, inputs, False, bar), out_schema, rschema, on_result,
                            self.engine.threads)
            streamed.entry()  # the read's line of the log comes first
        else:
            tasks = [task for task, _ in _pending(folder, ((p, c, None) for p, c in prev["_parts"]),
                                                  planned is not None, bar)]
            gen = folder / "_gen"
            ahead = self.engine.generate_ahead(step, tasks, gen, lambda what, total: self._bar(
                f"[{i}/{n}] {step_label} ({what})", total))
            workers = step.worker_resources()
            if ahead and workers:  # the model ran in the generation pass: the apply only reads its output
                workers = {k: v for k, v in workers.items() if k != "num_gpus"}

            def work(s: Step, task: PartTask) -> dict[str, int]:
                if not ahead:
                    return apply_part(s, i, task, out_schema, rschema, planned)
                from curate.engines.llm import given  # model backends: only runs that generate

                with given(s, gen, task.k):
                    return apply_part(s, i, task, out_schema, rschema, planned)

            with reporting(within.add):
                if isinstance(self.engine, LocalEngine):  # one stream of parts (nothing is generated ahead here)
                    apply_parts(step, i, read_parts(tasks), out_schema, rschema, on_result, self.engine.threads,
                                planned)
                else:
                    self.engine.map(work, tasks, state=step, workers=workers, on_result=on_result)
        bar.close()
        self._close_stage(folder, fingerprint, {"fit_seconds": fit_seconds})
        return self._done(f"[{i}/{n}] {step_label}", self._stage_stats(i, step.name, folder), False)

    def _stage_stats(self, i: int, name: str, folder: Path) -> dict[str, Any]:
        """A finished stage's funnel entry, summed from its parts' footers (read once each); the
        parts with their row counts (``_parts``) and its rejects files (``_rejects``) go along
        for the next stage and the final write."""
        rows_in = rows_out = rejected = kept = 0
        seconds = _stage_meta(folder).get("fit_seconds", 0.0)
        step_stats: dict[str, Any] = {}
        parts: list[tuple[str, int]] = []
        for part in sorted(folder.glob("part-*.parquet")):
            rows, md = part_footer(part)
            stats = md.get("part", {})
            rows_in += stats.get("rows_in", 0)
            rows_out += stats.get("rows_out", stats.get("rows_in", 0))
            rejected += stats.get("rejected", 0)
            seconds += stats.get("seconds", 0.0)
            _add_stats(step_stats, stats.get("stats") or {})
            kept += rows
            parts.append((str(part), rows))
        entry = {"step": i, "name": name, "rows_in": rows_in, "kept": kept, "rejected": rejected,
                 "seconds": round(seconds, 3), "_parts": parts,
                 "_rejects": sorted(folder.glob("rejects-*.parquet"))}
        if rows_out != rows_in:  # a step that expands rows: kept + rejected == rows_out
            entry["rows_out"] = rows_out
        if step_stats:
            entry["stats"] = step_stats
        return entry

    # --- final write ---------------------------------------------------------------------------
    def _finish(self, fingerprint: str, funnel: list[dict], outputs: dict[str | None, tuple[Path, pa.Schema, list[dict]]],
                started: float) -> RunResult:
        log.info("writing data/, rejects/%s", " and the card" if self.card else "")
        first = len(self.p.steps) + 1
        numbered = [(f"{i}:{s.name}", s) for i, s in enumerate(self.p.steps, 1)]
        numbered += [(f"{v}/{i}:{s.name}", s) for v, vs in self.p.variants.items() for i, s in enumerate(vs, first)]
        manifest: dict[str, Any] = {
            "curate_version": library_versions().get("curate", "dev"),
            "curate_source": source_info(),  # distribution, version, commit: the card's install line
            "schema_version": SCHEMA_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": fingerprint,
            "command": self.command,
            "input": {**self.source.describe(), "fingerprint": self.source.fingerprint()},
            "recipe": {**self.p.recipe(), "batch_size": self.p.batch_size},
            "seeds": {key: s.params()["seed"] for key, s in numbered if "seed" in s.params()},
            "libraries": library_versions(),
            "funnel": [_public(f) for f in funnel],
            "wall_seconds": 0.0,  # set below, once the shards are written
            "engine": self.engine.name,
            "computed": self.ran,  # the stages this run computed; the others came from a finished run
            **self.p.describe(),
        }
        if self.kept_card or self.p.card:
            manifest["card"] = {**self.kept_card, **self.p.card}
        shard_md = {"manifest": {k: manifest[k] for k in ("fingerprint", "recipe", "input")}}
        self.trash.discard(self.out / "rejects")
        rejects = self._collect_rejects(funnel, "rejects")
        files: list[str] = []
        total_rows = 0
        configs: dict[str, Any] = {}
        for config, (last, schema, vfunnel) in outputs.items():
            parts = last["_parts"]
            rows = sum(n for _, n in parts)
            nbytes = sum(os.stat(p).st_size for p, _ in parts)
            written = self._write_shards(parts, schema, rows, nbytes, config, shard_md)
            files += written
            total_rows += rows
            if config is not None:
                vrejects = self._collect_rejects(vfunnel, f"rejects/{config}")
                rejects += [{**r, "config": config} for r in vrejects]
                configs[config] = {"rows": rows, "files": written, "columns": schema.names,
                                   "funnel": [_public(f) for f in vfunnel]}
        manifest["output"] = {"rows": total_rows, "files": files,
                              "columns": next(iter(outputs.values()))[1].names}
        if configs:
            manifest["configs"] = configs
        manifest["rejects"] = rejects
        if coverage := _coverage_warnings(manifest, self.p):  # variants that are partly copies of the base
            manifest["coverage_warnings"] = coverage
            for line in coverage:
                warnings.warn(f"low corruption coverage: {line}", stacklevel=3)
        manifest["wall_seconds"] = round(time.time() - started, 3)
        damaged = _check_outputs(self.out, manifest)
        if damaged:  # written, yet not there as listed: never call such a run finished
            raise PipelineError(f"{self.out}: {damaged} after writing them; run the same command again")
        write_json_atomic(manifest, self.out / MANIFEST)
        if self.card:
            _write_card(self.out)
        self._keep_stages()
        log.debug("wrote %s rows to %s in %.1f s (stages computed: %s)", f"{total_rows:,}", self.shown,
                 manifest["wall_seconds"], ", ".join(self.ran) or "none, all finished before")
        return RunResult(self.shown, manifest)

    def _keep_stages(self) -> None:
        """Keep this run's stages for the next run of a changed recipe: in ``.curate/`` with
        ``keep_work``, else moved to ``.curate-cache/``; stages of older recipes are dropped."""
        for folder in [*self.work.glob("stage-*"), *self.work.glob("variant-*/stage-*")]:
            if folder not in self.used:
                self.trash.discard(folder)
        for folder in self.work.glob("variant-*"):
            if not any(folder.iterdir()):
                folder.rmdir()
        self.trash.discard(self.cache_dir)
        self._park_work()

    def _park_work(self) -> None:
        """After a finished run: the work folder becomes the stage cache (``.curate-cache/``), or
        goes with ``cache=False``; ``keep_work`` leaves it where it is."""
        if self.keep_work or not self.work.exists():
            return
        self.trash.discard(self.cache_dir)
        if self.cache:
            os.replace(self.work, self.cache_dir)
        else:
            self.trash.discard(self.work)

    def _write_shards(self, parts: list[tuple[str, int]], schema: pa.Schema, rows: int, nbytes: int,
                      config: str | None, metadata: dict[str, Any]) -> list[str]:
        """Evenly sized shards named the way the HF hub expects, one unit of work each, from the
        last stage's parts (path, rows)."""
        n = max(1, math.ceil(nbytes / self.shard_bytes)) if rows else 1
        n = min(n, max(rows, 1))
        per = math.ceil(rows / n) if rows else 0
        names = shard_names(n, config=config)
        folder = self.out / Path(names[0]).parent
        if folder.exists():
            for old in folder.glob("train-*.parquet"):
                old.unlink()
        items = [(self.out / name, min(k * per, rows), rows if k == n - 1 else min((k + 1) * per, rows))
                 for k, name in enumerate(names)]

        def work(_: Any, item: tuple[Path, int, int]) -> dict[str, int]:
            return write_shard(parts, item[1], item[2], item[0], schema, metadata)

        self.engine.map(work, items)
        return names

    def _collect_rejects(self, funnel: list[dict], prefix: str) -> list[dict[str, Any]]:
        """One Parquet file per step that rejected rows, streamed from its parts."""
        items = []
        for stats in funnel:
            rparts = stats["_rejects"]
            if rparts:
                items.append((stats["name"], f"{prefix}/{stats['step']:02d}-{stats['name']}.parquet", rparts))
        out = self.out

        def work(_: Any, item: tuple[str, str, list[Path]]) -> dict[str, int]:
            rschema = pq.read_schema(item[2][0]).remove_metadata()
            return {"rows": concat_parquet(item[2], out / item[1], rschema)}

        results = self.engine.map(work, items)
        return [{"step": name, "path": dest, "rows": r["rows"]} for (name, dest, _), r in zip(items, results, strict=True)]


class _StreamedRead:
    """A read stage running on a thread (``PartStream``): its parts, then its funnel entry."""

    def __init__(self, stream: PartStream, close: Callable[[], dict[str, Any]]):
        self.parts, self._close = stream, close
        self._entry: dict[str, Any] | None = None

    def entry(self) -> dict[str, Any]:
        """Wait for the read to end, close its stage: its funnel entry."""
        if self._entry is None:
            self.parts.finish()
            self._entry = self._close()
        return self._entry

    def close(self) -> None:
        """Stop the read if it still runs (its consumer failed); its stage stays open."""
        self.parts.close()


def _pending(folder: Path, parts: Iterable[tuple[str | Path, int, T]], planned: bool,
             bar: tqdm) -> Iterator[tuple[PartTask, T]]:
    """Part k of the stage in ``folder`` for each input part (source, rows, what goes along), row
    offsets counted on; the parts a killed run already wrote only move the bar."""
    offset = 0
    for k, (src, rows, along) in enumerate(parts):
        task = PartTask(k, str(src), str(folder / f"part-{k:05d}.parquet"), offset,
                        str(folder / "_fit" / f"plan-{k:05d}.parquet") if planned else None)
        offset += rows
        if Path(task.dest).exists():
            bar.update(rows)
        else:
            yield task, along


def _stage_meta(folder: Path) -> dict[str, Any]:
    """A stage folder's ``_meta.json`` (its fingerprint, whether complete); empty when it has none
    or it does not read (the stage is then made again)."""
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((folder / "_meta.json").read_text())
        if isinstance(meta, dict):
            return meta
    return {}


def _finished(folder: Path, fingerprint: str) -> bool:
    """A stage folder that holds this fingerprint's completed stage."""
    meta = _stage_meta(folder)
    return bool(meta.get("complete")) and meta.get("fingerprint") == fingerprint


class _RowCount:
    """Rows reported within the part being applied: the bar moves by them, and the part's own
    update at its end is reduced by as many."""

    def __init__(self, bar: tqdm):
        self.bar, self.rows = bar, 0

    def add(self, n: int) -> None:
        self.rows += n
        self.bar.update(n)

    def take(self) -> int:
        rows, self.rows = self.rows, 0
        return rows


def _check_outputs(out: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with the shards and rejects a manifest lists (missing, unreadable, other row
    counts), or None when they are all there as listed."""
    configs = manifest.get("configs") or {}
    expected = [(f, c["rows"], c["files"]) for f, c in configs.items()] or [
        (None, manifest.get("output", {}).get("rows", 0), manifest.get("output", {}).get("files", []))]
    for _, rows, files in expected:
        found = 0
        for f in files:
            try:
                found += pq.ParquetFile(out / f).metadata.num_rows
            except FileNotFoundError:
                return f"shard {f} listed in {MANIFEST} is missing"
            except (OSError, pa.ArrowInvalid) as e:
                return f"shard {f} listed in {MANIFEST} is unreadable ({e})"
        if found != rows:
            return f"the shards hold {found} rows, {MANIFEST} says {rows}"
    for r in manifest.get("rejects", []):
        if not (out / r["path"]).is_file():
            return f"rejects file {r['path']} listed in {MANIFEST} is missing"
    return None


def _step_fingerprint(before: str, step: Step) -> str:
    """A step's stage fingerprint: the stage before it, chained with the step's name and parameters."""
    return _hash(before, {step.name: step.params()})


def _stage_dir(folder: Path, i: int, name: str) -> Path:
    return folder / f"stage-{i:02d}-{name}"


def _stage_label(folder: Path) -> str:
    """``03-filter``, or ``shuffle_67/05-shuffle_steps`` for a variant's stage."""
    label = folder.name.removeprefix("stage-")
    parent = folder.parent.name
    return f"{parent.removeprefix('variant-')}/{label}" if parent.startswith("variant-") else label


def _write_card(out: Path) -> None:
    """The dataset card (README.md + plots/), written after the data; a card problem never fails a
    finished run: it is reported, and `curate card DIR` can write it again."""
    try:
        from curate.card import write_card
    except ImportError as e:  # the `card` extra (Pillow, huggingface_hub) is not installed
        warnings.warn(f"no dataset card written ({e}); install curate-cot[card] and run `curate card {out}`",
                      stacklevel=3)
        return
    try:
        write_card(out)
    except Exception as e:  # noqa: BLE001 - the data is written and valid; the card is extra
        warnings.warn(f"dataset card failed ({type(e).__name__}: {e}); run `curate card {out}` to retry",
                      stacklevel=3)


def _add_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Sum nested dicts of numbers in place (a step's per-batch stats into its funnel entry)."""
    for key, value in part.items():
        if isinstance(value, dict):
            _add_stats(total.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def _coverage_warnings(manifest: dict[str, Any], p: Pipeline) -> list[str]:
    """Each stage's own coverage warnings (``Step.coverage_warnings`` on its funnel stats), base
    steps first, then each config's, with where they ran."""
    first = len(p.steps) + 1
    chains = [(None, manifest["funnel"], dict(enumerate(p.steps, 1)))]
    chains += [(name, c["funnel"], dict(enumerate(p.variants[name], first)))
               for name, c in manifest.get("configs", {}).items()]
    out = []
    for config, funnel, steps in chains:
        for f in funnel:
            step = steps.get(f["step"])
            lines = step.coverage_warnings(f.get("stats") or {}) if step is not None else []
            where = f"config {config}: " if config else ""
            out += [f"{where}step {f['step']} '{f['name']}' {line}" for line in lines]
    return out


def _public(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if not k.startswith("_")}


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _frames(parts: list[Path], bar: tqdm) -> Iterator[pl.DataFrame]:
    for p in parts:
        frame = pl.read_parquet(p)
        yield frame
        bar.update(frame.height)
