"""The card's *Variants* section: per config what it did (its own parameters, the method's origin)
and what came out (rows, share of rows changed, steps, thinking length, answer accuracy)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.parquet as pq

from curate.answers import METHODS, extract_answer, normalise_answer, same_answer
from curate.ops.corrupt import coverage_warnings

if TYPE_CHECKING:
    from curate.card.card import Folder

_PAPER = "Li et al. 2025"
_NOT_PUBLIC = ("the paper's perturbation; its code is not public, so the steps (`segment_steps`) and the "
               "choice of steps are this toolkit's reading")


def method_origin(step: str, params: dict[str, Any], kinds: set[str]) -> str:
    """Whose method a variant step is: the paper's own (with the file followed) or this toolkit's."""
    if step == "corrupt_digits":
        if (params.get("replacement"), params.get("unit"), params.get("sampling")) == ("paper", "number", "bernoulli"):
            return f"{_PAPER}'s rule (`skythought/tools/corrupt_data.py`)"
        return "this toolkit's option (not the paper's rule)"
    if step == "remove_keywords":
        if any(":model" in k for k in kinds):
            return f"{_PAPER}'s method, a model rewrite (`tag_output.py`), with this toolkit's prompt"
        return "this toolkit's rule-based keyword deletion: a different method from the paper's model rewrite"
    if step in ("shuffle_steps", "delete_steps"):
        return _NOT_PUBLIC
    if step == "insert_steps":
        return _NOT_PUBLIC if params.get("mode", "insert") == "insert" else "this toolkit's option (replace)"
    if step == "corrupt_wrong_answer":
        return "this toolkit's synthetic wrong answers (the paper used the teacher's incorrect traces)"
    if step == "filter" and (params.get("where") or {}).get("verify_correct") == {"eq": False}:
        return f"{_PAPER}'s: the same teacher's traces whose answer verified incorrect"
    return ""


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in params.items())


def _measure(folder: Folder, config: str) -> dict[str, Any]:
    """Steps, thinking length and answer accuracy of one config, read batch by batch."""
    names = folder.schema(config).names
    cols = [c for c in ("thinking", "solution", "answer", "reference_answer", "verify_correct", "steps_count",
                        "corrupt_kind") if c in names]
    lengths, steps, kinds, judged, correct = [], [], set(), 0, 0
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
                if row.get("corrupt_kind"):
                    kinds.add(row["corrupt_kind"])
                ok = _correct(row, thinking)
                if ok is not None:
                    judged += 1
                    correct += ok
    s = pl.Series(lengths, dtype=pl.Int64)
    return {"median": int(s.median()) if len(s) else None,  # type: ignore[arg-type]
            "p90": int(s.quantile(0.9, "nearest")) if len(s) else None,  # type: ignore[arg-type]
            "steps": sum(steps) / len(steps) if steps else None, "kinds": kinds,
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


def _changed(entries: list[tuple[dict[str, Any], str, dict[str, Any]]], rows: int) -> str:
    for f, _, _ in reversed(entries):
        c = (f.get("stats") or {}).get("corruption")
        if c:
            share = f"{c['changed'] / rows:.1%}" if rows else "—"
            return share + (f" ({c['changed'] / c['target']:.1%} of {c['target']:,} drawn)"
                            if c["target"] != c["rows"] and c["target"] else "")
    return "— (not corrupted)"


def variants_section(folder: Folder, configs: dict[str, int]) -> list[str]:
    """Markdown lines of the *Variants* section."""
    from curate.card.card import Md, _table, _variant_params, code

    out = ["## Variants", "", "Each config is the base rows plus the steps listed (controlled ablations: corrupted "
           "configs are wrong on purpose). *changed*: rows whose text the corruption changed, as a share of the "
           "config's rows; *accuracy*: the final answer re-read from each row's text against `reference_answer` "
           "(the `verify` verdict where the answer text is unchanged since verification, else a string / number "
           "comparison); thinking length in characters.", ""]
    warnings = coverage_warnings(folder.manifest)
    if warnings:
        out += [f"**Warning: low corruption coverage.** {w}" for w in warnings] + [""]
    rows = []
    for name in folder.configs:
        entries = folder.variant_steps(name)
        m = _measure(folder, name)
        what, origins = [], []
        for _, step, params in entries:
            shown = _variant_params(step, params)
            if step == "filter" and set(shown) == {"where"} and set(shown["where"]) == {"verify_correct"}:
                eq = shown["where"]["verify_correct"].get("eq")
                what.append("the base's " + ("correct" if eq else "incorrect") + " traces (`verify_correct`)")
            else:
                hidden = ("model", "prompt", *(("mode",) if step in ("shuffle_steps", "delete_steps") else ()))
                shown = {k: v for k, v in shown.items() if k not in hidden}  # their mode: rules unused on segmented rows
                kinds = sorted({k.split("+")[-1] for k in m["kinds"]} if step == "remove_keywords" else set())
                what.append(f"{code(step)} {code(_params(shown)) if shown else ''}".rstrip()
                            + (f" (ran as {code(', '.join(kinds))})" if kinds else ""))
            origin = method_origin(step, params, m["kinds"])
            if origin:
                origins.append(origin)
        acc = f"{m['accuracy']:.1%}" if m["accuracy"] is not None else "—"
        rows.append([code(name), configs[name], _changed(entries, configs[name]),
                     f"{m['steps']:.1f}" if m["steps"] is not None else "—", m["median"], m["p90"], acc,
                     Md("; then ".join(what) or "none (the base rows)"), Md("; ".join(origins) or "—")])
    out += [_table(["config", "rows", "changed", "mean steps", "thinking median", "thinking p90",
                    "accuracy", "what it changes", "method"], rows), ""]
    return out
