"""Pipeline: run steps over a source, write data/, rejects/ and manifest.json; resume when killed.

Every stage (the read, then each step) writes one Parquet part per input batch under
``OUT/.curate/stage-NN-name/``, atomically, so a killed run resumes at the first missing part
without duplicating or losing rows. A stage is identified by a fingerprint chained from the
input and every step before it: change a step and only it and the steps after it run again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import platform
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from curate.engines.base import Engine
from curate.engines.llm import given
from curate.engines.parts import PartTask, apply_part, read_split, reject_schema, write_shard
from curate.errors import PipelineError
from curate.io.read import Source, read
from curate.io.write import (
    concat_parquet,
    read_metadata,
    remove_tree,
    shard_names,
    write_json_atomic,
    write_parquet_atomic,
)
from curate.schema import SCHEMA_VERSION, TRACE_SCHEMA
from curate.step import Step

WORK_DIR = ".curate"
MANIFEST = "manifest.json"
_LIBRARIES = ("curate", "pyarrow", "polars", "numpy", "datasets", "huggingface_hub", "math-verify",
              "datasketch", "sentence-transformers", "torch", "transformers", "vllm")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
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


class Pipeline:
    """An ordered list of steps. ``Pipeline([ExactDedup(), Filter(...)]).run(source, out=...)``."""

    def __init__(self, steps: Sequence[Step], *, variants: dict[str, Sequence[Step]] | None = None,
                 batch_size: int = 1024):
        """``variants`` maps a config name to the extra steps that make it from the shared base
        (e.g. ``{"clean": [], "shuffle_67": [ShuffleSteps(ratio=0.67)]}``); the base runs once and
        each variant is written as its own config, ``data/<name>/train-*.parquet``."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.steps = _check_steps(steps, "step")
        self.variants = {name: _check_steps(vs, f"variant {name!r} step") for name, vs in (variants or {}).items()}
        for name in self.variants:
            if not _CONFIG_NAME.fullmatch(name):
                raise ValueError(f"variant name {name!r}: use letters, digits, '_' and '-' (it names a folder)")
        self.batch_size = batch_size

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
    ) -> RunResult:
        """Run every step over ``data`` (a Source from ``read``, or anything ``read`` accepts)
        and write the dataset folder ``out`` (with its card, README.md, unless ``card=False``).
        A rerun of a finished run returns it unchanged.

        ``engine="ray"`` runs the same steps on a Ray cluster (``address``: an existing one, e.g.
        ``"auto"`` or ``"ray://head:10001"``; default: start one on this machine) and writes the
        same dataset; ``out`` must then be on storage every node sees."""
        from curate.engines import get_engine

        source = data if isinstance(data, Source) else read(data)
        runner = get_engine(engine, address)
        try:
            return _Run(self, source, Path(out), resume, overwrite, progress, keep_work, shard_bytes, command,
                        card, runner).go()
        finally:
            if runner is not engine:  # an engine passed in is the caller's to close
                runner.close()


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
            writers = [s.name for s in steps[i - first + 1:] if set(missing) & set(s.columns_written())]
            hint = f" ({', '.join(writers)} writes it, but runs later)" if writers else ""
            raise PipelineError(
                f"{where}step {i} '{step.name}' reads column(s) {', '.join(missing)} that neither the input "
                f"nor an earlier step provides{hint}"
            )
        for col, typ in step.columns_written().items():
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
                 card: bool, engine: Engine):
        self.p, self.source, self.shown = pipeline, source, out  # the folder as the caller named it
        self.out = out.resolve()  # what workers get: their working directory is not ours
        self.resume, self.overwrite, self.keep_work = resume, overwrite, keep_work
        self.progress_disabled = None if progress is None else not progress
        self.shard_bytes, self.command = shard_bytes, command
        self.work = self.out / WORK_DIR
        self.card = card
        self.engine = engine

    # --- the whole run -------------------------------------------------------------------------
    def go(self) -> RunResult:
        input_schema = self.source.schema()
        schemas = self.p.plan(input_schema)  # fail before any work
        base_schema = schemas[-1] if schemas else input_schema
        variant_schemas = self.p.variant_plans(base_schema)
        fingerprint = _hash(self.source.fingerprint(), self.p.recipe(), SCHEMA_VERSION, self.p.batch_size)
        done = self._existing(fingerprint)
        if done is not None:
            return done
        if not self.resume:
            remove_tree(self.work)
        started = time.time()
        read_fp = _hash(self.source.fingerprint(), SCHEMA_VERSION, self.p.batch_size)
        funnel = [self._read_stage(read_fp, input_schema)]
        base_fp, base_dir, funnel_steps = self._chain(self.p.steps, schemas, read_fp, _stage_dir(self.work, 0, "read"),
                                                      first=1, folder=self.work)
        funnel += funnel_steps
        outputs: dict[str | None, tuple[Path, pa.Schema, list[dict]]] = {}
        if not self.p.variants:
            outputs[None] = (base_dir, base_schema, [])
        for name, steps in self.p.variants.items():
            _, last, vfunnel = self._chain(steps, variant_schemas[name], base_fp, base_dir,
                                           first=len(self.p.steps) + 1, folder=self.work / f"variant-{name}",
                                           label=f"{name}: ")
            outputs[name] = (last, variant_schemas[name][-1] if steps else base_schema, vfunnel)
        return self._finish(fingerprint, funnel, outputs, time.time() - started)

    def _chain(self, steps: list[Step], schemas: list[pa.Schema], fp: str, prev_dir: Path, first: int,
               folder: Path, label: str = "") -> tuple[str, Path, list[dict]]:
        """Run steps one stage each, chaining fingerprints; returns the last fingerprint, folder, funnel."""
        funnel = []
        for i, (step, schema) in enumerate(zip(steps, schemas), first):
            fp = _hash(fp, {step.name: step.params()})
            stage = _stage_dir(folder, i, step.name)
            funnel.append(self._step_stage(i, step, fp, prev_dir, schema, stage, label + step.name))
            prev_dir = stage
        return fp, prev_dir, funnel

    def _existing(self, fingerprint: str) -> RunResult | None:
        manifest_path = self.out / MANIFEST
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("fingerprint") == fingerprint and not self.overwrite:
                if self.card and not (self.out / "README.md").exists():  # killed before the card
                    _write_card(self.out)
                return RunResult(self.shown, manifest)
            if not self.overwrite:
                raise PipelineError(
                    f"{self.out} holds a dataset made from another input or recipe; "
                    "pass overwrite=True (--overwrite) to replace it"
                )
            for name in ("data", "rejects", "plots"):
                remove_tree(self.out / name)
            manifest_path.unlink()
            (self.out / "README.md").unlink(missing_ok=True)
            remove_tree(self.work)
        elif (self.out.exists() and not self.work.exists() and not self.overwrite
              and any(p.name != WORK_DIR for p in self.out.iterdir())):
            raise PipelineError(
                f"{self.out} exists and is not a curate dataset folder; choose another --out or pass --overwrite"
            )
        return None

    def _open_stage(self, folder: Path, fingerprint: str) -> bool:
        """Prepare a stage folder; returns True when the stage already completed."""
        meta_path = folder / "_meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") == fingerprint:
                return bool(meta.get("complete"))
        remove_tree(folder)
        write_json_atomic({"fingerprint": fingerprint, "complete": False}, meta_path)
        return False

    def _close_stage(self, folder: Path, fingerprint: str, extra: dict[str, Any]) -> None:
        write_json_atomic({"fingerprint": fingerprint, "complete": True, **extra}, folder / "_meta.json")

    def _bar(self, desc: str, total: int | None) -> tqdm:
        return tqdm(total=total, desc=desc, unit=" rows", disable=self.progress_disabled, leave=False,
                    dynamic_ncols=True, file=sys.stderr)

    # --- stage 0: read ---------------------------------------------------------------------------
    def _read_stage(self, fingerprint: str, schema: pa.Schema) -> dict[str, Any]:
        folder = _stage_dir(self.work, 0, "read")
        if not self._open_stage(folder, fingerprint):
            bar = self._bar(f"[0/{len(self.p.steps)}] read", None)
            splits = list(enumerate(self.source.splits()))
            batch_size = self.p.batch_size

            def work(_: Any, item: tuple[int, Source]) -> dict[str, int]:
                return read_split(item[1], item[0], folder, schema, batch_size)

            self.engine.map(work, splits, on_result=lambda r: bar.update(r["rows"]))
            bar.close()
            if not any(folder.glob("part-*.parquet")):  # empty input: one empty part keeps the stage well-formed
                write_parquet_atomic(schema.empty_table(), folder / "part-00000-00000.parquet",
                                     {"part": {"rows_in": 0, "rejected": 0, "seconds": 0.0}})
            self._close_stage(folder, fingerprint, {})
        return self._stage_stats(0, "read", folder)

    # --- stage i: one step ---------------------------------------------------------------------
    def _step_stage(self, i: int, step: Step, fingerprint: str, in_dir: Path, out_schema: pa.Schema,
                    folder: Path, step_label: str) -> dict[str, Any]:
        if self._open_stage(folder, fingerprint):
            return self._stage_stats(i, step.name, folder)
        parts = sorted(in_dir.glob("part-*.parquet"))
        counts = [pq.ParquetFile(p).metadata.num_rows for p in parts]
        total = sum(counts)
        fit_seconds = 0.0
        n = len(self.p.steps) + max((len(v) for v in self.p.variants.values()), default=0)
        planned = None
        if step.needs_global_pass:
            t0 = time.perf_counter()
            bar = self._bar(f"[{i}/{n}] {step_label} (fit)", total)
            planned = self.engine.fit(step, parts, counts, folder / "_fit", lambda: _frames(parts, bar),
                                      progress=bar.update)
            bar.close()
            fit_seconds = time.perf_counter() - t0
        step.prepare()
        rschema = reject_schema(out_schema, step)
        bar = self._bar(f"[{i}/{n}] {step_label}", total)
        tasks, offset = [], 0
        for k, (part, count) in enumerate(zip(parts, counts, strict=True)):
            task = PartTask(k, str(part), str(folder / f"part-{k:05d}.parquet"), offset,
                            str(folder / "_fit" / f"plan-{k:05d}.parquet") if planned else None)
            offset += count
            if Path(task.dest).exists():
                bar.update(count)
            else:
                tasks.append(task)

        gen = folder / "_gen"
        ahead = self.engine.generate_ahead(step, tasks, gen, lambda what, total: self._bar(
            f"[{i}/{n}] {step_label} ({what})", total))
        workers = step.worker_resources()
        if ahead and workers:  # the model ran in the generation pass: the apply only reads its output
            workers = {k: v for k, v in workers.items() if k != "num_gpus"}

        def work(s: Step, task: PartTask) -> dict[str, int]:
            with given(s, gen, task.k) if ahead else contextlib.nullcontext():
                return apply_part(s, i, task, out_schema, rschema, planned)

        self.engine.map(work, tasks, state=step, workers=workers, on_result=lambda r: bar.update(r["rows"]))
        bar.close()
        self._close_stage(folder, fingerprint, {"fit_seconds": fit_seconds})
        return self._stage_stats(i, step.name, folder)

    def _stage_stats(self, i: int, name: str, folder: Path) -> dict[str, Any]:
        rows_in = rejected = kept = 0
        seconds = json.loads((folder / "_meta.json").read_text()).get("fit_seconds", 0.0)
        step_stats: dict[str, Any] = {}
        for part in sorted(folder.glob("part-*.parquet")):
            stats = read_metadata(part).get("part", {})
            rows_in += stats.get("rows_in", 0)
            rejected += stats.get("rejected", 0)
            seconds += stats.get("seconds", 0.0)
            _add_stats(step_stats, stats.get("stats") or {})
            kept += pq.ParquetFile(part).metadata.num_rows
        entry = {"step": i, "name": name, "rows_in": rows_in, "kept": kept, "rejected": rejected,
                 "seconds": round(seconds, 3), "_folder": str(folder)}
        if step_stats:
            entry["stats"] = step_stats
        return entry

    # --- final write ---------------------------------------------------------------------------
    def _finish(self, fingerprint: str, funnel: list[dict], outputs: dict[str | None, tuple[Path, pa.Schema, list[dict]]],
                wall: float) -> RunResult:
        first = len(self.p.steps) + 1
        numbered = [(f"{i}:{s.name}", s) for i, s in enumerate(self.p.steps, 1)]
        numbered += [(f"{v}/{i}:{s.name}", s) for v, vs in self.p.variants.items() for i, s in enumerate(vs, first)]
        manifest: dict[str, Any] = {
            "curate_version": library_versions().get("curate", "dev"),
            "schema_version": SCHEMA_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": fingerprint,
            "command": self.command,
            "input": {**self.source.describe(), "fingerprint": self.source.fingerprint()},
            "recipe": {**self.p.recipe(), "batch_size": self.p.batch_size},
            "seeds": {key: s.params()["seed"] for key, s in numbered if "seed" in s.params()},
            "libraries": library_versions(),
            "funnel": [_public(f) for f in funnel],
            "wall_seconds": round(wall, 3),
            "engine": self.engine.name,
        }
        shard_md = {"manifest": {k: manifest[k] for k in ("fingerprint", "recipe", "input")}}
        remove_tree(self.out / "rejects")
        rejects = self._collect_rejects(funnel, "rejects")
        files: list[str] = []
        total_rows = 0
        configs: dict[str, Any] = {}
        for config, (last_dir, schema, vfunnel) in outputs.items():
            parts = sorted(last_dir.glob("part-*.parquet"))
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
            nbytes = sum(p.stat().st_size for p in parts)
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
        from curate.ops.corrupt import coverage_warnings

        if coverage := coverage_warnings(manifest):  # variants that are partly copies of the base
            manifest["coverage_warnings"] = coverage
            for line in coverage:
                warnings.warn(f"low corruption coverage: {line}", stacklevel=3)
        write_json_atomic(manifest, self.out / MANIFEST)
        if self.card:
            _write_card(self.out)
        if not self.keep_work:
            remove_tree(self.work)
        return RunResult(self.shown, manifest)

    def _write_shards(self, parts: list[Path], schema: pa.Schema, rows: int, nbytes: int, config: str | None,
                      metadata: dict[str, Any]) -> list[str]:
        """Evenly sized shards named the way the HF hub expects, one unit of work each."""
        n = max(1, math.ceil(nbytes / self.shard_bytes)) if rows else 1
        n = min(n, max(rows, 1))
        per = math.ceil(rows / n) if rows else 0
        names = shard_names(n, config=config)
        folder = self.out / Path(names[0]).parent
        if folder.exists():
            for old in folder.glob("train-*.parquet"):
                old.unlink()
        sized = [(str(p), pq.ParquetFile(p).metadata.num_rows) for p in parts]
        items = [(self.out / name, min(k * per, rows), rows if k == n - 1 else min((k + 1) * per, rows))
                 for k, name in enumerate(names)]

        def work(_: Any, item: tuple[Path, int, int]) -> dict[str, int]:
            return write_shard(sized, item[1], item[2], item[0], schema, metadata)

        self.engine.map(work, items)
        return names

    def _collect_rejects(self, funnel: list[dict], prefix: str) -> list[dict[str, Any]]:
        """One Parquet file per step that rejected rows, streamed from its parts."""
        items = []
        for stats in funnel:
            rparts = sorted(Path(stats["_folder"]).glob("rejects-*.parquet"))
            if rparts:
                items.append((stats["name"], f"{prefix}/{stats['step']:02d}-{stats['name']}.parquet", rparts))
        out = self.out

        def work(_: Any, item: tuple[str, str, list[Path]]) -> dict[str, int]:
            rschema = pq.read_schema(item[2][0]).remove_metadata()
            return {"rows": concat_parquet(item[2], out / item[1], rschema)}

        results = self.engine.map(work, items)
        return [{"step": name, "path": dest, "rows": r["rows"]} for (name, dest, _), r in zip(items, results, strict=True)]


def _stage_dir(folder: Path, i: int, name: str) -> Path:
    return folder / f"stage-{i:02d}-{name}"


def _write_card(out: Path) -> None:
    """The dataset card (README.md + plots/), written after the data; a card problem never fails a
    finished run: it is reported, and `curate card DIR` can write it again."""
    try:
        from curate.card import write_card
    except ImportError as e:  # the `card` extra (matplotlib, huggingface_hub) is not installed
        warnings.warn(f"no dataset card written ({e}); install curate[card] and run `curate card {out}`",
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


def _public(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if not k.startswith("_")}


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _frames(parts: list[Path], bar: tqdm) -> Iterator[pl.DataFrame]:
    for p in parts:
        frame = pl.read_parquet(p)
        yield frame
        bar.update(frame.height)
