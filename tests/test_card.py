"""Dataset cards on real pipeline outputs (the shipped trace sample): YAML header, load_dataset
round trip per config, body figures computed from the manifest and data, deterministic plots."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("PIL")  # the plots
datasets = pytest.importorskip("datasets")
hub = pytest.importorskip("huggingface_hub")

from click.testing import CliRunner  # noqa: E402

from curate import TRACE_SCHEMA, Pipeline, read, run_recipe  # noqa: E402
from curate.card import build_card, key_figures, write_card  # noqa: E402
from curate.card.card import escape  # noqa: E402
from curate.card.features import features_yaml  # noqa: E402
from curate.card.section import CardContext, CardSection, VariantNote, VariantStep  # noqa: E402
from curate.cli import main  # noqa: E402
from curate.ops import register, registry  # noqa: E402
from curate.recipe import load_recipe  # noqa: E402
from curate.step import Step, StepResult, reject_where  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "quickstart"
    run_recipe(REPO / "pipelines" / "long_cot_sample.yaml", out, progress=False)
    write_card(out, license="apache-2.0")
    return out


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "structure_vs_content"
    run_recipe(REPO / "pipelines" / "structure_vs_content.yaml", out, progress=False)
    write_card(out)
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _load(folder: Path, config: str | None = None):
    return datasets.load_dataset(str(folder), config, split="train", cache_dir=str(folder.parent / "hf-cache"))


def test_card_header_parses_and_load_dataset_reads_only_kept_rows(quickstart: Path) -> None:
    card = hub.DatasetCard.load(quickstart / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["size_categories"] == ["n<1K"]
    assert data["configs"] == [{"config_name": "default", "default": True,
                                "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    assert set(data["source_datasets"]) == {"skythought_correct5k27b_math500", "skythought_correct5k27b_minerva"}
    ds = _load(quickstart)
    kept = pl.read_parquet(quickstart / "data" / "*.parquet")
    assert ds.num_rows == kept.height == _manifest(quickstart)["output"]["rows"] == 50  # rejects/ not read
    assert sorted(ds["id"]) == sorted(kept["id"].to_list())
    declared = [f["name"] for f in data["dataset_info"]["features"]]
    assert declared == list(ds.features) == kept.columns


def test_card_body_figures_come_from_manifest_and_data(quickstart: Path) -> None:
    text = (quickstart / "README.md").read_text()
    for section in ("## Summary", "## Schema", "## Sources and teachers", "## Pipeline as run",
                    "## Length statistics", "## How to reproduce", "## Limitations"):
        assert section in text
    manifest = _manifest(quickstart)
    for f in manifest["funnel"]:
        assert f"| {f['step']} | `{f['name']}` |" in text
        assert f"| {f['rows_in']:,} | {f['kept']:,} | {f['rejected']:,} |" in text
    kept = pl.read_parquet(quickstart / "data" / "*.parquet")
    for (source,), group in kept.group_by("source"):
        assert f"| {source} | unknown | math | {group.height} |" in text
    median = kept["thinking"].str.len_chars().median()
    shown = f"{int(median):,}" if median == int(median) else f"{median:,.1f}"  # 3,948, never 3,948.0
    assert f"| thinking | {kept['thinking'].str.len_chars().min():,} | {shown} |" in text
    assert not re.search(r"\| [\d,]+\.0 \|", text), "a whole number printed with .0"
    assert "stratify_by=\"source\"" in text and "sample:" in text  # the recipe to reproduce
    assert "- step 4 `sample`: `0`" in text  # seeds as a list, one per step
    assert f"| polars | {manifest['libraries']['polars']} |" in text
    assert "Not decontaminated" in text and "not checked against reference answers" in text
    assert "![Funnel](plots/funnel.png)" in text
    figures = key_figures(quickstart)
    assert figures["rows"] == 50 and figures["decontamination"] is None and figures["verification"] == []


def test_title_description_and_license_come_from_the_recipe(tmp_path: Path, math500_sample: Path) -> None:
    recipe = tmp_path / "svc.yaml"
    recipe.write_text(f"name: Verified MATH-500 traces\ndescription: Real *long* traces, checked.\n"
                      f"card: {{license: cc-by-4.0}}\ninput: {{path: {math500_sample}}}\n"
                      "steps:\n  - filter: {min_thinking_chars: 200}\n")
    out = tmp_path / "svc"
    run_recipe(recipe, out, progress=False)
    card = hub.DatasetCard.load(out / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.pretty_name == "Verified MATH-500 traces"
    assert "\n# Verified MATH-500 traces\n\nReal *long* traces, checked.\n" in card.text and "# Svc" not in card.text
    # a long nested type is shown whole, in a code span
    assert ("| `test_cases` | `list<element: struct<input: large_string, output: large_string>>` |"
            in card.text)
    # `curate card --license` is saved: a changed recipe's run keeps it (the recipe sets no title)
    assert CliRunner().invoke(main, ["card", str(out), "--license", "mit", "--no-plots"]).exit_code == 0
    recipe.write_text(recipe.read_text().replace("card: {license: cc-by-4.0}\n", "").replace("200", "300"))
    run_recipe(recipe, out, progress=False)
    card = hub.DatasetCard.load(out / "README.md")
    assert card.data.license == "mit" and card.data.pretty_name == "Verified MATH-500 traces"


def test_plots_are_pngs_and_regeneration_is_byte_identical(quickstart: Path) -> None:
    def digest() -> dict[str, str]:
        files = [quickstart / "README.md", *sorted((quickstart / "plots").glob("*.png"))]
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = digest()
    assert {"funnel.png", "thinking_length.png"} <= set(before)
    for name in ("funnel.png", "thinking_length.png"):
        assert (quickstart / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name})" in (quickstart / "README.md").read_text()
    write_card(quickstart, license="apache-2.0")
    assert digest() == before


def test_written_card_is_what_huggingface_hub_writes(quickstart: Path, variants: Path) -> None:
    """README.md is written as text (no hub client imported); it is byte for byte what
    ``DatasetCard(...).save`` writes: the YAML header survives the hub's parse and re-dump."""
    for folder in (quickstart, variants):
        text = (folder / "README.md").read_text()
        assert str(hub.DatasetCard(text)) == text
    card = build_card(quickstart, license="apache-2.0")  # the API still hands out a DatasetCard
    assert isinstance(card, hub.DatasetCard) and str(card) == (quickstart / "README.md").read_text()


def _shipped_schemas() -> list[tuple[str, pa.Schema]]:
    """The output schema of every shipped recipe and of each of its variants, as the run plans it."""
    out = []
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        pipeline = load_recipe(path).pipeline
        plans = pipeline.plan()
        base = plans[-1] if plans else TRACE_SCHEMA
        out.append((path.stem, base))
        out += [(f"{path.stem}/{name}", plan[-1]) for name, plan in pipeline.variant_plans(base).items() if plan]
    return out


def test_features_yaml_is_what_datasets_emits_for_every_shipped_schema(quickstart: Path, variants: Path) -> None:
    """The card's features list, computed without importing datasets, equals datasets' own on the
    schema of every shipped recipe and variant, and on the Parquet files two of them wrote."""
    schemas = _shipped_schemas()
    assert len(schemas) > 20 and any("/" in name for name, _ in schemas)  # variants are in
    written = [(str(p), pq.read_schema(p).remove_metadata()) for folder in (quickstart, variants)
               for p in sorted((folder / "data").rglob("*.parquet"))]
    kinds = set()
    for name, schema in schemas + written:
        kinds |= {str(f.type) for f in schema}
        assert features_yaml(schema) == datasets.Features.from_arrow_schema(schema)._to_yaml_list(), name
    assert {"large_string", "bool", "double", "int64", "list<item: string>"} <= kinds
    assert any(k.startswith("list<item: struct<") for k in kinds)


def test_features_yaml_is_what_datasets_emits_for_every_arrow_kind() -> None:
    """Beyond what the recipes write: every scalar type datasets names, nulls, dictionaries,
    nested, large and fixed-size lists, structs of lists; an unsupported type is refused alike."""
    types = [pa.null(), pa.bool_(), pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(),
             pa.uint32(), pa.uint64(), pa.float16(), pa.float32(), pa.float64(), pa.time32("s"), pa.time64("ns"),
             pa.timestamp("us"), pa.timestamp("ms", tz="UTC"), pa.date32(), pa.date64(), pa.duration("s"),
             pa.decimal128(10, 2), pa.decimal256(40, 3), pa.binary(), pa.large_binary(), pa.binary(4), pa.string(),
             pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string()), pa.json_(pa.string())]
    nested = [pa.list_(pa.string()), pa.large_list(pa.int32()), pa.list_(pa.float32(), 3),
              pa.list_(pa.list_(pa.int8())), pa.list_(pa.list_(pa.int16(), 2)), pa.large_list(pa.list_(pa.bool_())),
              pa.list_(pa.struct([("part", pa.string()), ("start", pa.int32())])), pa.list_(pa.struct([])),
              pa.large_list(pa.struct([("z", pa.large_string())])), pa.struct([]),
              pa.struct([("x", pa.int64()), ("y", pa.list_(pa.float64())), ("s", pa.struct([("t", pa.string())]))]),
              pa.list_(pa.json_(pa.string()))]
    fields = [pa.field(f"c{i}", t, nullable=i % 2 == 0) for i, t in enumerate(types + nested)]
    schema = pa.schema(fields)
    assert features_yaml(schema) == datasets.Features.from_arrow_schema(schema)._to_yaml_list()
    for bad in (pa.map_(pa.string(), pa.int64()), pa.decimal32(5, 2)):
        with pytest.raises(ValueError):
            datasets.Features.from_arrow_schema(pa.schema([("m", bad)]))
        with pytest.raises(ValueError, match="does not have a datasets dtype"):
            features_yaml(pa.schema([("m", bad)]))


def test_plots_draw_the_data(quickstart: Path) -> None:
    """The funnel's red area is the rejected share of its rows (every bar is one stage, equally
    tall); the length histogram draws one outline colour per source, no more."""
    from PIL import Image

    funnel = Image.open(quickstart / "plots" / "funnel.png").convert("RGB")
    colours = {c: n for n, c in funnel.getcolors(1 << 20)}
    blue, red = colours[(0x4C, 0x72, 0xB0)], colours.get((0xDD, 0x55, 0x55), 0)
    stages = _manifest(quickstart)["funnel"]
    rejected = sum(f["rejected"] for f in stages) / sum(f["kept"] + f["rejected"] for f in stages)
    assert rejected > 0 and abs(red / (red + blue) - rejected) < 0.02
    lengths = Image.open(quickstart / "plots" / "thinking_length.png").convert("RGB")
    assert lengths.size == (770, 396)
    colours = {c for _, c in lengths.getcolors(1 << 20)}
    cycle = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)]
    sources = pl.read_parquet(quickstart / "data" / "*.parquet")["source"].n_unique()
    assert sources == 2 and [c in colours for c in cycle] == [True, True, False]


def test_variant_configs_each_load_with_their_rows_and_features(variants: Path) -> None:
    manifest = _manifest(variants)
    card = hub.DatasetCard.load(variants / "README.md")
    configs = {c["config_name"]: c for c in card.data.configs}
    assert list(configs) == list(manifest["configs"])
    assert configs["clean"].get("default") is True
    assert configs["shuffle_67"]["data_files"] == [{"split": "train", "path": "data/shuffle_67/train-*.parquet"}]
    for name in ("clean", "wrong_answer", "digits_50", "shuffle_67"):
        ds = _load(variants, name)
        assert ds.num_rows == manifest["configs"][name]["rows"]
        assert list(ds.features) == manifest["configs"][name]["columns"]
    assert _load(variants).num_rows == manifest["configs"]["clean"]["rows"]  # the default config


def test_variant_card_explains_variants_and_verification(variants: Path) -> None:
    text = (variants / "README.md").read_text()
    manifest = _manifest(variants)
    assert "## Variants" in text
    for name, config in manifest["configs"].items():
        assert f"| `{name}` | {config['rows']:,} |" in text
    assert "`shuffle_steps` `ratio=0.67` |" in text
    assert "`corrupt_digits` `ratio=0.2," in text
    stats = next(f for f in manifest["funnel"] if f["name"] == "verify")["stats"]["by_source"]
    counts = stats["skythought_correct5k27b_minerva"]
    accuracy = counts["correct"] / sum(counts.values())
    assert f"| skythought_correct5k27b_minerva | {sum(counts.values())} | {counts['correct']} |" in text
    assert f"{accuracy:.1%}" in text
    assert "wrong on purpose" in text


def test_decontamination_report_from_rejects(tmp_path: Path) -> None:
    out = tmp_path / "dd"
    run_recipe(REPO / "pipelines" / "dedup_decontam.yaml", out, progress=False)
    write_card(out)
    text = (out / "README.md").read_text()
    rejects = pl.read_parquet(out / "rejects" / "03-decontaminate.parquet")
    assert "## Decontamination" in text and "math500, aime24" in text
    assert f"Rows removed: **{rejects.height:,}**" in text
    for (bench, method), group in rejects.group_by("decontam_benchmark", "decontam_method"):
        assert f"| {bench} | {method} | {group.height} |" in text
    example_id = rejects.sort("id")["decontam_item"][0]
    assert example_id in text
    assert "Decontamination covers only" in text
    # the settings of the matchers that ran, not the embedding matcher's
    section = text.split("## Decontamination")[1].split("\n## ")[0]
    assert "ngram_n=8" in section and "fuzzy_threshold=0.95" in section and "embedding" not in section
    # LaTeX in example problems is shown as typed: Markdown and HTML escaped in the cells
    examples = section.split("Examples of matched rows:")[1]
    problems = rejects.sort("id").head(3)["problem"].to_list()
    assert any("$" in p or "\\" in p or "_" in p for p in problems), "the examples hold LaTeX"
    for p in problems:
        cell = escape(" ".join(p.split())[:199] + ("…" if len(" ".join(p.split())) > 200 else ""))
        assert f"| {cell} |" in examples
    assert not re.search(r"(?<!\\)\$", examples) and "<" not in examples.replace("&lt;", "")


def test_cli_card_writes_and_show_prints_key_figures(quickstart: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(quickstart, folder)
    (folder / "README.md").unlink()
    shutil.rmtree(folder / "plots")
    res = CliRunner().invoke(main, ["card", str(folder), "--license", "cc-by-4.0", "--pretty-name", "QS"])
    assert res.exit_code == 0, res.output
    card = hub.DatasetCard.load(folder / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.pretty_name == "QS"
    assert (folder / "plots" / "funnel.png").exists()
    res = CliRunner().invoke(main, ["card", str(folder), "--no-plots"])  # no options: what was set stays
    assert res.exit_code == 0, res.output
    card = hub.DatasetCard.load(folder / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.pretty_name == "QS" and "\n# QS\n" in card.text
    res = CliRunner().invoke(main, ["card", str(folder), "--show", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rows"] == 50
    res = CliRunner().invoke(main, ["card", str(folder), "--show"])
    assert res.exit_code == 0, res.output
    assert "Funnel" in res.output and "skythought_correct5k27b_minerva" in res.output
    res = CliRunner().invoke(main, ["card", str(tmp_path)])
    assert res.exit_code == 2 and "no manifest.json" in res.output


def test_validation_results_get_a_table_and_a_variant_plot(variants: Path, tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    shutil.copytree(variants, folder)
    results = [{"config": "clean", "aime24_pass@1": 0.41}, {"config": "shuffle_67", "aime24_pass@1": 0.27}]
    (folder / "validation.json").write_text(json.dumps(results))
    write_card(folder)
    text = (folder / "README.md").read_text()
    assert "| clean | 0.41 |" in text and "| shuffle_67 | 0.27 |" in text
    assert "![Variants](plots/variants.png)" in text
    assert (folder / "plots" / "variants.png").read_bytes()[:4] == b"\x89PNG"


def test_difficulty_annotation_gets_a_section_and_histogram(quickstart: Path, tmp_path: Path) -> None:
    folder = tmp_path / "qs"
    shutil.copytree(quickstart, folder)
    shard = folder / "data" / "train-00000-of-00001.parquet"
    frame = pl.read_parquet(shard)  # a pass rate as a difficulty step writes it (here: from thinking length)
    frame = frame.with_columns((1 - pl.col("thinking").str.len_chars().rank() / frame.height).alias("difficulty_pass_rate"))
    frame.write_parquet(shard)
    write_card(folder)
    text = (folder / "README.md").read_text()
    mean = frame["difficulty_pass_rate"].mean()
    assert "## Difficulty" in text and f"`difficulty_pass_rate`: 50 rows, mean {mean:.3g}" in text
    assert (folder / "plots" / "difficulty_pass_rate.png").exists()


@dataclass
class WordCount(Step):
    """A step defined here, not built in: counts the thinking's words, rejects rows with fewer than
    ``min_words``, and describes itself in the card through the Step hooks alone."""

    name = "_test_word_count"
    writes = {"words_thinking": pa.int64()}  # noqa: RUF012
    min_words: int = 0

    def apply(self, batch: pl.DataFrame, offset: int) -> StepResult:
        words = batch["thinking"].fill_null("").str.split(" ").list.len().cast(pl.Int64)
        result = reject_where(batch.with_columns(words.alias("words_thinking")), words < self.min_words,
                              "too few words")
        return StepResult(result.kept, result.rejected, {"words": {"rows": batch.height, "short": int(
            (words < self.min_words).sum())}})

    def coverage_warnings(self, stats: dict) -> list[str]:
        w = stats.get("words") or {}
        return [f"rejected {w['short']} of {w['rows']} rows as short"] if w.get("short") else []

    @classmethod
    def card_section(cls, ctx: CardContext) -> CardSection | None:
        if not ctx.stages(configs=False):
            return None
        total = int(ctx.rows()["words_thinking"].sum())
        return CardSection(key="words", figures={"total": total}, tags=["word-counted"], order=15,
                           markdown=["## Word counts", "", f"{total:,} words of thinking in the kept rows.", ""],
                           limitations=["Words are counted at spaces."])

    @classmethod
    def card_variant(cls, step: VariantStep) -> VariantNote:
        return VariantNote(f"words counted (at least {step.params['min_words']})", "a test's own method")


@pytest.fixture
def word_count():
    register(WordCount)  # registered only while the test runs: not an operator `curate ops` lists
    yield WordCount
    registry().pop(WordCount.name)


def test_a_step_defined_outside_curate_adds_its_own_section_tag_and_variant_row(
        word_count, math500_sample: Path, tmp_path: Path) -> None:
    """No edit to the card: a user's step adds a section, a tag, a limitation, key figures, its
    *Variants* cell and a coverage warning through the Step hooks."""
    out = tmp_path / "words"
    result = Pipeline([WordCount()], variants={"all": [], "long": [WordCount(min_words=400)]}).run(
        read(math500_sample), out=out, progress=False)
    total = int(result.to_polars("all")["words_thinking"].sum())
    card = hub.DatasetCard.load(out / "README.md")
    assert "word-counted" in card.data.tags
    text = card.text
    section = f"## Word counts\n\n{total:,} words of thinking in the kept rows.\n"
    assert section in text
    assert text.index("## Pipeline as run") < text.index(section) < text.index("## Length statistics")
    assert "- Words are counted at spaces.\n" in text.split("## Limitations", 1)[1]
    assert key_figures(out)["words"] == {"total": total}
    long = result.manifest["configs"]["long"]
    short = long["funnel"][0]["rejected"]
    assert 0 < short < long["funnel"][0]["rows_in"]
    warning = f"config long: step 2 '_test_word_count' rejected {short} of {long['funnel'][0]['rows_in']} rows as short"
    assert result.manifest["coverage_warnings"] == [warning]
    variants = text.split("## Variants", 1)[1].split("\n## ", 1)[0]
    assert f"**Warning: low corruption coverage.** {warning}" in variants
    row = next(line for line in variants.splitlines() if line.startswith("| `long` |"))
    assert f"| `long` | {long['rows']:,} | — (not corrupted) |" in row
    assert row.endswith("| words counted (at least 400) | a test's own method |")
