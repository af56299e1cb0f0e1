"""Validate a dataset by training on it: fine-tune one student per config (variant), score each, record it.

For every config of a dataset folder (``manifest["configs"]``, or the single ``default`` one) the
existing trainer (:func:`curate.train.sft.train`) writes ``OUT/<config>/`` and the existing
evaluator (:func:`curate.train.eval.evaluate`) writes ``OUT/<config>/eval/``. Per-benchmark pass@1
with its 95% Wilson interval is collected into ``DATASET/validation.json`` in the shape the
dataset card reads (``{"results": [{"config": ..., <metric>: value, ...}], ...}``; the card plots
the first numeric metric per config), and the card is regenerated.

One prompt template (:mod:`curate.train.template`, the dataset's markers and system prompt) is
resolved once and used by both training and evaluation; a run whose evaluation was prompted
differently from its training is refused. ``validation.json`` records the template, the batch
unit and the optimizer. ``preset`` (e.g. ``"table2"``, :mod:`curate.train.presets`) adds the
reference numbers beside the run's (``<benchmark>_paper`` columns) with their sources.

Resumable: a config whose ``final/`` model and ``eval/scores.json`` (for the same evaluation
settings) exist is not redone; an interrupted training resumes from its newest checkpoint. A run
folder trained with other settings is an error rather than silently reused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from curate.train.eval import EvalConfig, evaluate
from curate.train.presets import get_preset
from curate.train.sft import TrainConfig, train
from curate.train.template import Template, dataset_template

VALIDATION_FILE = "validation.json"


def dataset_configs(dataset: str | os.PathLike) -> list[str]:
    """Config names of a finished dataset folder: its variants, else ``["default"]``."""
    from curate.card.card import Folder

    return list(Folder.open(dataset).configs)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _eval_settings(cfg: EvalConfig) -> dict[str, Any]:
    return _jsonable({**asdict(cfg), "benchmarks": list(cfg.benchmarks)})


def _trained(run: Path, model: str, cfg: TrainConfig) -> bool:
    """True when ``run`` holds a finished training of ``model`` with ``cfg``; raise if settings differ."""
    record_path = run / "train_config.json"
    if not record_path.exists():
        return False
    record = json.loads(record_path.read_text())
    wanted = _jsonable(asdict(cfg))
    if record.get("model") != model or record.get("train") != wanted:
        diff = sorted(k for k in wanted if record.get("train", {}).get(k) != wanted[k])
        if record.get("model") != model:
            diff.insert(0, "model")
        raise ValueError(f"{run} was trained with other settings ({', '.join(diff)} differ): "
                         f"use another --out, or delete that folder to retrain")
    return (run / "final").is_dir()


def _evaluated(ev: Path, cfg: EvalConfig) -> dict[str, Any] | None:
    """The stored scores of ``ev`` when they were made with the same evaluation settings."""
    path = ev / "scores.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record["scores"] if record.get("config") == _eval_settings(cfg) else None


def result_row(config: str, scores: dict[str, Any], train_record: dict[str, Any] | None = None,
               reference: dict[str, float] | None = None) -> dict[str, Any]:
    """One card row: ``config``, ``mean_pass@1`` (when several benchmarks are scored: the unweighted
    mean, as the paper averages), then per benchmark ``<b>_pass@1``, the reference ``<b>_paper``
    when one is known and ``<b>_ci95`` ("lo–hi"), then training steps and traces."""
    scored = {b: s for b, s in scores.items() if "accuracy" in s}
    row: dict[str, Any] = {"config": config}
    if len(scored) > 1:
        row["mean_pass@1"] = round(sum(s["accuracy"] for s in scored.values()) / len(scored), 4)
        if reference and all(b in reference for b in scored):
            row["mean_paper"] = round(sum(reference[b] for b in scored) / len(scored), 4)
    for b, s in scored.items():
        lo, hi = s["ci95"]
        row[f"{b}_pass@1"] = round(s["accuracy"], 4)
        if reference is not None:
            row[f"{b}_paper"] = reference.get(b)
        row[f"{b}_ci95"] = f"{lo:.3f}–{hi:.3f}"
    if train_record:
        row["train_steps"] = train_record.get("total_steps")
        row["train_traces"] = (train_record.get("data") or {}).get("packed")
    return row


@dataclass
class ValidateResult:
    """What :func:`validate` did: the rows written, and which configs it trained / evaluated this call."""

    rows: list[dict[str, Any]]
    path: Path
    card: Path | None
    trained: list[str] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def _card_options(folder: Path) -> dict[str, Any]:
    """license / pretty_name / language of an existing card, so regenerating it keeps them."""
    from curate.card.card import CARD

    path = folder / CARD
    if not path.exists():
        return {}
    from huggingface_hub import DatasetCard

    data = DatasetCard.load(path).data.to_dict()
    keep = {"license": data.get("license"), "pretty_name": data.get("pretty_name"), "language": data.get("language")}
    return {k: v for k, v in keep.items() if v}


def validate(dataset: str | os.PathLike, model: str, out: str | os.PathLike | None = None, *,
             train_cfg: TrainConfig | None = None, eval_cfg: EvalConfig | None = None,
             configs: list[str] | None = None, card: bool = True, progress: bool = True,
             preset: str | None = None) -> ValidateResult:
    """Train ``model`` on each config of ``dataset``, evaluate it, write ``validation.json`` and the card.

    ``out`` (default: ``<dataset>-validation`` beside the dataset folder, so run folders never end
    up in the published dataset) gets one run folder per config. ``configs``: a subset to run
    (rows of other configs already in ``validation.json`` are kept).
    """
    from curate.card.card import DEFAULT_CONFIG, Folder

    root = Path(dataset)
    folder = Folder.open(root)
    names = list(folder.configs)
    if configs:
        unknown = [c for c in configs if c not in names]
        if unknown:
            raise ValueError(f"{root}: no config {', '.join(map(repr, unknown))} (has {', '.join(names)})")
        names = [c for c in names if c in configs]
    if Path(model).exists():  # a local folder: record it absolute, so a rerun from elsewhere matches
        model = str(Path(model).resolve())
    train_cfg = train_cfg or TrainConfig()
    eval_cfg = eval_cfg or EvalConfig()
    first = names[0] if names else DEFAULT_CONFIG
    template = dataset_template(root, None if first == DEFAULT_CONFIG and not folder.has_variants else first,
                                style=train_cfg.style, system_prompt=train_cfg.system_prompt)
    eval_cfg = _same_template(template, eval_cfg)
    reference = get_preset(preset) if preset else None
    out = Path(out) if out is not None else root.resolve().parent / f"{root.resolve().name}-validation"
    result = ValidateResult(rows=[], path=root / VALIDATION_FILE, card=None)

    skipped: dict[str, str] = {}
    last_record: dict[str, Any] = {}
    for name in names:
        run = out / name
        ev = run / "eval"
        data_config = None if name == DEFAULT_CONFIG and not folder.has_variants else name
        if not _trained(run, model, train_cfg):
            train(root, model, run, train_cfg, config=data_config, resume=True, progress=progress,
                  template=template)
            result.trained.append(name)
        scores = None if name in result.trained else _evaluated(ev, eval_cfg)
        if scores is None:
            scores = evaluate(str(run), ev, eval_cfg)
            result.evaluated.append(name)
        else:
            result.reused.append(name)
        skipped.update({b: s["skipped"] for b, s in scores.items() if "skipped" in s})
        record = json.loads((run / "train_config.json").read_text())
        check_templates(record, json.loads((ev / "scores.json").read_text()), run)
        refs = reference.reference.get(name, {}) if reference else None
        result.rows.append(result_row(name, scores, record, refs))
        last_record = record

    settings = {"model": model, "train": _jsonable(asdict(train_cfg)), "eval": _eval_settings(eval_cfg)}
    previous = _previous_rows(result.path, settings)
    done = {r["config"] for r in result.rows}
    # keep rows of configs not run this time, in the folder's config order
    order = {n: i for i, n in enumerate(folder.configs)}
    rows = [r for r in previous if r.get("config") not in done and r.get("config") in order] + result.rows
    rows.sort(key=lambda r: order[r["config"]])
    result.rows = rows
    payload = {
        "method": train_cfg.method,
        "benchmarks": list(eval_cfg.benchmarks),
        "metric": "pass@1 averaged over samples; ci95: Wilson interval over problems",
        "skipped": skipped,
        "template": template.to_json(),
        **{k: last_record.get(k) for k in ("batch_unit", "optimizer", "sharding", "global_batch")},
        "preset": preset,
        **({"reference_sources": {c: reference.reference_sources[c] for c in reference.reference}}
           if reference else {}),
        **settings,
        "runs": {r["config"]: str(out / r["config"]) for r in rows},
        "results": rows,
    }
    result.path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    if card:
        from curate.card import write_card

        result.card = write_card(root, **_card_options(root))
    return result


def _same_template(template: Template, cfg: EvalConfig) -> EvalConfig:
    """``cfg`` prompting with the training template; an evaluation template that differs is an error."""
    given = {k: (cfg.template or {}).get(k) for k in ("style", "system_prompt")}
    if cfg.template is not None and given != template.key():
        raise ValueError(f"the evaluation template {given} differs from the training one {template.key()}")
    if cfg.system_prompt is not None and cfg.system_prompt != template.system_prompt:
        raise ValueError("the evaluation system prompt differs from the training one; set it for both "
                         "(TrainConfig.system_prompt) or for neither")
    return replace(cfg, template=template.to_json(), system_prompt=None)


def check_templates(train_record: dict[str, Any], scores_record: dict[str, Any], where: Path) -> None:
    """Refuse a run whose evaluation prompt template is not its training template."""
    t, e = train_record.get("template") or {}, scores_record.get("template") or {}
    key = ("style", "system_prompt")
    if [t.get(k) for k in key] != [e.get(k) for k in key]:
        raise ValueError(f"{where}: trained with template {({k: t.get(k) for k in key})} but evaluated with "
                         f"{({k: e.get(k) for k in key})}")


def _previous_rows(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of an earlier validation.json, only when it was made with the same model and settings."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in settings.items()):
        return []
    rows = data.get("results", [])
    return [r for r in rows if isinstance(r, dict) and "config" in r]
