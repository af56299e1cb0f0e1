"""The ray engine: the same units of work as the local engine, spread over a Ray cluster with Ray Data.

Every unit (read one input file, apply a step to one part, one band of MinHash, write one shard)
becomes one row of a small Ray Data dataset, and ``map_batches`` runs it where the cluster has
room: stateless steps as tasks, steps that hold a model or a verifier pool on a pool of actors
that keep it loaded (with the step's ``worker_resources``, e.g. a GPU each). Workers read and
write the stage's Parquet parts themselves, so the traces never pass through the driver, and the
parts are the local engine's (same names, same row order, same offsets): resume, rejects, the
manifest and the card work unchanged, and the dataset is the same. Parts are the unit, not Ray
Data blocks, because a block's boundaries depend on the cluster, and a part is written once,
atomically, and skipped on resume.

A step whose model is vLLM (or an openai one with ``ray_data_llm: true``) first has its
generations made by a ``ray.data.llm`` processor in one Ray Data job (``curate.engines.llm``);
its apply then reads them back and needs no GPU.

A global step's pass is its own ``plan`` (``curate.globalpass``): its units of work (hash a part,
one group of MinHash bands, ...) run here on the cluster, exactly as the local engine runs them
one after another; a step without a split pass (pairing, donor pools, shortest-correct) runs its
``fit`` on the driver, reading the parts one at a time, then applies on the cluster.

The output folder must be on storage every node sees (a shared or network file system): the
stage parts are how the workers hand data to each other.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curate.engines.base import Engine, WorkFn
from curate.engines.parts import PartTask
from curate.errors import PipelineError
from curate.step import Step


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise PipelineError("engine='ray' needs Ray Data: pip install 'curate-cot[ray]'") from None
    return ray


class RayEngine(Engine):
    """Run a pipeline on a Ray cluster: ``Pipeline(...).run(src, out, engine="ray")``.

    ``address``: an existing cluster (``"auto"``, ``"ray://head:10001"``, or the ``RAY_ADDRESS``
    environment variable when None); with neither, Ray starts a local one on this machine.
    ``num_cpus`` caps that local cluster. ``buckets`` fixes the exact-dedup shuffle width.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, buckets: int | None = None):
        self.ray = _import_ray()
        self.buckets = buckets
        self._started = False
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False,
                                      "logging_level": logging.WARNING, "log_to_driver": False}
            if num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            self.ray.init(**kwargs)
            self._started = True
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per unit batch is noise here
        context = self.ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # curate's own bars count rows
        context.print_on_execution_start = False

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def gpus(self) -> float:
        return float(self.ray.cluster_resources().get("GPU", 0))

    def width(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def generate_ahead(self, step: Step, tasks: list[PartTask], gen: Path,
                       bar: Callable[[str, int | None], Any]) -> bool:
        """A vLLM step's generations (an openai one's with ``ray_data_llm: true``) made by a
        ``ray.data.llm`` processor before the apply: ``curate.engines.llm``."""
        from curate.engines import llm

        if not llm.uses_processor(step.model_settings()):
            return False
        llm.check(step, self.gpus())
        todo = [t for t in tasks if not llm.part_file(gen, "given", t.k).exists()]
        counting = bar("requests", None)
        self.map(_collect, todo, state=(step, gen), on_result=lambda r: counting.update(r["rows"]))
        counting.close()
        generating = bar("generate", None)
        llm.run_rounds(self, step, [t.k for t in tasks], gen, generating.update)
        generating.close()
        return True

    def _pool_size(self, workers: dict[str, float], units: int) -> int:
        """Actors that fit the cluster at once for these per-worker resources (at least one)."""
        have = self.ray.cluster_resources()
        fits = [have.get("CPU", 1) // max(workers.get("num_cpus", 1), 1e-9)]
        if workers.get("num_gpus"):
            fits.append(have.get("GPU", 0) // workers["num_gpus"])
        return int(max(1, min(units, *fits)))

    def map(self, fn: WorkFn, items: list[Any], *, state: Any = None, workers: dict[str, float] | None = None,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        if not items:
            return []
        import cloudpickle

        ray = self.ray
        rows = [{"i": i, "item": cloudpickle.dumps(item)} for i, item in enumerate(items)]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        job = ray.put(cloudpickle.dumps((fn, state)))  # once in the object store, read by every worker
        if workers is None:
            mapped = ds.map_batches(_run_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"job": job})
        else:
            resources = {k: v for k, v in workers.items() if k in ("num_cpus", "num_gpus", "memory")}
            # by reference (in a list, so Ray passes it unresolved): stored once, however many actors start
            mapped = ds.map_batches(_Worker, batch_size=1, batch_format="pyarrow",
                                    fn_constructor_kwargs={"job": [job], "cpus": workers.get("num_cpus", 1)},
                                    compute=ray.data.ActorPoolStrategy(size=self._pool_size(workers, len(items))),
                                    **resources)
        results: list[dict[str, Any] | None] = [None] * len(items)
        for row in mapped.iter_rows():
            if row["error"] is not None:  # the unit's own exception, raised here as it would be locally
                raise cloudpickle.loads(row["error"])
            result = json.loads(row["result"])
            results[row["i"]] = result
            if on_result is not None:
                on_result(result)
        return [r if r is not None else {} for r in results]


class _Worker:
    """A long-lived worker: unpickles the job (and so the step and its model) once, then runs units."""

    def __init__(self, job: list[Any], cpus: float):
        import cloudpickle
        import ray

        os.environ["CURATE_WORKERS"] = str(max(1, int(cpus)))  # pools inside size to what was reserved
        self.fn, self.state = cloudpickle.loads(ray.get(job[0]))

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        return _units(self.fn, self.state, batch)


def _collect(state: tuple[Step, Path], task: PartTask) -> dict[str, int]:
    from curate.engines.llm import collect

    step, gen = state
    return collect(step, task.k, task.src, gen)


def _run_units(batch: Any, job: Any) -> dict[str, list[Any]]:
    import cloudpickle
    import ray

    fn, state = cloudpickle.loads(ray.get(job))
    return _units(fn, state, batch)


def _units(fn: WorkFn, state: Any, batch: Any) -> dict[str, list[Any]]:
    """Run the batch's units; an exception comes back as data (Ray's wrappers would lose its type)."""
    import cloudpickle

    out: dict[str, list[Any]] = {"i": [], "result": [], "error": []}
    for i, item in zip(batch["i"].to_pylist(), batch["item"].to_pylist(), strict=True):
        try:
            result, error = json.dumps(fn(state, cloudpickle.loads(item)), default=_plain), None
        except Exception as e:  # noqa: BLE001 - sent back to the driver, which raises it
            result, error = None, _pickled(e)
        out["i"].append(i)
        out["result"].append(result)
        out["error"].append(error)
    return out


def _pickled(error: Exception) -> bytes:
    import cloudpickle

    try:
        data = cloudpickle.dumps(error)
        cloudpickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - an exception that does not travel: keep its type name and message
        return cloudpickle.dumps(PipelineError(f"{type(error).__name__} in a ray worker: {error}"))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"cannot send {type(value).__name__} back from a worker")
