"""The card's *Variants* section: per config what it did (its own parameters, the method's origin)
and what came out (rows, share of rows changed, steps, thinking length, answer accuracy). Each step
describes itself (``Step.card_variant``); the card names no step."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.parquet as pq

from curate.answers import METHODS, extract_answer, normalise_answer, same_answer
from curate.card.markdown import Md, code, table
from curate.card.section import VariantNote, VariantStep, step_classes

if TYPE_CHECKING:
    from curate.card.card import Folder


def _measure(folder: Folder, config: str) -> dict[str, Any]:
    """Steps, thinking length and answer accuracy of one config, read batch by batch."""
    names = folder.schema(config).names
    cols = [c for c in ("thinking", "solution", "answer", "reference_answer", "verify_correct", "steps_count")
            if c in names]
    lengths, steps, judged, correct = [], [], 0, 0
    for path in folder.files(config):
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=512, columns=cols,
                                                                           use_threads=False):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            for row in frame.iter_rows(named=True):
                thinking = row.get("thinking") or ""
                lengths.append(len(thinking))
                if row.get("steps_count") is not None:
                    steps.append(row["steps_count"])
                ok = _correct(row, thinking)
                if ok is not None:
                    judged += 1
                    correct += ok
    s = pl.Series(lengths, dtype=pl.Int64)
    return {"median": int(s.median()) if len(s) else None,  # type: ignore[arg-type]
            "p90": int(s.quantile(0.9, "nearest")) if len(s) else None,  # type: ignore[arg-type]
            "steps": sum(steps) / len(steps) if steps else None,
            "accuracy": correct / judged if judged else None, "judged": judged}


def _correct(row: dict[str, Any], thinking: str) -> bool | None:
    """The row's final answer, re-read from its text, against ``reference_answer``.

    Where the answer text is still the one ``verify`` judged (same canonical form as ``answer``),
    its verdict stands (math-verify knows equivalent forms); otherwise a string / number comparison.
    """
    reference = row.get("reference_answer")
    if not reference:
        return None
    found, _ = extract_answer(row.get("solution") or "", METHODS)
    if found is None and thinking:
        found, _ = extract_answer(thinking, METHODS)
    if found is None:
        return False
    verdict = row.get("verify_correct")
    if verdict is not None and normalise_answer(found) == normalise_answer(row.get("answer")):
        return bool(verdict)
    return same_answer(found, reference)


def variants_section(folder: Folder, configs: dict[str, int]) -> list[str]:
    """Markdown lines of the *Variants* section."""
    from curate.card.card import _variant_params

    out = ["## Variants", "", "Each config is the base rows plus the steps listed (controlled ablations: corrupted "
           "configs are wrong on purpose). *changed*: rows whose text the corruption changed, as a share of the "
           "config's rows; *accuracy*: the final answer re-read from each row's text against `reference_answer` "
           "(the `verify` verdict where the answer text is unchanged since verification, else a string / number "
           "comparison); thinking length in characters.", ""]
    warnings = folder.manifest.get("coverage_warnings", [])
    if warnings:
        out += [f"**Warning: low corruption coverage.** {w}" for w in warnings] + [""]
    classes = step_classes()
    rows = []
    for name in folder.configs:
        m = _measure(folder, name)
        distinct = cache(lambda column, name=name: _distinct(folder, name, column))
        notes = []
        for f, step, params in folder.variant_steps(name):
            v = VariantStep(step, params, _variant_params(step, params), f.get("stats") or {}, configs[name],
                            distinct)
            cls = classes.get(step)
            notes.append((cls.card_variant(v) if cls is not None else None) or VariantNote(v.describe()))
        changed = next((n.changed for n in reversed(notes) if n.changed is not None), "— (not corrupted)")
        acc = f"{m['accuracy']:.1%}" if m["accuracy"] is not None else "—"
        rows.append([code(name), configs[name], changed,
                     f"{m['steps']:.1f}" if m["steps"] is not None else "—", m["median"], m["p90"], acc,
                     Md("; then ".join(n.what for n in notes) or "none (the base rows)"),
                     Md("; ".join(n.origin for n in notes if n.origin) or "—")])
    out += [table(["config", "rows", "changed", "mean steps", "thinking median", "thinking p90",
                    "accuracy", "what it changes", "method"], rows), ""]
    return out


def _distinct(folder: Folder, config: str, column: str) -> set[str]:
    """The non-empty values of one column in a config's rows (a step's own annotation, read on demand)."""
    if column not in folder.schema(config).names:
        return set()
    values = pl.concat([pl.read_parquet(p, columns=[column]) for p in folder.files(config)])[column]
    return {str(v) for v in values.drop_nulls().unique().to_list() if v}
