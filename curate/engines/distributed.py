"""Global passes that run as units of work over the stage parts, so no data funnels through the driver.

Each fit writes its intermediate files under the stage's ``_fit/`` folder (shared storage on a
cluster) and ends with small per-part plans that the apply tasks read; a finished fit leaves
``done.json``, so a killed run does not redo it. The results equal the steps' own in-memory
``fit`` (tests compare them), only the work is split:

- ``exact_dedup``: hash shuffle. Each part's 128-bit text hashes go to ``buckets`` files by hash;
  one task per bucket picks each group's survivor.
- ``minhash_dedup``: signatures per part -> band-partitioned files -> one task per band sorts its
  keys into candidate pairs -> tasks verify chunks of pairs (loading only the parts they touch) ->
  the in-memory fit's keep-first rule over the checked pairs on the driver.
- ``sample``: stratum counts per part, then each part's smallest seeded hashes per stratum;
  the driver merges them into one cut per stratum (a few numbers the apply tasks receive).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.engines.base import Engine
from curate.engines.parts import PlannedApply
from curate.io.write import remove_tree, write_json_atomic, write_parquet_atomic
from curate.ops.dedup.exact import ExactDedup
from curate.ops.dedup.minhash import (
    _M32,
    MinHashDedup,
    ShingleSets,
    Signer,
    band_keys,
    bucket_pairs,
    keep_first,
    keep_rank,
    response_length,
    shingle_keys_of,
    sig_jaccard,
    unique_pairs,
)
from curate.ops.select import Sample
from curate.step import Step, StepResult

PAIRS_PER_TASK = 200_000  # candidate pairs one verification task checks
_PLAN = pl.Schema({"row": pl.Int64, "duplicate_of": pl.String, "score": pl.Float64})

Progress = Callable[[int], Any] | None
Fit = Callable[[Engine, Step, list[Path], list[int], Path, Progress], "PlannedApply | None"]


def distributed_fit(step: Step) -> Fit | None:
    """The distributed global pass of this step, or None (the engine then runs ``step.fit``)."""
    if type(step).__name__ == "SemanticDedup":  # an optional extra: not imported unless used
        return fit_semantic_dedup
    return {ExactDedup: fit_exact_dedup, MinHashDedup: fit_minhash_dedup, Sample: fit_sample}.get(type(step))


def shuffle_buckets(rows: int, parts: int) -> int:
    """Hash buckets of a shuffle: ~250k rows each, at least one per two parts, at most 1024."""
    return max(1, min(1024, max(math.ceil(rows / 250_000), parts // 2)))


# --- plans: what one part's apply task needs ------------------------------------------------------


def apply_duplicates(step: Step, batch: pl.DataFrame, offset: int, plan: Path) -> StepResult:
    """A dedup step's apply from its plan: the rows of this part to drop, the id kept for each, a score."""
    dup_of = pl.Series("duplicate_of", [None] * batch.height, dtype=pl.String)
    score = pl.Series("score", np.ones(batch.height))
    if plan.exists():
        p = pl.read_parquet(plan)
        rows = p["row"].to_numpy()
        dup_of = dup_of.scatter(rows, p["duplicate_of"])
        score = score.scatter(rows, p["score"].fill_null(1.0))
    return step.reject_duplicates(batch, dup_of, score)  # type: ignore[attr-defined]


def _write_plans(dups: pl.DataFrame, counts: list[int], folder: Path) -> None:
    """Split (pos, duplicate_of, score) by part into ``plan-KKKKK.parquet`` (row within the part)."""
    starts = np.cumsum([0, *counts])
    part = np.searchsorted(starts, dups["pos"].to_numpy(), side="right") - 1
    dups = dups.with_columns(pl.Series("part", part), (pl.col("pos") - pl.Series(starts[part])).alias("row"))
    for (k,), frame in dups.group_by("part"):
        write_parquet_atomic(frame.select("row", "duplicate_of", "score").cast(dict(_PLAN)).to_arrow(),
                             folder / f"plan-{int(k):05d}.parquet")


def _told(progress: Progress) -> Callable[[dict[str, Any]], None] | None:
    """An engine ``on_result`` that tells ``progress`` the rows each unit covered."""
    return None if progress is None else lambda result: progress(result["rows"])


def _done(folder: Path) -> dict[str, Any] | None:
    path = folder / "done.json"
    return json.loads(path.read_text()) if path.exists() else None


def _finish(folder: Path, state: dict[str, Any], scratch: list[str]) -> None:
    write_json_atomic(state, folder / "done.json")
    for name in scratch:  # intermediate files; the plans stay for the apply tasks
        remove_tree(folder / name)


def _parts(parts: list[Path], counts: list[int]) -> list[tuple[int, str, int]]:
    offsets = np.cumsum([0, *counts])[:-1].tolist()
    return [(k, str(p), o) for k, (p, o) in enumerate(zip(parts, offsets, strict=True))]


# --- exact dedup: hash shuffle ---------------------------------------------------------------------


def fit_exact_dedup(engine: Engine, step: Step, parts: list[Path], counts: list[int], folder: Path,
                    progress: Progress = None) -> PlannedApply:
    assert isinstance(step, ExactDedup)
    if _done(folder) is None:
        remove_tree(folder)
        buckets = engine.buckets or shuffle_buckets(sum(counts), len(parts))
        cols = list(dict.fromkeys(["id", *step.columns_read()[1:], "thinking", "solution"]))

        def hash_part(s: ExactDedup, item: tuple[int, str, int]) -> dict[str, int]:
            k, path, offset = item
            batch = pl.read_parquet(path, columns=cols)
            keys = s._keys(batch).with_columns(pl.Series("pos", np.arange(offset, offset + batch.height)),
                                               batch["id"].alias("id"))
            keys = keys.with_columns((pl.col("hi") % buckets).alias("bucket"))
            for (b,), frame in keys.group_by("bucket"):
                write_parquet_atomic(frame.drop("bucket").to_arrow(), folder / "keys" / f"b-{int(b):04d}" / f"part-{k:05d}.parquet")
            return {"rows": batch.height}

        engine.map(hash_part, _parts(parts, counts), state=step, on_result=_told(progress))
        order = step.keep_order()

        def reduce_bucket(_: Any, bucket: Path) -> dict[str, int]:
            table = pl.read_parquet(str(bucket / "*.parquet"))
            reps = (table.sort(order).group_by(["hi", "lo"], maintain_order=True)
                    .agg(pl.col("pos").first().alias("rep"), pl.col("id").first().alias("duplicate_of")))
            dups = table.join(reps, on=["hi", "lo"]).filter(pl.col("pos") != pl.col("rep"))
            write_parquet_atomic(dups.select("pos", "duplicate_of", pl.lit(None, pl.Float64).alias("score")).to_arrow(),
                                 folder / "dups" / f"{bucket.name}.parquet")
            return {"rows": table.height}

        engine.map(reduce_bucket, sorted((folder / "keys").glob("b-*")))
        dup_files = sorted((folder / "dups").glob("*.parquet"))
        dups = pl.concat([pl.read_parquet(p) for p in dup_files]) if dup_files else pl.DataFrame(
            schema={"pos": pl.Int64, "duplicate_of": pl.String, "score": pl.Float64})
        _write_plans(dups, counts, folder)
        _finish(folder, {"dropped": dups.height}, ["keys", "dups"])
    return apply_duplicates


# --- minhash dedup: bands, pairs, components ---------------------------------------------------------


def _sig_column(sig: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), sig.shape[1])


def _sig_matrix(col: pa.ChunkedArray, num_perm: int) -> np.ndarray:
    flat = col.combine_chunks().flatten() if col.num_chunks else pa.array([], pa.uint32())
    return np.asarray(flat, dtype=np.uint32).reshape(-1, num_perm)


def fit_minhash_dedup(engine: Engine, step: Step, parts: list[Path], counts: list[int], folder: Path,
                      progress: Progress = None) -> PlannedApply:
    assert isinstance(step, MinHashDedup)
    done = _done(folder)
    if done is None:
        remove_tree(folder)
        starts = np.cumsum([0, *counts])
        text_cols = ["problem"] if step.mode == "problem" else ["problem", "thinking", "solution"]
        meta_cols = list(dict.fromkeys(["id", "thinking", "solution", *text_cols]
                                       + ([step.best_by] if step.keep == "best" else [])))

        def sign_part(s: MinHashDedup, item: tuple[int, str, int]) -> dict[str, int]:
            k, path, offset = item
            batch = pl.read_parquet(path, columns=meta_cols)
            signer = Signer(s.num_perm, s.seed, s.shingle, s.size, s.workers)
            sig, rows, h = signer.sign(s._text(batch))
            pos = np.arange(offset, offset + batch.height, dtype=np.int64)
            valid = (sig != _M32).any(axis=1)
            keys = band_keys(sig, s.bands, s.rows)
            for b in range(s.bands):
                write_parquet_atomic(pa.table({"key": keys[b][valid], "pos": pos[valid]}),
                                     folder / "bands" / f"b-{b:03d}" / f"part-{k:05d}.parquet")
            meta = {"pos": pos, "id": batch["id"].to_arrow(), "len": response_length(batch).to_arrow(),
                    "sig": _sig_column(sig), "num": s.numbers(batch)}
            if s.keep == "best":
                meta["best"] = batch[s.best_by].to_arrow()
            write_parquet_atomic(pa.table(meta), folder / "rows" / f"part-{k:05d}.parquet")
            if s.verify == "jaccard":  # each row's shingle set: sorted unique (pos << 32 | hash)
                key = shingle_keys_of(rows, h, offset, s.max_shingles)
                write_parquet_atomic(pa.table({"key": key}), folder / "shingles" / f"part-{k:05d}.parquet")
            return {"rows": batch.height}

        engine.map(sign_part, _parts(parts, counts), state=step, on_result=_told(progress))

        def band_task(_: Any, band: Path) -> dict[str, int]:
            t = pl.read_parquet(str(band / "*.parquet")).sort(["key", "pos"])
            pairs = unique_pairs(bucket_pairs(t["key"].to_numpy(), t["pos"].to_numpy()))
            write_parquet_atomic(pa.table({"a": pairs[:, 0], "b": pairs[:, 1]}), folder / "pairs" / f"{band.name}.parquet")
            return {"rows": t.height}

        engine.map(band_task, sorted((folder / "bands").glob("b-*")))
        found = [pl.read_parquet(p) for p in sorted((folder / "pairs").glob("*.parquet"))]
        cand = pl.concat(found) if found else pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64})
        pairs = unique_pairs(np.stack([cand["a"].to_numpy(), cand["b"].to_numpy()], axis=1).astype(np.int64))
        ok = np.ones(len(pairs), dtype=bool)
        if step.verify != "none" and len(pairs):  # every candidate checked here, in parallel tasks
            ok = _score_pairs(engine, step, pairs, starts, folder, step.verify) >= step.threshold
        dups = _clusters(engine, step, pairs, ok, starts, folder)
        _write_plans(dups, counts, folder)
        checked = len(pairs) if step.verify != "none" else 0
        done = {"stats": {"rows": int(starts[-1]), "candidate_pairs": len(pairs), "checked_pairs": checked,
                          "dropped": dups.height}}
        _finish(folder, done, ["bands", "pairs", "rows", "shingles", "requests", "gathered", "scores"])
    step.stats = done["stats"]
    return apply_duplicates


def _load_rows(folder: Path, starts: np.ndarray, positions: np.ndarray, columns: list[str]) -> pl.DataFrame:
    """The per-row files' ``columns`` for these global positions (only the parts they fall in)."""
    wanted = pl.DataFrame({"pos": positions.astype(np.int64)})
    parts = np.unique(np.searchsorted(starts, positions, side="right") - 1)
    frames = [pl.read_parquet(folder / "rows" / f"part-{k:05d}.parquet", columns=["pos", *columns])
              .join(wanted, on="pos", how="semi") for k in parts]  # keep only the wanted rows of each part
    return wanted.join(pl.concat(frames), on="pos", how="left", maintain_order="left")


def _score_pairs(engine: Engine, step: MinHashDedup, pairs: np.ndarray, starts: np.ndarray, folder: Path,
                 how: str) -> np.ndarray:
    """Jaccard of each pair: exact on shingle sets (``jaccard``) or estimated from signatures.

    Pairs are cut into chunks; each part sends the rows a chunk needs to that chunk's folder (a
    shuffle of only the rows in pairs), so a scoring task reads its own rows and nothing else."""
    chunks = [pairs[s: s + PAIRS_PER_TASK] for s in range(0, len(pairs), PAIRS_PER_TASK)]
    if not chunks:
        return np.empty(0)
    for name in ("requests", "gathered", "scores"):
        remove_tree(folder / name)
    need = pl.DataFrame({"pos": np.concatenate([c.ravel() for c in chunks]),
                         "chunk": np.repeat(np.arange(len(chunks)), [c.size for c in chunks])}).unique()
    need = need.with_columns(pl.Series("part", np.searchsorted(starts, need["pos"].to_numpy(), side="right") - 1))
    for (k,), frame in need.group_by("part"):
        write_parquet_atomic(frame.drop("part").to_arrow(), folder / "requests" / f"part-{int(k):05d}.parquet")
    source = "shingles" if how == "jaccard" else "rows"

    def send(_: Any, request: Path) -> dict[str, int]:
        wanted = pl.read_parquet(request)
        data = pl.read_parquet(folder / source / request.name)
        if how == "jaccard":  # shingle keys are pos << 32 | hash
            data = data.with_columns((pl.col("key") // (1 << 32)).cast(pl.Int64).alias("pos"))
        else:
            data = data.select("pos", "sig")
        sent = data.join(wanted, on="pos")
        for (c,), frame in sent.group_by("chunk"):
            write_parquet_atomic(frame.drop("chunk").to_arrow(),
                                 folder / "gathered" / f"chunk-{int(c):05d}" / request.name)
        return {"rows": sent.height}

    engine.map(send, sorted((folder / "requests").glob("part-*.parquet")))

    def score(s: MinHashDedup, item: tuple[int, np.ndarray]) -> dict[str, int]:
        c, chunk = item
        got = pl.read_parquet(str(folder / "gathered" / f"chunk-{c:05d}" / "*.parquet"))
        nodes, local = np.unique(chunk, return_inverse=True)
        local = local.reshape(chunk.shape)
        if how == "jaccard":  # the rows' shingle keys with the row renumbered into this chunk, still sorted
            key = np.sort(got["key"].to_numpy())
            at = np.searchsorted(nodes, (key >> np.uint64(32)).astype(np.int64))
            sets = ShingleSets((at.astype(np.uint64) << np.uint64(32)) | (key & np.uint64(0xFFFFFFFF)),
                               len(nodes), s.max_shingles)
            values = sets.jaccard(local)
        else:
            got = got.sort("pos")
            values = sig_jaccard(_sig_matrix(got.to_arrow()["sig"], s.num_perm), local)
        write_parquet_atomic(pa.table({"score": values}), folder / "scores" / f"chunk-{c:05d}.parquet")
        return {"rows": len(chunk)}

    engine.map(score, list(enumerate(chunks)), state=step)
    return np.concatenate([pq.read_table(folder / "scores" / f"chunk-{c:05d}.parquet")["score"].to_numpy()
                           for c in range(len(chunks))])


def _clusters(engine: Engine, step: MinHashDedup, pairs: np.ndarray, ok: np.ndarray, starts: np.ndarray,
              folder: Path) -> pl.DataFrame:
    """The in-memory fit's ``keep_first`` over the candidate pairs (``ok``: within the threshold),
    rows in no pair kept: (pos, duplicate_of, score) of every dropped row."""
    empty = pl.DataFrame(schema={"pos": pl.Int64, "duplicate_of": pl.String, "score": pl.Float64})
    if len(pairs) == 0:
        return empty
    nodes, local = np.unique(pairs, return_inverse=True)  # ascending: rank ties break by position as locally
    rows = _load_rows(folder, starts, nodes, ["id", "len", "num", *(["best"] if step.keep == "best" else [])])
    rank = keep_rank(step.keep, len(nodes), [rows["len"]], [rows["best"]] if step.keep == "best" else [])
    local = local.reshape(pairs.shape)
    num = rows["num"].to_numpy()
    ok = ok & (num[local[:, 0]] == num[local[:, 1]])  # the in-memory check's same_numbers rule
    rep, _ = keep_first(len(nodes), local, rank, lambda e: ok[e])
    dup = np.flatnonzero(rep != np.arange(len(nodes)))
    if not len(dup):
        return empty
    dup_pairs = np.stack([nodes[dup], nodes[rep[dup]]], axis=1)
    score = _score_pairs(engine, step, dup_pairs, starts, folder, "signature")
    return pl.DataFrame({"pos": nodes[dup], "duplicate_of": rows["id"].gather(rep[dup]), "score": score})


# --- semantic dedup: embeddings on workers, the pair scan where the matrix fits ---------------------


def fit_semantic_dedup(engine: Engine, step: Step, parts: list[Path], counts: list[int], folder: Path,
                       progress: Progress = None) -> PlannedApply:
    from curate.ops.dedup.semantic import Embedder, SemanticDedup

    assert isinstance(step, SemanticDedup)
    if _done(folder) is None:
        remove_tree(folder)
        cols = list(dict.fromkeys(step.columns_read()))

        def embed_part(s: SemanticDedup, item: tuple[int, str, int]) -> dict[str, int]:
            k, path, offset = item
            batch = pl.read_parquet(path, columns=cols)
            if batch.height:
                if s._embedder is None:
                    s._embedder = Embedder(s.model, s.device, s.batch_size)
                emb = s._embedder.encode(s._text(batch))
                table = {"pos": np.arange(offset, offset + batch.height), "id": batch["id"].to_arrow(),
                         "len": response_length(batch).to_arrow(),
                         "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])}
                if s.keep == "best":
                    table["best"] = batch[s.best_by].to_arrow()
                write_parquet_atomic(pa.table(table), folder / "rows" / f"part-{k:05d}.parquet")
            return {"rows": batch.height}

        gpu = step.device.startswith("cuda") or (step.device == "auto" and engine.gpus() > 0)
        engine.map(embed_part, _parts(parts, counts), state=step, workers={"num_gpus": 1.0} if gpu else {},
                   on_result=_told(progress))
        files = sorted((folder / "rows").glob("*.parquet"))
        dups = pl.DataFrame(schema={"pos": pl.Int64, "duplicate_of": pl.String, "score": pl.Float64})
        if files:
            rows = pl.concat([pl.read_parquet(f) for f in files])
            emb = np.ascontiguousarray(rows["emb"].to_numpy(), dtype=np.float32)
            best = [rows["best"]] if step.keep == "best" else []
            rep, cos = step.clusters(emb, [rows["len"]], best, Embedder.pick_device(step.device))
            dup = np.flatnonzero(rep != np.arange(rows.height))
            dups = pl.DataFrame({"pos": rows["pos"].gather(dup), "duplicate_of": rows["id"].gather(rep[dup]),
                                 "score": cos[dup]})
        _write_plans(dups, counts, folder)
        _finish(folder, {"dropped": dups.height}, ["rows"])
    return apply_duplicates


# --- sample: counts, then each part's smallest keys ------------------------------------------------


def fit_sample(engine: Engine, step: Step, parts: list[Path], counts: list[int], folder: Path,
               progress: Progress = None) -> None:
    assert isinstance(step, Sample)
    done = _done(folder)
    if done is None:
        remove_tree(folder)
        cols = list(step.columns_read())
        items = _parts(parts, counts)

        def count(s: Sample, item: tuple[int, str, int]) -> dict[str, Any]:
            keys = s.keys(pl.read_parquet(item[1], columns=cols), item[2])
            return {"rows": keys.height, "strata": keys.group_by("stratum").len().rows()}

        totals: dict[str | None, int] = {}
        for result in engine.map(count, items, state=step, on_result=_told(progress)):
            for stratum, n in result["strata"]:
                totals[stratum] = totals.get(stratum, 0) + n
        quotas = step.quotas(totals)

        def smallest(s: Sample, item: tuple[int, str, int]) -> dict[str, int]:
            keys = s.keys(pl.read_parquet(item[1], columns=cols), item[2])
            best = s.ranked(keys, quotas).filter(pl.col("rank") < pl.col("quota")).drop("rank", "quota")
            write_parquet_atomic(best.to_arrow(), folder / "smallest" / f"part-{item[0]:05d}.parquet")
            return {"rows": keys.height}

        engine.map(smallest, items, state=step)
        step.set_cuts(totals, pl.read_parquet(str(folder / "smallest" / "*.parquet")))
        assert step._cut is not None
        done = {"total": step._total, "cuts": [[s, k, p] for s, (k, p) in step._cut.items()]}
        _finish(folder, done, ["smallest"])
    step._total = done["total"]
    step._cut = {s: (k, p) for s, k, p in done["cuts"]}
    return None
