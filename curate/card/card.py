"""Dataset cards: ``README.md`` for a curate dataset folder, generated from manifest.json and the data.

The YAML header (``huggingface_hub.DatasetCardData``) declares one config per variant with its
``data_files`` and features, so the hub viewer and ``datasets.load_dataset(folder)`` read exactly
the kept rows (never ``rejects/``). The body tells a reviewer what the rows are, where they came
from, what every step removed and why, and how to rebuild the folder; every number in it is
computed from the folder, nothing is typed by hand.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from curate.card.features import features_yaml
from curate.card.markdown import Md, code, escape, fmt, params_text, table  # noqa: F401 (escape: re-exported)
from curate.card.section import PLOTS_DIR, CardContext, CardSection, step_classes
from curate.errors import InputError
from curate.provenance import install_line
from curate.schema import FIELDS

CARD = "README.md"
DEFAULT_CONFIG = "default"
_LONG_TEXT = ("problem", "thinking", "solution")
_DESCRIPTIONS = {f.name: f.description for f in FIELDS}
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                    (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


@dataclass
class Folder:
    """A finished dataset folder: its manifest and, per config, the Parquet files of each split."""

    root: Path
    manifest: dict[str, Any]
    configs: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # config -> split -> files
    _stats: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, folder: str | Path) -> Folder:
        root = Path(folder)
        path = root / "manifest.json"
        if not path.exists():
            raise InputError(f"{root}: no manifest.json: not a finished curate dataset folder")
        manifest = json.loads(path.read_text())
        if manifest.get("configs"):
            files = {name: c["files"] for name, c in manifest["configs"].items()}
        else:
            files = {DEFAULT_CONFIG: manifest["output"]["files"]}
        configs = {name: _by_split(fs) for name, fs in files.items()}
        return cls(root, manifest, configs)

    @property
    def has_variants(self) -> bool:
        return bool(self.manifest.get("configs"))

    @property
    def base_config(self) -> str:
        """The config whose rows describe the dataset: the variant with no extra steps, else the first."""
        if not self.has_variants:
            return DEFAULT_CONFIG
        variants = self.manifest["recipe"].get("variants", {})
        return next((n for n in self.configs if not variants.get(n)), next(iter(self.configs)))

    def files(self, config: str | None = None) -> list[Path]:
        splits = self.configs[config or self.base_config]
        return [self.root / f for fs in splits.values() for f in fs]

    def schema(self, config: str | None = None) -> pa.Schema:
        return pq.read_schema(self.files(config)[0]).remove_metadata()

    def scan(self, config: str | None = None) -> pl.LazyFrame:
        return pl.scan_parquet(self.files(config))

    def stats_frame(self, config: str | None = None) -> pl.DataFrame:
        """The rows without the long text: problem/thinking/solution become ``*_chars`` lengths and
        ``extra``/``test_cases`` are left out. Read batch by batch with pyarrow, so memory is one
        batch of text however large the dataset; computed once per config."""
        key = config or self.base_config
        if key not in self._stats:
            names = self.schema(config).names
            text = [c for c in _LONG_TEXT if c in names]
            small = [c for c in names if c not in (*_LONG_TEXT, "extra", "test_cases")]

            def reduce(batch: pa.RecordBatch | pa.Table) -> pl.DataFrame:
                # a null text counts 0; filled in polars (a pyarrow fill value from Python imports pandas)
                lengths = {f"{c}_chars": pc.utf8_length(batch.column(c)) for c in text}
                frame = pl.from_arrow(pa.table({**lengths, **{c: batch.column(c) for c in small}}))
                return frame.with_columns(pl.col(list(lengths)).fill_null(0))

            frames = []
            for path in self.files(config):
                reader = pq.ParquetFile(path, pre_buffer=False)  # no read-ahead of 20 MB row groups
                rows = _batch_rows(reader.metadata)
                for batch in reader.iter_batches(batch_size=rows, columns=text + small, use_threads=False):
                    frames.append(reduce(batch))
            if not frames:  # no rows: an empty frame, same columns (empty_table imports pandas: only here)
                frames.append(reduce(self.schema(config).empty_table().select(text + small)))
            self._stats[key] = pl.concat(frames)
        return self._stats[key]

    def steps(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(funnel entry, params) for each base step, read first (params {} for the read)."""
        params = [{}] + [next(iter(s.values())) for s in self.manifest["recipe"]["steps"]]
        return list(zip(self.manifest["funnel"], params))

    def variant_steps(self, config: str) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
        """(funnel entry, step name, params) for the steps that make one variant from the base."""
        entries = self.manifest.get("configs", {}).get(config, {}).get("funnel", [])
        recipe = self.manifest["recipe"].get("variants", {}).get(config, [])
        return [(f, *next(iter(s.items()))) for f, s in zip(entries, recipe)]


def _batch_rows(meta: pq.FileMetaData, target_bytes: int = 4 << 20) -> int:
    """Rows per batch when reading a shard for the card: ~``target_bytes`` of data (short rows:
    few batches; 1 MB traces: 64 rows at a time), 64 to 65,536 (16 MiB batches: +30 MiB peak
    on 5 KB traces)."""
    size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    return max(64, min(65_536, target_bytes * max(meta.num_rows, 1) // max(size, 1)))


def _by_split(files: list[str]) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {}
    for f in files:
        split = Path(f).name.split("-", 1)[0]
        splits.setdefault(split, []).append(f)
    return splits


def _data_files_pattern(files: list[str]) -> str | list[str]:
    """``data/[config/]train-*.parquet`` when it matches exactly these files, else the list."""
    folders = {str(Path(f).parent) for f in files}
    split = Path(files[0]).name.split("-", 1)[0]
    if len(folders) == 1:
        pattern = f"{folders.pop()}/{split}-*.parquet"
        if all(fnmatch(f, pattern) for f in files):
            return pattern
    return list(files)


def size_category(rows: int) -> str:
    for limit, name in _SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "n>100M"


# --- key figures ---------------------------------------------------------------------------------

def _lengths(frame: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for col in _LONG_TEXT:
        s = frame[f"{col}_chars"]
        out.append({"column": col, "min": s.min(), "median": s.median(), "mean": s.mean(),
                    "p90": s.quantile(0.9) if s.len() else None, "max": s.max()})
    return out


def step_sections(folder: Folder, *, plots: bool = False) -> list[CardSection]:
    """What each registered step contributes to the card (``Step.card_section``), in their order;
    with ``plots``, the sections write their PNGs under ``plots/``."""
    found = []
    for name, cls in step_classes().items():
        section = cls.card_section(CardContext(folder, name, plots=plots))
        if section is not None:
            found.append((section.order, name, section))
    return [s for _, _, s in sorted(found, key=lambda t: t[:2])]


class KeyFigures(dict):
    """The numbers a card shows, as plain data; ``sections`` are the steps' parts they came from."""

    sections: list[CardSection]


def key_figures(folder: str | Path | Folder, sections: list[CardSection] | None = None) -> KeyFigures:
    """The numbers a card shows, as plain data (also what `curate card --show` prints); each step
    section's figures under its key (``verification``, ``decontamination``, ``difficulty``...)."""
    f = folder if isinstance(folder, Folder) else Folder.open(folder)
    sections = step_sections(f) if sections is None else sections
    frame = f.stats_frame()
    n = frame.height
    by = ["source", "teacher", "domain"]
    mix = frame.group_by(by).len().sort(["len", *by], descending=[True, False, False, False], nulls_last=True)
    configs = {name: sum(pq.ParquetFile(p).metadata.num_rows for p in f.files(name)) for name in f.configs}
    figures = KeyFigures({
        "rows": n, "base_config": f.base_config, "configs": configs, "funnel": f.manifest["funnel"],
        "mix": mix.rows(named=True), "lengths": _lengths(frame),
        "truncated": int((~frame["thinking_closed"].fill_null(True)).sum()) if n else 0,
        "teacher_unknown": int(frame["teacher"].is_null().sum()) if n else 0,
        **{s.key: s.figures for s in sections if s.key},
    })
    figures.sections = sections
    return figures


def render_key_figures(figures: dict[str, Any]) -> None:
    """Print key figures as rich tables (``curate card --show``)."""
    from rich.console import Console
    from rich.markup import escape as markup_escape
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{figures['rows']:,}[/bold] rows in `{figures['base_config']}`; "
                  f"{figures['truncated']:,} truncated; teacher unknown for {figures['teacher_unknown']:,}")

    def table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
        t = Table(title=title)
        for h in headers:
            t.add_column(h)
        for r in rows:  # text as it is (rich markup escaped), numbers as the card prints them
            t.add_row(*(markup_escape(c) if isinstance(c, str) else fmt(c) for c in r))
        console.print(t)

    if len(figures["configs"]) > 1:
        table("Configs", ["config", "rows"], [[k, v] for k, v in figures["configs"].items()])
    table("Funnel", ["#", "step", "rows in", "kept", "rejected"],
          [[f["step"], f["name"], f["rows_in"], f["kept"], f["rejected"]] for f in figures["funnel"]])
    table("Sources", ["source", "teacher", "domain", "rows"],
          [[r["source"], r["teacher"] or "unknown", r["domain"], r["len"]] for r in figures["mix"]])
    for section in getattr(figures, "sections", []):
        for title, headers, rows in section.tables:
            table(title, headers, rows)
    table("Lengths (characters)", ["field", "min", "median", "mean", "p90", "max"],
          [[r["column"], r["min"], r["median"], r["mean"], r["p90"], r["max"]] for r in figures["lengths"]])


# --- plots -----------------------------------------------------------------------------------------

def write_plots(folder: Folder, figures: dict[str, Any]) -> dict[str, str]:
    """Write the card's own PNGs under ``plots/`` (the step sections write theirs); returns {kind:
    path relative to the folder}."""
    from curate.card import plots

    out: dict[str, str] = {}
    frame = folder.stats_frame().select("source", pl.col("thinking_chars").alias("n"))
    lengths = {s: g["n"].to_list() for (s,), g in frame.group_by("source", maintain_order=True)}
    rel = f"{PLOTS_DIR}/thinking_length.png"
    plots.length_histogram(lengths, folder.root / rel,
                           title=f"Thinking length per source ({folder.base_config})")
    out["lengths"] = rel
    rel = f"{PLOTS_DIR}/funnel.png"
    plots.funnel(figures["funnel"], folder.root / rel)
    out["funnel"] = rel
    validation = _validation(folder)
    metric = _validation_metric(validation)
    if metric:
        rel = f"{PLOTS_DIR}/variants.png"
        values = {str(r["config"]): float(r[metric]) for r in validation if r.get(metric) is not None}
        plots.variant_bars(values, folder.root / rel, title=f"{metric} per config", xlabel=metric)
        out["variants"] = rel
    return out


def _validation(folder: Folder) -> list[dict[str, Any]]:
    """Validation results (written by the trainer): manifest["validation"] or validation.json,
    a list of {config, <metric>: value, ...} rows."""
    data = folder.manifest.get("validation")
    path = folder.root / "validation.json"
    if data is None and path.exists():
        data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("results", [])
    return [r for r in (data or []) if isinstance(r, dict)]


def _validation_notes(folder: Folder) -> list[str]:
    """Where the ``*_paper`` reference columns come from, and the prompt template the runs used."""
    path = folder.root / "validation.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(data, dict):
        return []
    lines = []
    sources = data.get("reference_sources") or {}
    if sources:
        lines.append(f"Columns `*_paper`: reference numbers for preset `{data.get('preset')}`, only where a "
                     "source exists (empty otherwise):")
        lines += [f"- `{c}`: {src}" for c, src in sources.items()] + [""]
    template = data.get("template") or {}
    if template:
        lines.append(f"Prompt template (training and evaluation): `{template.get('style')}` markers; system "
                     f"prompt: {template.get('source') or 'given'}. Batch unit: {data.get('batch_unit')}; "
                     f"optimizer: {json.dumps(data.get('optimizer'))}.")
    return lines + [""] if template else lines


def _validation_metric(rows: list[dict[str, Any]]) -> str | None:
    for r in rows:
        for k, v in r.items():
            if k != "config" and isinstance(v, (int, float)) and not isinstance(v, bool) and "config" in r:
                return k
    return None


def _non_default(step: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that differ from the operator's defaults (what a recipe needs to say)."""
    import dataclasses

    from curate.ops import step_class

    cls = step_class(step)
    if cls is None or not dataclasses.is_dataclass(cls):
        return dict(params)
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return {k: v for k, v in params.items()
            if k not in defaults or json.dumps(defaults[k], default=str) != json.dumps(v, default=str)}


def _variant_params(step: str, params: dict[str, Any]) -> dict[str, Any]:
    """What tells variants apart: the non-default parameters plus ratio and mode, always."""
    changed = _non_default(step, params)
    return {k: v for k, v in params.items() if k in changed or k in ("ratio", "mode")}


def _param_cell(params: dict[str, Any]) -> Any:
    """Parameters for a table cell: a code span (values hold `_`, `*`, `$` as typed), or a dash."""
    return code(params_text(params)) if params else None


def _seeds(seeds: dict[str, Any]) -> list[str]:
    """The manifest's seeds (``"4:sample"`` or ``"variant/5:shuffle_steps"`` -> seed) as a list."""
    if not seeds:
        return ["No step takes a seed.", ""]
    lines = ["Seeds:", ""]
    for key, seed in seeds.items():
        where, _, step = key.rpartition(":")
        variant, _, number = where.rpartition("/")
        at = f"variant `{variant}`, step {number}" if variant else f"step {number}"
        lines.append(f"- {at} `{step}`: `{json.dumps(seed, default=str)}`")
    return [*lines, ""]


def _operator_doc(name: str) -> str:
    from curate.ops import step_class

    cls = step_class(name)
    doc = (cls.__doc__ or "").strip() if cls else ""
    return re.sub(r"\s+", " ", doc.split("\n\n")[0]) if doc else ""


def _column_origins(folder: Folder) -> dict[str, str]:
    """Each column's description: the trace schema's, else the first recipe step (base, then variants)
    that writes it; every step is built once here, not once per column."""
    from curate.errors import RecipeError
    from curate.step import build_step

    origins = dict(_DESCRIPTIONS)
    recipe = folder.manifest["recipe"]
    entries = [*recipe["steps"], *(s for vs in recipe.get("variants", {}).values() for s in vs)]
    for entry in entries:
        ((step, params),) = entry.items()
        with contextlib.suppress(RecipeError):  # a step this install cannot build (an extra missing)
            for name in build_step(step, params).writes:
                origins.setdefault(name, f"Annotation written by `{step}`.")
    return origins


def _column_origin(name: str, origins: dict[str, str]) -> str:
    return origins[name] if name in origins else f"Annotation (`{name.split('_', 1)[0]}` family)."


def _yaml_header(folder: Folder, figures: dict[str, Any], sections: list[CardSection], *, license: str,
                 pretty_name: str, language: list[str]):
    from huggingface_hub.repocard_data import DatasetCardData  # not the hub client (hf_api)

    configs, infos = [], []
    for i, (name, splits) in enumerate(folder.configs.items()):
        entry: dict[str, Any] = {"config_name": name,
                                 "data_files": [{"split": s, "path": _data_files_pattern(fs)} for s, fs in splits.items()]}
        if folder.has_variants and name == folder.base_config or (not folder.has_variants and i == 0):
            entry["default"] = True
        configs.append(entry)
        infos.append({"config_name": name, "features": features_yaml(folder.schema(name))})
    domains = sorted({str(r["domain"]) for r in figures["mix"] if r["domain"]})
    tags = ["curate", "reasoning", "long-cot", "chain-of-thought", "synthetic", *domains]
    tags += [t for s in sections for t in s.tags]
    if folder.has_variants:
        tags.append("ablation")
    sources = sorted({str(r["source"]) for r in figures["mix"] if r["source"]})
    total = sum(figures["configs"].values())
    return DatasetCardData(
        license=license, language=language, pretty_name=pretty_name,
        task_categories=["text-generation", "question-answering"],
        size_categories=[size_category(max(figures["configs"].values(), default=total))],
        source_datasets=sources or ["original"], tags=list(dict.fromkeys(tags)),
        configs=configs, dataset_info=infos if len(infos) > 1 else infos[0],
    )


def _body(folder: Folder, figures: dict[str, Any], sections: list[CardSection], plot_paths: dict[str, str],
          pretty_name: str, license: str) -> str:
    m = folder.manifest
    out: list[str] = [f"# {pretty_name}", ""]
    if m.get("description"):
        out += [str(m["description"]).strip(), ""]
    sources = sorted({str(r["source"]) for r in figures["mix"]})
    domains = sorted({str(r["domain"]) for r in figures["mix"]})
    steps = [f["name"] for f, _ in folder.steps()[1:]]
    read = m["funnel"][0] if m["funnel"] else {"rows_in": 0}
    summary = (f"Long chain-of-thought reasoning traces (problem, thinking, solution) built with "
               f"curate from {read['rows_in']:,} input rows "
               f"({len(m['input'].get('paths', []))} file(s)) by the steps {', '.join(f'`{s}`' for s in steps) or '(none)'}. ")
    if folder.has_variants:
        summary += (f"It holds {len(folder.configs)} configs built from the same base rows (`{folder.base_config}` "
                    f"is the unmodified one, {figures['rows']:,} rows); see *Variants*.")
    else:
        summary += f"It holds {figures['rows']:,} rows"
        summary += f" in domain(s) {', '.join(domains)} from {len(sources)} source(s)." if sources else "."
    out += ["## Summary", "", summary, "",
            f"Created {m.get('created')} with curate {m.get('curate_version')} (trace schema {m.get('schema_version')}, "
            f"{m.get('engine', 'local')} engine); "
            f"recipe fingerprint `{m.get('fingerprint')}`.", ""]
    out += ["```python", "from datasets import load_dataset", ""]
    if folder.has_variants:
        out += [f'ds = load_dataset("<repo-or-folder>", "{folder.base_config}", split="train")']
    else:
        out += ['ds = load_dataset("<repo-or-folder>", split="train")']
    out += ["```", ""]

    schema = folder.schema()
    out += ["## Schema", "", f"Columns of `{folder.base_config}` (other configs may add annotation columns; "
            "see *Variants*).", ""]
    # steps are built only when some column is not a trace-schema field
    origins = _DESCRIPTIONS if set(schema.names) <= set(_DESCRIPTIONS) else _column_origins(folder)
    out += [table(["column", "type", "description"],
                   [[code(fl.name), code(fl.type), Md(_column_origin(fl.name, origins))] for fl in schema]), ""]

    out += ["## Sources and teachers", "", f"Rows of `{folder.base_config}` by source, teacher and domain.", ""]
    out += [table(["source", "teacher", "domain", "rows"],
                   [[r["source"], r["teacher"] or "unknown", r["domain"], r["len"]] for r in figures["mix"]]), ""]

    out += ["## Pipeline as run", "", "Every step with its parameters and what it kept and rejected. Rejected "
            "rows are kept in `rejects/` with `reject_step` and `reject_reason`.", ""]
    rows = [[f["step"], code(f["name"]), _param_cell(_non_default(f["name"], p)), f["rows_in"], f["kept"],
             f["rejected"], f["seconds"]] for f, p in folder.steps()]
    out += [table(["#", "step", "parameters (non-default)", "rows in", "kept", "rejected", "seconds"], rows), ""]
    out += [f"![Funnel]({plot_paths['funnel']})", ""] if "funnel" in plot_paths else []
    reasons = _reject_reasons(folder)
    if reasons:
        out += ["Most frequent reject reasons:", "",
                table(["step", "reason", "rows"], reasons), ""]

    for section in sections:  # what each step says: verification, decontamination, difficulty...
        out += section.markdown

    out += ["## Length statistics", "", f"Characters per field in `{folder.base_config}`; "
            f"{figures['truncated']:,} rows have an unclosed (truncated) thinking block.", ""]
    out += [table(["field", "min", "median", "mean", "p90", "max"],
                   [[r["column"], r["min"], r["median"], r["mean"], r["p90"], r["max"]] for r in figures["lengths"]]), ""]
    out += [f"![Thinking length per source]({plot_paths['lengths']})", ""] if "lengths" in plot_paths else []

    if folder.has_variants:
        from curate.card.variants import variants_section

        out += variants_section(folder, figures["configs"])

    validation = _validation(folder)
    out += ["## Validation results", ""]
    if validation:
        keys = list(dict.fromkeys(k for r in validation for k in r))
        out += [table(keys, [[r.get(k) for k in keys] for r in validation]), ""]
        out += _validation_notes(folder)
        out += [f"![Variants]({plot_paths['variants']})", ""] if "variants" in plot_paths else []
    else:
        out += ["No validation results recorded yet (a training run writes them to `validation.json`).", ""]

    out += ["## How to reproduce", ""]
    command = m.get("command") or "curate run recipe.yaml  # recipe below"
    out += ["```bash", install_line(m.get("curate_source"), m.get("curate_version")), command, "```", "",
            "The recipe as run, parameters left at their defaults omitted (every parameter is in "
            "`manifest.json`; input paths as recorded there):", "", "```yaml", _recipe_yaml(folder).rstrip(), "```", ""]
    out += [f"Input fingerprint `{m['input'].get('fingerprint')}`.", ""]
    out += _seeds(m.get("seeds") or {})
    out += [table(["library", "version"], [[k, v] for k, v in sorted(m.get("libraries", {}).items())]), ""]

    out += ["## Limitations", ""] + [f"- {t}" for t in _limitations(folder, figures, sections, license)] + [""]
    return "\n".join(out)


def _reject_reasons(folder: Folder, per_step: int = 3) -> list[list[Any]]:
    rows = []
    for r in folder.manifest.get("rejects", []):
        path = folder.root / r["path"]
        if not path.exists():
            continue
        top = (pl.read_parquet(path, columns=["reject_reason"])
               .with_columns(pl.col("reject_reason").str.replace(r":.*", ""))
               .group_by("reject_reason").len().sort(["len", "reject_reason"], descending=[True, False]).head(per_step))
        where = f"{r['step']} ({r['config']})" if r.get("config") else r["step"]
        rows += [[where, reason, n] for reason, n in top.rows()]
    return rows


def _recipe_yaml(folder: Folder) -> str:
    m = folder.manifest
    def short(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{name: _non_default(name, p) for name, p in s.items()} for s in steps]

    doc: dict[str, Any] = {"input": {"path": m["input"].get("paths"), "format": m["input"].get("format")},
                           "steps": short(m["recipe"]["steps"])}
    if m["recipe"].get("variants"):
        doc["variants"] = {n: short(vs) for n, vs in m["recipe"]["variants"].items()}
    if m["recipe"].get("batch_size") is not None:
        doc["batch_size"] = m["recipe"]["batch_size"]
    return yaml.safe_dump(doc, sort_keys=False, width=100)


def _limitations(folder: Folder, figures: dict[str, Any], sections: list[CardSection], license: str) -> list[str]:
    out = [line for s in sections for line in s.limitations]
    if figures["teacher_unknown"]:
        out.append(f"The teacher model is unknown for {figures['teacher_unknown']:,} rows (the input did not say).")
    if figures["truncated"]:
        out.append(f"{figures['truncated']:,} rows have a truncated thinking block.")
    if folder.has_variants:
        out.append("Corrupted variants are wrong on purpose (ablations); never train a production model on them.")
    if figures["rows"] == 0:
        out.append(f"`{folder.base_config}` has no rows: every input row was rejected (see the funnel and "
                   "`rejects/`); `datasets.load_dataset` refuses an empty split.")
    elif figures["rows"] < 1000:
        out.append(f"Small: {figures['rows']:,} rows in `{folder.base_config}`; figures per source are noisy.")
    out.append(f"License `{license}` is what the card declares; the licenses of the source datasets and the "
               "teacher models' terms of use apply to the traces.")
    return out


# --- entry points ---------------------------------------------------------------------------------

def card_options(folder: Folder, *, license: str | None = None, pretty_name: str | None = None,
                 language: list[str] | None = None) -> dict[str, Any]:
    """License, title and languages of the card: what is passed, else the manifest's ``card``
    block (the recipe's ``card:``, or what `curate card --license ...` saved), else the recipe's
    ``name``, else the folder's name; license ``unknown`` and language ``en`` when nothing says."""
    saved = folder.manifest.get("card") or {}
    name = folder.manifest.get("name") or folder.root.resolve().name
    if not re.search(r"\s", name):  # a slug (dedup_decontam): words, capitalised
        name = name.replace("_", " ").replace("-", " ").strip().title()
    title = pretty_name or saved.get("pretty_name") or name
    return {"license": license or saved.get("license") or "unknown", "pretty_name": title,
            "language": language or saved.get("language") or ["en"]}


def save_card_options(folder: str | Path, **options: Any) -> None:
    """Record card settings (``license``, ``pretty_name``, ``language``) in the manifest, so a
    regenerated card, and the next run of the recipe, keep them."""
    from curate.io.write import write_json_atomic

    path = Path(folder) / "manifest.json"
    manifest = json.loads(path.read_text())
    given = {k: v for k, v in options.items() if v is not None}
    if given:
        manifest["card"] = {**(manifest.get("card") or {}), **given}
        write_json_atomic(manifest, path)


def card_text(folder: str | Path, *, license: str | None = None, pretty_name: str | None = None,
              language: list[str] | None = None, plots: bool = True) -> str:
    """The card of a dataset folder as Markdown with its YAML header (plots are written to ``plots/``
    when ``plots``); unset options come from the manifest (``card_options``)."""
    f = Folder.open(folder)
    sections = step_sections(f, plots=plots)
    figures = key_figures(f, sections)
    opts = card_options(f, license=license, pretty_name=pretty_name, language=language)
    plot_paths = write_plots(f, figures) if plots else {}
    data = _yaml_header(f, figures, sections, **opts)
    body = _body(f, figures, sections, plot_paths, opts["pretty_name"], opts["license"])
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def build_card(folder: str | Path, **kwargs: Any):
    """The card as a ``huggingface_hub.DatasetCard`` (``card_text``'s options); this imports the hub
    client, which writing the card does not need."""
    from huggingface_hub import DatasetCard

    return DatasetCard(card_text(folder, **kwargs))


def write_card(folder: str | Path, **kwargs: Any) -> Path:
    """Write ``README.md`` (and ``plots/*.png``) into a dataset folder, atomically; returns the card's
    path. Regenerating gives the same bytes for the same folder."""
    from curate.io.write import replacing

    text = card_text(folder, **kwargs)
    path = Path(folder) / CARD
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return path
