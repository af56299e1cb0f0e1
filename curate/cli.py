"""The `curate` command line: run recipes, list operators, inspect and export datasets."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from curate import __version__
from curate.errors import CurateError

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run stops the way Ctrl-C stops it."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


_STOPPED = "a `curate run` resumes where it stopped when you run the same command again"


class _Group(click.Group):
    """Print curate's own errors as one line (exit 2) instead of a traceback; say so when stopped
    by Ctrl-C (exit 130) or SIGTERM (exit 143)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: object) -> click.Context:
        argv = list(args)  # the command line as given (sys.argv is another program's under a test runner)
        ctx = super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[arg-type]
        ctx.meta["curate.argv"] = argv
        return ctx

    def invoke(self, ctx: click.Context):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except CurateError as e:
            for line in str(e).splitlines() or [""]:  # e.g. one line per step whose extra is missing
                click.secho(f"error: {line}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho(f"interrupted (Ctrl-C); {_STOPPED}", fg="yellow", err=True)
            sys.exit(130)
        except _Terminated:
            click.secho(f"stopped by SIGTERM; {_STOPPED}", fg="yellow", err=True)
            sys.exit(143)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="curate")  # the distribution is curate-cot
def main() -> None:
    """curate: turn raw long chain-of-thought traces into clean, verified training sets.

    \b
    Typical session:
      curate formats                          # the input layouts curate reads
      curate ops                              # every operator and its parameters
      curate run pipelines/quickstart.yaml    # run a recipe, write a dataset folder
      curate inspect out/quickstart           # counts, lengths, funnel
      curate export out/quickstart sft.jsonl  # chat `messages` for SFT
    """


def _start_early(recipe: Path) -> None:
    """Start the slow set-up of the recipe's steps that have one (``curate.ops.EARLY_START``) now,
    so it runs beside this process's imports. A recipe that does not read here is left to the run,
    which says what is wrong with it."""
    from importlib import import_module

    import yaml

    from curate.ops import EARLY_START
    from curate.recipedoc import step_entries, step_lists

    try:
        doc = yaml.safe_load(recipe.read_text(encoding="utf-8"))
        lists = step_lists(doc, str(recipe)) if isinstance(doc, dict) else {}
        entries = [e for steps in lists.values() for e in step_entries(steps, str(recipe))]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, CurateError):
        return
    for name, params, _ in entries:
        if name in EARLY_START:
            module, function = EARLY_START[name].split(":")
            getattr(import_module(module), function)(params)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder to write; overrides the recipe's output.path.")
@click.option("--overwrite", is_flag=True,
              help="Replace the dataset in the folder, computing every step again (a changed recipe on the "
                   "same input needs no flag: it reruns from the changed step).")
@click.option("--no-resume", is_flag=True,
              help="Compute every step again: no resuming a killed run, no finished stages reused.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when on a terminal).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: a Ray cluster through Ray Data (needs curate-cot[ray]); the same "
                   "dataset comes out.")
@click.option("--address", metavar="ADDR",
              help="--engine ray: the cluster to join (auto, ray://head:10001; default: $RAY_ADDRESS, "
                   "else a local Ray on this machine). OUT must be on storage every node sees.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="--engine local: apply N parts at once on threads for the steps that allow it (decontaminate, "
                   "the dedups' apply) and sign N batches at once in minhash_dedup (default: one per CPU, at "
                   "most 4). The output does not depend on N.")
@click.option("--keep-work", is_flag=True,
              help="Leave the per-step Parquet parts in OUT/.curate (else they move to OUT/.curate-cache).")
@click.option("--no-card", is_flag=True, help="Skip the dataset card (README.md + plots); `curate card` writes it later.")
@click.option("--no-cache", is_flag=True,
              help="Keep no finished stages (OUT/.curate-cache): a changed recipe then recomputes every step.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when the run wrote no rows or a step dropped every row it saw.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, no step lines, no table: warnings and the last line.")
@click.option("-v", "--verbose", is_flag=True, help="Also say which stages are reused or resumed, and why.")
def run(recipe: Path, out: Path | None, overwrite: bool, no_resume: bool, progress: bool | None,
        engine: str, address: str | None, threads: int | None, keep_work: bool, no_card: bool, no_cache: bool,
        strict: bool, quiet: bool, verbose: bool) -> None:
    """Run a YAML RECIPE and write a dataset folder.

    \b
    The folder gets:
      data/train-00000-of-0000N.parquet   kept rows (trace schema + annotation columns)
      rejects/NN-<step>.parquet           every dropped row with reject_step and reject_reason
      manifest.json                       recipe, library versions, seeds, input fingerprint, funnel
      README.md, plots/                   the dataset card (YAML header with configs, the story)
      run.log                             what each step did, with times (appended per run)
    A recipe with `variants:` runs its shared steps once and writes each variant as a config,
    data/<variant>/train-*.parquet (and rejects/<variant>/...).
    Input paths in the recipe are relative to the recipe file; output paths to the current
    directory. A killed run resumes where it stopped when you run the same command again; a
    finished run is not redone. Its stages stay in OUT/.curate-cache: edit step k of the recipe
    and the next run computes steps k..n only (--overwrite recomputes everything).

    \b
    On a cluster:
      ray start --head                      # or an existing cluster
      curate run RECIPE --engine ray --address auto --out /shared/fs/dataset
    There a vllm model's generations (an openai one's with `ray_data_llm: true` in its
    settings) are made first, by Ray Data's LLM processor in one batch job; install
    curate-cot[ray-vllm] on the GPU nodes.
    """
    import warnings

    from curate.cpus import single_threaded_blas

    single_threaded_blas()  # before numpy loads
    if engine == "local":
        _start_early(recipe)  # before the imports below: verify's worker pool imports beside them
    from curate.pipeline import EmptyResultWarning
    from curate.recipe import run_recipe

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose contradict each other")
    if threads is not None:
        if engine != "local":
            raise click.UsageError("--threads is for --engine local (a Ray cluster sizes its own workers)")
        from curate.engines import LocalEngine

        engine = LocalEngine(threads=threads)  # type: ignore[assignment]
    command = "curate " + " ".join(shlex.quote(a) for a in click.get_current_context().meta["curate.argv"])
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    with _console_log(level), warnings.catch_warnings(), _collector_for_a_run():
        warnings.simplefilter("ignore", EmptyResultWarning)  # said below, after the table
        result = run_recipe(recipe, out, overwrite=overwrite, resume=not no_resume,
                            progress=False if quiet and progress is None else progress, engine=engine,
                            address=address, keep_work=keep_work, command=command, card=not no_card,
                            cache=not no_cache)
    if quiet:
        click.echo(f"wrote {result.rows:,} rows to {result.out}" + (" (finished before)" if result.reused else ""))
    else:
        _echo_summary(result)
    problems = result.warnings
    for line in problems:
        click.secho(f"warning: {line}", fg="yellow", err=True)
    if problems and strict:
        click.secho("--strict: exiting with status 1", fg="red", err=True)
        sys.exit(1)


@contextlib.contextmanager
def _collector_for_a_run() -> Iterator[None]:
    """Tune the cyclic garbage collector for one run, restored after it (a test runner's process
    goes on). What is loaded before the run (polars, pyarrow, numpy, the steps' modules: hundreds
    of thousands of objects that live as long as the process) is frozen out of it: a full
    collection walked them 5-6 times a run, and once more at interpreter exit, so they are frozen
    again then. Collections are rarer (10,000 new objects, not 700): a read makes a few dicts a
    row, nearly all freed by reference counting. Measured on 100k problems: 0.2 s of collections
    a run down to 0.03 s, and ~0.06 s less at exit."""
    import atexit
    import gc

    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
        atexit.register(gc.freeze)


class _BarSafeHandler(logging.Handler):
    """Log lines on stderr that do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        tqdm.write(prefix + record.getMessage(), file=sys.stderr)


@contextlib.contextmanager
def _console_log(level: int) -> Iterator[None]:
    """Show the run's log on stderr at ``level`` while the command runs (run.log gets it all)."""
    logger = logging.getLogger("curate")
    handler = _BarSafeHandler(level)
    logger.addHandler(handler)
    before = logger.level
    logger.setLevel(min(level, before) if before else level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def _echo_summary(result) -> None:
    """The funnel as a table (as `curate inspect` prints it), accuracy, then where things are."""
    from rich.console import Console
    from rich.table import Table

    from curate.pipeline import top_reject_reason

    m, out = result.manifest, result.out
    console = Console()
    chains = [(None, m["funnel"])] + [(n, c["funnel"]) for n, c in m.get("configs", {}).items()]
    table = Table(title="Funnel")
    for h in ("#", "step", "rows in", "kept", "rejected", "seconds"):
        table.add_column(h, justify="left" if h == "step" else "right")
    reasons = []
    for config, funnel in chains:
        for f in funnel:
            name = f"{config}: {f['name']}" if config else f["name"]
            table.add_row(str(f["step"]), name, f"{f['rows_in']:,}", f"{f['kept']:,}", f"{f['rejected']:,}",
                          f"{f['seconds']:,.1f}")
            top = top_reject_reason(out, m, f, config) if f["rejected"] else None
            if top:
                reasons.append(f"  {f['step']} {name}: {top[0]} ({top[1]:,} of {f['rejected']:,})")
    console.print(table)
    if reasons:
        click.echo("top reject reason per step (numbers as #; every row is in rejects/):\n" + "\n".join(reasons))
    _echo_accuracy(m["funnel"])
    for name, config in m.get("configs", {}).items():
        click.echo(f"  config {name}: {config['rows']:,} rows")
    configs = f" in {len(result.configs)} configs" if result.configs else ""
    if result.reused:
        click.echo(f"{out} already holds this run (finished {m.get('created')}); nothing was run. "
                   "To compute every step again: --overwrite")
    else:
        computed = m.get("computed")
        total = 1 + len(m["funnel"][1:]) + sum(len(c["funnel"]) for c in m.get("configs", {}).values())
        if computed is not None and len(computed) < total:
            click.echo(f"computed {len(computed)} of {total} stages ({', '.join(computed) or 'none'}); "
                       "the others came from the finished run")
    click.echo(f"wrote {result.rows:,} rows{configs} to {out} in {m.get('wall_seconds', 0):,.1f} s")
    rejects = m.get("rejects", [])
    where = [("card", out / "README.md"), ("manifest", out / "manifest.json"), ("log", out / "run.log")]
    for what, path in where:
        if path.exists():
            click.echo(f"  {what + ':':10}{path}")
    if rejects:
        click.echo(f"  {'rejects:':10}{out / 'rejects'} ({sum(r['rows'] for r in rejects):,} rows "
                   f"in {len(rejects)} file(s))")
    for line in result.manifest.get("coverage_warnings", []):
        click.secho(f"WARNING: low corruption coverage: {line}", fg="red", bold=True, err=True)


@main.command()
@click.argument("name", required=False)
def ops(name: str | None) -> None:
    """List the operators (recipe step names) with their parameters, or show one NAME in full."""
    from curate.catalog import operator_doc
    from curate.ops import registry
    from curate.step import param_specs

    steps = registry()
    if name:
        if name not in steps:
            raise click.UsageError(f"unknown operator {name!r}; known: {', '.join(sorted(steps))}")
        click.echo(operator_doc(steps[name]))
        return
    for key in sorted(steps):
        cls = steps[key]
        first = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.secho(key, bold=True, nl=False)
        click.echo(f"  {first}")
        for s in param_specs(cls):
            default = "required" if s["required"] else f"default {s['default']!r}"
            click.echo(f"    {s['name']}: {s['type']} ({default}) {s['help']}")


def _echo_accuracy(funnel: list[dict]) -> None:
    """Per-source verdicts a verify step reported: accuracy = correct / (correct + incorrect)."""
    from curate.ops.verify.report import source_accuracy

    for entry in funnel:
        by_source = entry.get("stats", {}).get("by_source", {})
        for r in source_accuracy(by_source).iter_rows(named=True) if by_source else ():
            acc = f"{r['accuracy']:.1%}" if r["correct"] + r["incorrect"] else "n/a"
            click.echo(f"  {entry['name']} [{r['source']}]: accuracy {acc} ({r['correct']} correct, "
                       f"{r['incorrect']} incorrect, {r['unverifiable']} unverifiable)")


@main.command()
def formats() -> None:
    """List the input formats `read` and recipes understand (auto-detected by default)."""
    from curate.io.formats import FORMAT_ALIASES, FORMATS

    for f in FORMATS.values():
        click.secho(f"{f.name:10}", bold=True, nl=False)
        click.echo(f" {f.description}")
    click.echo("aliases: " + ", ".join(f"{a}={t}" for a, t in sorted(FORMAT_ALIASES.items())))


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(folder: Path, as_json: bool) -> None:
    """Summarise a dataset FOLDER: rows per config, funnel, sources, verification,
    decontamination, lengths (the figures its card shows), and the columns."""
    import pyarrow.parquet as pq

    from curate.card.card import Folder, key_figures, render_key_figures

    f = Folder.open(folder)
    figures = key_figures(f)
    first = next(iter(f.files(f.base_config)), None)
    figures["columns"] = [(c.name, str(c.type)) for c in pq.read_schema(first)] if first else []
    if as_json:
        click.echo(json.dumps(figures, indent=2, default=str))
        return
    render_key_figures(figures)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Columns")
    table.add_column("name")
    table.add_column("type")
    for name, typ in figures["columns"]:
        table.add_row(name, typ)
    Console().print(table)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", type=click.Choice(["messages", "sky-t1"]), default="messages", show_default=True,
              help="messages: {id, messages:[system?, user, assistant]}; sky-t1: {system, conversations}.")
@click.option("--style", type=click.Choice(["think", "sky-t1", "none"]), default=None,
              help="How the thinking is marked in the assistant turn (default: think for messages).")
@click.option("--system-prompt", default=None, help="System prompt to include.")
@click.option("--config", default=None, help="Which config (variant) of the dataset to export.")
def export(folder: Path, out: Path, to: str, style: str | None, system_prompt: str | None,
           config: str | None) -> None:
    """Export a dataset FOLDER to OUT (.jsonl or .parquet) as SFT chat rows."""
    from curate.io.export import export as do_export

    n = do_export(folder, out, to=to, style=style, system_prompt=system_prompt, config=config)  # type: ignore[arg-type]
    click.echo(f"wrote {n} rows to {out}")


@main.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=REPO_ROOT / "CATALOG.md",
              show_default=True, help="Where to write the catalog.")
@click.option("--check", is_flag=True, help="Exit 1 if the file differs from what the code generates.")
def catalog(output: Path, check: bool) -> None:
    """Regenerate CATALOG.md from the operators' metadata, the formats and pipelines/*.yaml."""
    from curate.catalog import render_catalog

    text = render_catalog(REPO_ROOT / "pipelines")
    if check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            raise click.ClickException(f"{output} is out of date; run `curate catalog`")
        click.echo(f"{output} is up to date")
        return
    output.write_text(text)
    click.echo(f"wrote {output}")


@main.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              default=REPO_ROOT / "schemas" / "trace-v1.json", show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 if the file differs from the schema in the code.")
def schema(output: Path, check: bool) -> None:
    """Write the trace schema v1 as JSON Schema (derived from curate/schema.py)."""
    from curate.schema import json_schema_text

    text = json_schema_text()
    if check:
        if not output.exists() or output.read_text() != text:
            raise click.ClickException(f"{output} is out of date; run `curate schema`")
        click.echo(f"{output} is up to date")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--license", "license_", default=None,
              help="License id for the card's YAML header (e.g. apache-2.0, cc-by-4.0); saved in the "
                   "manifest [default: the recipe's card.license, else the one saved, else unknown].")
@click.option("--pretty-name", default=None,
              help="Title of the card; saved in the manifest [default: the recipe's card.pretty_name or "
                   "name, else the folder name].")
@click.option("--no-plots", is_flag=True, help="Do not write plots/*.png.")
@click.option("--show", is_flag=True, help="Print the card's key figures (rich tables) instead of writing it.")
@click.option("--json", "as_json", is_flag=True, help="With --show: print the key figures as JSON.")
def card(folder: Path, license_: str, pretty_name: str | None, no_plots: bool, show: bool, as_json: bool) -> None:
    """(Re)generate the dataset card FOLDER/README.md and its plots from manifest.json and the data.

    \b
    The YAML header declares one config per variant (data_files, features), so
    `datasets.load_dataset(FOLDER)` and the hub viewer read the kept rows only.
    """
    if show:
        from curate.card.card import key_figures, render_key_figures

        figures = key_figures(folder)
        if as_json:
            click.echo(json.dumps(figures, indent=2, default=str))
        else:
            render_key_figures(figures)
        return
    from curate.card import write_card
    from curate.card.card import Folder, save_card_options

    Folder.open(folder)  # a clear error for a folder that is not a finished dataset
    save_card_options(folder, license=license_, pretty_name=pretty_name)
    path = write_card(folder, plots=not no_plots)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="Hub dataset repo, <user-or-org>/<name>; created if missing.")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--dry-run", is_flag=True, help="List the files and the commit message; send nothing.")
@click.option("--no-rejects", is_flag=True, help="Leave rejects/ out of the upload.")
@click.option("--endpoint", envvar="HF_ENDPOINT", default=None, help="Hub URL (default: huggingface.co; env HF_ENDPOINT).")
def publish(folder: Path, repo_id: str, private: bool, dry_run: bool, no_rejects: bool, endpoint: str | None) -> None:
    """Upload a dataset FOLDER (card, plots, manifest, data, rejects) to the Hugging Face hub.

    The token comes from HF_TOKEN or `hf auth login`. The card is generated first if the folder has
    none (`curate card` regenerates it). Without network it fails with one line (exit 2).
    """
    from curate.card.publish import plan
    from curate.card.publish import publish as do_publish

    p = plan(folder, repo_id, private=private, include_rejects=not no_rejects)
    if p.card_written:
        click.echo(f"wrote {folder / 'README.md'}")
    if dry_run:
        click.echo("dry run, nothing sent; would upload:\n" + p.describe())
        return
    url = do_publish(p, endpoint=endpoint)
    click.echo(f"uploaded {len(p.files)} files to datasets/{repo_id}: {url}")


def _stack(*options):
    """Apply click options in the order listed (shared by train and validate)."""
    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f
    return wrap


_training_options = _stack(
    click.option("--lr", type=float, default=None, help="Learning rate [default: full 1e-5, lora 1e-4]."),
    click.option("--epochs", type=float, default=3.0, show_default=True),
    click.option("--warmup-ratio", type=float, default=0.1, show_default=True),
    click.option("--cutoff", type=int, default=16384, show_default=True, help="Most tokens kept of one trace."),
    click.option("--packing/--no-packing", default=False, show_default=True,
                 help="Pack traces end to end into --pack-len sequences; the batch then counts packs "
                      "(fewer steps). Default: one trace per sequence, as the paper."),
    click.option("--pack-len", type=int, default=None, help="Tokens per packed sequence [default: cutoff]."),
    click.option("--global-batch", type=int, default=96, show_default=True,
                 help="Sequences (traces; packs with --packing) per optimizer step."),
    click.option("--micro-batch", type=int, default=1, show_default=True, help="Sequences per forward pass."),
    click.option("--adam-beta2", type=float, default=0.999, show_default=True,
                 help="AdamW beta2 (0.999: transformers' default, the paper's stack)."),
    click.option("--sharding", type=click.Choice(["auto", "ddp", "fsdp"]), default="auto", show_default=True,
                 help="Under torchrun: DDP replicas or FSDP2 shards; auto: FSDP when the model does not fit."),
    click.option("--lora-rank", type=int, default=64, show_default=True),
    click.option("--lora-alpha", type=int, default=128, show_default=True),
)
_precision_options = _stack(
    click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=True, show_default=True),
    click.option("--bf16/--fp32", default=True, show_default=True, help="bf16 autocast on GPU (CPU is fp32)."),
)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--config", default=None, help="Which config (variant) of the dataset to train on.")
@click.option("--model", "model_path", required=True, help="Student model: a local folder or a hub id.")
@click.option("--method", type=click.Choice(["lora", "full"]), default="lora", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: checkpoints/, final/ (adapter or model), train_config.json, log.jsonl.")
@_training_options
@click.option("--lora-targets", default="all-linear", show_default=True,
              help="Comma-separated module names, or all-linear.")
@_precision_options
@click.option("--save-every", type=int, default=0, show_default=True,
              help="Optimizer steps between checkpoints (0: each epoch end).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--system-prompt", default=None,
              help="System prompt for every training conversation [default: the dataset's].")
@click.option("--style", type=click.Choice(["sky-t1", "think", "none"]), default=None,
              help="Thinking markers [default: the dataset's].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming from out/checkpoints.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(dataset: Path, config: str | None, model_path: str, method: str, out: Path, lr: float | None,
          epochs: float, warmup_ratio: float, cutoff: int, packing: bool, pack_len: int | None, global_batch: int,
          micro_batch: int, adam_beta2: float, sharding: str, lora_rank: int, lora_alpha: int, lora_targets: str,
          gradient_checkpointing: bool, bf16: bool, save_every: int, max_steps: int | None,
          system_prompt: str | None, style: str | None, seed: int, no_resume: bool, progress: bool) -> None:
    """Fine-tune MODEL on DATASET's traces (SFT, loss on the assistant turn, packed sequences).

    \b
    Defaults follow the paper's setup: full lr 1e-5, 3 epochs, cosine, warmup 0.1, cutoff 16384,
    global batch 96 sequences (no packing), AdamW betas (0.9, 0.999); LoRA on all linear layers,
    rank 64, alpha 128, dropout 0, lr 1e-4. Prompt template: the dataset's markers and system prompt.
    Multi-GPU on one node: torchrun --nproc-per-node N -m curate.cli train ...
    Needs torch, transformers and peft (pip install 'curate-cot[train]').
    """
    from curate.train.sft import TrainConfig
    from curate.train.sft import train as run_train

    targets: str | list[str] = lora_targets if lora_targets == "all-linear" else lora_targets.split(",")
    try:
        cfg = TrainConfig(method=method, lr=lr, epochs=epochs, warmup_ratio=warmup_ratio, cutoff=cutoff,
                          packing=packing, pack_len=pack_len, global_batch=global_batch, micro_batch=micro_batch,
                          adam_beta2=adam_beta2, sharding=sharding, lora_rank=lora_rank, lora_alpha=lora_alpha,
                          lora_targets=targets, gradient_checkpointing=gradient_checkpointing, bf16=bf16,
                          save_every=save_every, max_steps=max_steps, system_prompt=system_prompt, style=style,
                          seed=seed)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    res = run_train(dataset, model_path, out, cfg, config=config, resume=not no_resume, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    last = f", last loss {res.losses[-1]:.4f}" if res.losses else ""
    click.echo(f"plan: {res.plan}; sharding: {res.sharding}; template: {res.template['style']} markers, "
               f"system prompt: {res.template['source'] or 'given'}")
    click.echo(f"trained {res.steps} steps on {res.data['packed']} traces ({res.data['packs']} "
               f"{'packs' if packing else 'sequences'}){last}; wrote {out / 'final'}")


def _echo_scores(scores: dict) -> None:
    from curate.train.eval import mean_accuracy

    for name, s in scores.items():
        if "skipped" in s:
            click.echo(f"{name:14} skipped: {s['skipped']}")
            continue
        lo, hi = s["ci95"]
        extra = f"  of {s['of']}" if "of" in s else ""
        if "agreement" in s:
            extra += f"  harness {100 * s['harness_accuracy']:.1f}%  agreement {100 * s['agreement']:.1f}%"
        click.echo(f"{name:14} {100 * s['accuracy']:5.1f}%  [{100 * lo:.1f}, {100 * hi:.1f}]  "
                   f"n={s['problems']}x{s['samples']}{extra}")
    mean = mean_accuracy(scores)
    if mean is not None and sum("accuracy" in s for s in scores.values()) > 1:
        click.echo(f"{'mean':14} {100 * mean:5.1f}%  (unweighted over benchmarks)")


@main.command("eval")
@click.argument("targets", nargs=-1, required=True)
@click.option("--generations", is_flag=True,
              help="TARGETS are files of existing generations to score (no model is run).")
@click.option("--preset", type=click.Choice(["table2"]), default=None,
              help="The paper's evaluation protocol (benchmarks, greedy, 32768 tokens).")
@click.option("--benchmarks", default=None,
              help="Comma-separated bundled benchmarks [default: math500,aime24,aime25,amc23,gpqa; with "
                   "--generations: every bundled benchmark with text].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for scores.json and generations.parquet.")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default="transformers", show_default=True)
@click.option("--max-tokens", type=int, default=32768, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("-n", "--samples", type=int, default=1, show_default=True, help="Samples per problem (pass@1 averaged).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--system-prompt", default=None,
              help="System prompt [default: the one the run was trained with, else Sky-T1's].")
@click.option("--limit", type=int, default=None, help="Only the first N problems of each benchmark.")
@click.pass_context
def eval_(ctx: click.Context, targets: tuple[str, ...], generations: bool, preset: str | None, benchmarks: str | None, out: Path,
          backend: str, max_tokens: int, temperature: float, top_p: float, samples: int, seed: int,
          system_prompt: str | None, limit: int | None) -> None:
    """Score a model (a model folder, a LoRA adapter, or a `curate train` run folder) on benchmarks,
    or, with --generations, score existing generations (FILE...) from another harness.

    \b
    Generates with the backend, extracts and math-verifies each answer, and writes
    OUT/scores.json (accuracy with a 95% Wilson interval per benchmark) and
    OUT/generations.parquet (every generation, for audit). The prompt is the run's training
    template (dataset markers and system prompt), else Sky-T1's. Seed setups:
      greedy:  --temperature 0 --max-tokens 32768            (default)
      sampled: --temperature 0.6 --top-p 0.95 -n 8
    --generations FILE...: Qwen2.5-Math / SkyThought eval outputs, lighteval details, vLLM dumps
    or any JSONL with a problem and a response field; each record is matched to a bundled
    benchmark item by problem text or id, graded with the same grader, and compared with the
    file's own verdicts (`score`) when it has them.
    """
    from curate.train.eval import EvalConfig, evaluate

    names = tuple(b.strip() for b in benchmarks.split(",") if b.strip()) if benchmarks else None
    if generations:
        from curate.train.generations import score_generations

        try:
            scores = score_generations(list(targets), out, list(names) if names else None)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        _echo_scores(scores)
        click.echo(f"wrote {out / 'scores.json'} and {out / 'generations.parquet'}")
        return
    if len(targets) != 1:
        raise click.UsageError("give one MODEL (or --generations FILE...)")
    settings = dict(benchmarks=names or ("math500", "aime24", "aime25", "amc23", "gpqa"), backend=backend,
                    max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=samples, seed=seed,
                    system_prompt=system_prompt, limit=limit)
    if preset:
        from curate.train.presets import get_preset

        given = {k for k in ctx.params if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}
        renamed = {"n": "samples"}
        settings.update({k: v for k, v in get_preset(preset).eval.items() if renamed.get(k, k) not in given})
    cfg = EvalConfig(**settings)
    try:
        scores = evaluate(targets[0], out, cfg)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _echo_scores(scores)
    click.echo(f"wrote {out / 'scores.json'} and {out / 'generations.parquet'}")


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_path", required=True, help="Student model: a local folder or a hub id.")
@click.option("--method", type=click.Choice(["lora", "full"]), default="lora", show_default=True)
@click.option("--benchmarks", default="math500,aime24,aime25,amc23,gpqa", show_default=True,
              help="Comma-separated bundled benchmarks (curate.ops.decontam.benchmarks).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folders, one per config: OUT/<config>/ (training) and OUT/<config>/eval/ "
                   "[default: DATASET-validation beside the dataset].")
@click.option("--configs", default=None, help="Comma-separated configs to run [default: all].")
@_training_options
@_precision_options
@click.option("--max-steps", type=int, default=None, help="Stop training after this many optimizer steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default="transformers", show_default=True)
@click.option("--max-tokens", type=int, default=32768, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("-n", "--samples", type=int, default=1, show_default=True, help="Samples per problem (pass@1 averaged).")
@click.option("--limit", type=int, default=None, help="Only the first N problems of each benchmark.")
@click.option("--system-prompt", default=None, help="System prompt for training and evaluation [default: the dataset's].")
@click.option("--style", type=click.Choice(["sky-t1", "think", "none"]), default=None,
              help="Thinking markers for training and evaluation [default: the dataset's].")
@click.option("--preset", type=click.Choice(["table2"]), default=None,
              help="table2: the paper's Table 2 protocol (full FT, lr 1e-5, 3 epochs, cosine, warmup 0.1, cutoff "
                   "16384, 96 sequences a step; greedy, 32768 tokens, MATH500/AIME24/AMC23/OlympiadBench) with "
                   "the reference numbers beside the run's; options given explicitly still win.")
@click.option("--no-card", is_flag=True, help="Do not regenerate the dataset card.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def validate(ctx: click.Context, dataset: Path, model_path: str, out: Path | None, configs: str | None,
             preset: str | None, no_card: bool, progress: bool, **opts) -> None:
    """Train MODEL on every config (variant) of DATASET, score each, record it in the card.

    \b
    Each config is fine-tuned (as `curate train`) into OUT/<config>/ and scored (as `curate eval`)
    into OUT/<config>/eval/ with the same prompt template (the dataset's markers and system
    prompt); pass@1 and its 95% Wilson interval per benchmark go to DATASET/validation.json (with
    the template, batch unit and optimizer), and DATASET/README.md is regenerated with the
    validation table and plots/variants.png. Rerunning skips configs already trained and scored
    with the same settings.
    """
    from curate.train.eval import EvalConfig
    from curate.train.sft import TrainConfig
    from curate.train.validate import validate as run_validate

    train_keys = ("method", "lr", "epochs", "warmup_ratio", "cutoff", "packing", "pack_len", "global_batch",
                  "micro_batch", "adam_beta2", "sharding", "lora_rank", "lora_alpha", "gradient_checkpointing",
                  "bf16", "max_steps", "seed", "system_prompt", "style")
    train_opts = {k: opts[k] for k in train_keys}
    eval_opts = {"benchmarks": tuple(b.strip() for b in opts["benchmarks"].split(",") if b.strip()),
                 "backend": opts["backend"], "max_tokens": opts["max_tokens"], "temperature": opts["temperature"],
                 "top_p": opts["top_p"], "n": opts["samples"], "seed": opts["seed"], "limit": opts["limit"]}
    if preset:
        from curate.train.presets import get_preset

        chosen_p = get_preset(preset)
        given = {k for k in ctx.params if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}
        train_opts.update({k: v for k, v in chosen_p.train.items() if k not in given})
        renamed = {"n": "samples"}
        eval_opts.update({k: v for k, v in chosen_p.eval.items() if renamed.get(k, k) not in given})
    try:
        train_cfg = TrainConfig(**train_opts)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    eval_cfg = EvalConfig(**eval_opts)
    chosen = [c.strip() for c in configs.split(",") if c.strip()] if configs else None
    try:
        res = run_validate(dataset, model_path, out, train_cfg=train_cfg, eval_cfg=eval_cfg, configs=chosen,
                           card=not no_card, progress=progress, preset=preset)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for row in res.rows:
        figures = "  ".join(f"{k}={v}" for k, v in row.items() if k != "config")
        click.echo(f"{row['config']:16} {figures}")
    click.echo(f"trained {len(res.trained)}, evaluated {len(res.evaluated)}, reused {len(res.reused)} configs; "
               f"wrote {res.path}" + (f" and {res.card}" if res.card else ""))


if __name__ == "__main__":
    main()
