"""The `curate` command line: run recipes, list operators, inspect and export datasets."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from curate.errors import CurateError

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Group(click.Group):
    """Print curate's own errors as one line (exit 2) instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CurateError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="curate")
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


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder to write; overrides the recipe's output.path.")
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in the folder.")
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming a killed run.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when on a terminal).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: a Ray cluster through Ray Data (needs curate[ray]); the same "
                   "dataset comes out.")
@click.option("--address", metavar="ADDR",
              help="--engine ray: the cluster to join (auto, ray://head:10001; default: $RAY_ADDRESS, "
                   "else a local Ray on this machine). OUT must be on storage every node sees.")
@click.option("--keep-work", is_flag=True, help="Keep the per-step intermediate Parquet parts (OUT/.curate).")
@click.option("--no-card", is_flag=True, help="Skip the dataset card (README.md + plots); `curate card` writes it later.")
def run(recipe: Path, out: Path | None, overwrite: bool, no_resume: bool, progress: bool | None,
        engine: str, address: str | None, keep_work: bool, no_card: bool) -> None:
    """Run a YAML RECIPE and write a dataset folder.

    \b
    The folder gets:
      data/train-00000-of-0000N.parquet   kept rows (trace schema + annotation columns)
      rejects/NN-<step>.parquet           every dropped row with reject_step and reject_reason
      manifest.json                       recipe, library versions, seeds, input fingerprint, funnel
      README.md, plots/                   the dataset card (YAML header with configs, the story)
    A recipe with `variants:` runs its shared steps once and writes each variant as a config,
    data/<variant>/train-*.parquet (and rejects/<variant>/...).
    Input paths in the recipe are relative to the recipe file; output paths to the current
    directory. A killed run resumes where it stopped when you run the same command again; a
    finished run is not redone.

    \b
    On a cluster:
      ray start --head                      # or an existing cluster
      curate run RECIPE --engine ray --address auto --out /shared/fs/dataset
    There a vllm model's generations (an openai one's with `ray_data_llm: true` in its
    settings) are made first, by Ray Data's LLM processor in one batch job; install
    curate[ray-vllm] on the GPU nodes.
    """
    from curate.recipe import run_recipe

    command = "curate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_recipe(recipe, out, overwrite=overwrite, resume=not no_resume, progress=progress,
                        engine=engine, address=address, keep_work=keep_work, command=command, card=not no_card)
    click.echo(result.funnel)
    _echo_accuracy(result.manifest["funnel"])
    for name, config in result.manifest.get("configs", {}).items():
        steps = ", ".join(f"{f['name']} -{f['rejected']}" for f in config["funnel"]) or "base only"
        click.echo(f"  config {name}: {config['rows']} rows ({steps})")
    configs = f" in {len(result.configs)} configs" if result.configs else ""
    click.echo(f"wrote {result.rows} rows{configs} to {result.out}")
    for line in result.manifest.get("coverage_warnings", []):
        click.secho(f"WARNING: low corruption coverage: {line}", fg="red", bold=True, err=True)


@main.command()
@click.argument("name", required=False)
def ops(name: str | None) -> None:
    """List the operators (recipe step names) with their parameters, or show one NAME in full."""
    import curate.ops  # noqa: F401
    from curate.catalog import operator_doc
    from curate.step import REGISTRY, param_specs

    if name:
        if name not in REGISTRY:
            raise click.UsageError(f"unknown operator {name!r}; known: {', '.join(sorted(REGISTRY))}")
        click.echo(operator_doc(REGISTRY[name]))
        return
    for key in sorted(REGISTRY):
        cls = REGISTRY[key]
        first = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.secho(key, bold=True, nl=False)
        click.echo(f"  {first}")
        for s in param_specs(cls):
            default = "required" if s["required"] else f"default {s['default']!r}"
            click.echo(f"    {s['name']}: {s['type']} ({default}) {s['help']}")


def _echo_accuracy(funnel: list[dict]) -> None:
    """Per-source verdicts a verify step reported: accuracy = correct / (correct + incorrect)."""
    for entry in funnel:
        for source, c in sorted(entry.get("stats", {}).get("by_source", {}).items()):
            judged = c.get("correct", 0) + c.get("incorrect", 0)
            acc = f"{c.get('correct', 0) / judged:.1%}" if judged else "n/a"
            click.echo(f"  {entry['name']} [{source}]: accuracy {acc} ({c.get('correct', 0)} correct, "
                       f"{c.get('incorrect', 0)} incorrect, {c.get('unverifiable', 0)} unverifiable)")


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
@click.option("--license", "license_", default="unknown", show_default=True,
              help="License id for the card's YAML header (e.g. apache-2.0, cc-by-4.0).")
@click.option("--pretty-name", default=None, help="Title of the card (default: from the folder name).")
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

    path = write_card(folder, license=license_, pretty_name=pretty_name, plots=not no_plots)
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
    click.option("--pack-len", type=int, default=None, help="Tokens per packed sequence [default: cutoff]."),
    click.option("--global-batch", type=int, default=96, show_default=True, help="Packs per optimizer step."),
    click.option("--micro-batch", type=int, default=1, show_default=True, help="Packs per forward pass."),
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
@click.option("--system-prompt", default=None, help="System prompt for every training conversation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming from out/checkpoints.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(dataset: Path, config: str | None, model_path: str, method: str, out: Path, lr: float | None,
          epochs: float, warmup_ratio: float, cutoff: int, pack_len: int | None, global_batch: int,
          micro_batch: int, lora_rank: int, lora_alpha: int, lora_targets: str, gradient_checkpointing: bool,
          bf16: bool, save_every: int, max_steps: int | None, system_prompt: str | None, seed: int,
          no_resume: bool, progress: bool) -> None:
    """Fine-tune MODEL on DATASET's traces (SFT, loss on the assistant turn, packed sequences).

    \b
    Defaults follow the seed's setup: full lr 1e-5, 3 epochs, cosine, warmup 0.1, cutoff 16384,
    global batch 96; LoRA on all linear layers, rank 64, alpha 128, dropout 0, lr 1e-4.
    Multi-GPU on one node: torchrun --nproc-per-node N -m curate.cli train ...
    Needs torch, transformers and peft (pip install curate[train]).
    """
    from curate.train.sft import TrainConfig
    from curate.train.sft import train as run_train

    targets: str | list[str] = lora_targets if lora_targets == "all-linear" else lora_targets.split(",")
    try:
        cfg = TrainConfig(method=method, lr=lr, epochs=epochs, warmup_ratio=warmup_ratio, cutoff=cutoff,
                          pack_len=pack_len, global_batch=global_batch, micro_batch=micro_batch,
                          lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=targets,
                          gradient_checkpointing=gradient_checkpointing, bf16=bf16, save_every=save_every,
                          max_steps=max_steps, system_prompt=system_prompt, seed=seed)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    res = run_train(dataset, model_path, out, cfg, config=config, resume=not no_resume, progress=progress)
    last = f", last loss {res.losses[-1]:.4f}" if res.losses else ""
    click.echo(f"trained {res.steps} steps on {res.data['packed']} traces ({res.data['packs']} packs){last}; "
               f"wrote {out / 'final'}")


@main.command("eval")
@click.argument("model")
@click.option("--benchmarks", default="math500,aime24,aime25,amc23,gpqa", show_default=True,
              help="Comma-separated bundled benchmarks (curate.decontam.benchmarks).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for scores.json and generations.parquet.")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default="transformers", show_default=True)
@click.option("--max-tokens", type=int, default=32768, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("-n", "--samples", type=int, default=1, show_default=True, help="Samples per problem (pass@1 averaged).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--system-prompt", default=None, help="System prompt [default: the Sky-T1 style one].")
@click.option("--limit", type=int, default=None, help="Only the first N problems of each benchmark.")
def eval_(model: str, benchmarks: str, out: Path, backend: str, max_tokens: int, temperature: float, top_p: float,
          samples: int, seed: int, system_prompt: str | None, limit: int | None) -> None:
    """Score MODEL (a model folder, a LoRA adapter, or a `curate train` run folder) on benchmarks.

    \b
    Generates with the backend, extracts and math-verifies each answer, and writes
    OUT/scores.json (accuracy with a 95% Wilson interval per benchmark) and
    OUT/generations.parquet (every generation, for audit). Seed setups:
      greedy:  --temperature 0 --max-tokens 32768            (default)
      sampled: --temperature 0.6 --top-p 0.95 -n 8
    """
    from curate.train.eval import DEFAULT_SKY_T1_SYSTEM, EvalConfig, evaluate

    cfg = EvalConfig(benchmarks=tuple(b.strip() for b in benchmarks.split(",") if b.strip()), backend=backend,
                     max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=samples, seed=seed,
                     system_prompt=system_prompt or DEFAULT_SKY_T1_SYSTEM, limit=limit)
    try:
        scores = evaluate(model, out, cfg)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for name, s in scores.items():
        if "skipped" in s:
            click.echo(f"{name:14} skipped: {s['skipped']}")
        else:
            lo, hi = s["ci95"]
            click.echo(f"{name:14} {100 * s['accuracy']:5.1f}%  [{100 * lo:.1f}, {100 * hi:.1f}]  "
                       f"n={s['problems']}x{s['samples']}")
    click.echo(f"wrote {out / 'scores.json'} and {out / 'generations.parquet'}")


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_path", required=True, help="Student model: a local folder or a hub id.")
@click.option("--method", type=click.Choice(["lora", "full"]), default="lora", show_default=True)
@click.option("--benchmarks", default="math500,aime24,aime25,amc23,gpqa", show_default=True,
              help="Comma-separated bundled benchmarks (curate.decontam.benchmarks).")
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
@click.option("--no-card", is_flag=True, help="Do not regenerate the dataset card.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def validate(dataset: Path, model_path: str, method: str, benchmarks: str, out: Path | None, configs: str | None,
             lr: float | None, epochs: float, warmup_ratio: float, cutoff: int, pack_len: int | None,
             global_batch: int, micro_batch: int, lora_rank: int, lora_alpha: int, gradient_checkpointing: bool,
             bf16: bool, max_steps: int | None, seed: int, backend: str, max_tokens: int, temperature: float,
             top_p: float, samples: int, limit: int | None, no_card: bool, progress: bool) -> None:
    """Train MODEL on every config (variant) of DATASET, score each, record it in the card.

    \b
    Each config is fine-tuned (as `curate train`) into OUT/<config>/ and scored (as `curate eval`)
    into OUT/<config>/eval/; pass@1 and its 95% Wilson interval per benchmark go to
    DATASET/validation.json, and DATASET/README.md is regenerated with the validation table and
    plots/variants.png. Rerunning skips configs already trained and scored with the same settings.
    """
    from curate.train.eval import DEFAULT_SKY_T1_SYSTEM, EvalConfig
    from curate.train.sft import TrainConfig
    from curate.train.validate import validate as run_validate

    try:
        train_cfg = TrainConfig(method=method, lr=lr, epochs=epochs, warmup_ratio=warmup_ratio, cutoff=cutoff,
                                pack_len=pack_len, global_batch=global_batch, micro_batch=micro_batch,
                                lora_rank=lora_rank, lora_alpha=lora_alpha,
                                gradient_checkpointing=gradient_checkpointing, bf16=bf16, max_steps=max_steps,
                                seed=seed)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    eval_cfg = EvalConfig(benchmarks=tuple(b.strip() for b in benchmarks.split(",") if b.strip()), backend=backend,
                          max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=samples, seed=seed,
                          system_prompt=DEFAULT_SKY_T1_SYSTEM, limit=limit)
    chosen = [c.strip() for c in configs.split(",") if c.strip()] if configs else None
    try:
        res = run_validate(dataset, model_path, out, train_cfg=train_cfg, eval_cfg=eval_cfg, configs=chosen,
                           card=not no_card, progress=progress)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for row in res.rows:
        figures = "  ".join(f"{k}={v}" for k, v in row.items() if k != "config")
        click.echo(f"{row['config']:16} {figures}")
    click.echo(f"trained {len(res.trained)}, evaluated {len(res.evaluated)}, reused {len(res.reused)} configs; "
               f"wrote {res.path}" + (f" and {res.card}" if res.card else ""))


if __name__ == "__main__":
    main()
