"""segment_steps and profile on real long-CoT traces (shipped in curate/data/real/traces)."""

from __future__ import annotations

import re
from functools import cache, lru_cache
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate import Pipeline, read
from curate.errors import RecipeError
from curate.ops.structure import TRANSITIONS, count_keywords, step_starts
from curate.ops.structure.segment import INLINE_TRANSITIONS, Steps, paragraph_starts
from curate.ops.structure.step import Profile, SegmentSteps
from curate.ops.structure.tokens import APPROX_METHOD
from curate.step import build_step

TRACES = Path(__file__).resolve().parent.parent / "curate" / "data" / "real" / "traces"  # shipped, gzipped
FILES = {
    "math500": "skythought_correct5k27b_math500.jsonl",
    "minerva": "skythought_correct5k27b_minerva.jsonl",
    "aime_ckpt140": "skythought_correct5k32b_ckpt140_aime24.jsonl",
    "amc_corrupt07": "skythought_corrupt07_32b_amc23.jsonl",
    "aime_reflection10": "skythought_reflection10_32b_aime24.jsonl",
    "olympiad_short": "skythought_correct5k32bshort_olympiadbench.jsonl",
}



@cache
def traces(name: str) -> pl.DataFrame:
    return pl.concat([pl.from_arrow(b.traces) for b in read(TRACES / f"{FILES[name]}.gz").batches(4096)])


@lru_cache(maxsize=1)
def thinking_texts() -> tuple[str, ...]:
    out: list[str] = []
    for name in FILES:
        out += [t for t in traces(name)["thinking"].to_list() if t]
    return tuple(out)


# --- segmentation ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["transition", "paragraph"])
def test_every_real_trace_round_trips(mode: str) -> None:
    texts = thinking_texts()
    assert len(texts) > 500
    for text in texts:
        starts = step_starts(text, mode)
        assert starts[0] == 0 and starts == sorted(set(starts))
        ends = [*starts[1:], len(text)]
        assert "".join(text[s:e] for s, e in zip(starts, ends, strict=True)) == text
        assert Steps.of(text, starts).text() == text


@settings(database=None, max_examples=40, deadline=None)
@given(
    i=st.integers(min_value=0, max_value=10_000),
    mode=st.sampled_from(["transition", "paragraph"]),
    transitions=st.lists(st.sampled_from(TRANSITIONS), min_size=1, max_size=8, unique=True),
    split_inline=st.booleans(),
    min_step_chars=st.integers(min_value=0, max_value=400),
)
def test_round_trip_any_rules(i: int, mode: str, transitions: list[str], split_inline: bool, min_step_chars: int) -> None:
    texts = thinking_texts()
    text = texts[i % len(texts)]
    starts = step_starts(text, mode, transitions, split_inline, INLINE_TRANSITIONS, min_step_chars)
    steps = Steps.of(text, starts)
    assert steps.text() == text
    # no step but the first is shorter than min_step_chars
    for body in steps.bodies[1:]:
        assert len(body.strip()) >= min_step_chars


def test_transition_steps_open_with_a_transition() -> None:
    opener = re.compile(r"[*_#>\-\s]*(?:" + "|".join(re.escape(t) for t in TRANSITIONS) + r")\b")
    inline = re.compile(r"(?:" + "|".join(re.escape(t) for t in INLINE_TRANSITIONS) + r")\b")
    n_steps = n_paras = 0
    for text in thinking_texts()[:300]:
        starts = step_starts(text, "transition")
        paras = set(paragraph_starts(text))
        n_steps += len(starts)
        n_paras += len(paras)
        for s in starts[1:]:
            if s in paras:
                assert opener.match(text, s), text[s:s + 60]
            else:  # an inline split, after a sentence end
                assert inline.match(text, s) and text[s - 1] in " \t"
                assert re.search(r"[.!?][ \t]*$", text[max(0, s - 8):s])
    # merging paragraphs gives far fewer, longer steps than one per paragraph
    assert n_steps < n_paras / 2


def test_segment_steps_op_offsets_tile_the_thinking() -> None:
    df = traces("amc_corrupt07")
    out = SegmentSteps().apply(df, 0).kept
    assert out.height == df.height
    for text, s, e, n in out.select("thinking", "steps_start", "steps_end", "steps_count").iter_rows():
        assert n == len(s) == len(e) > 0
        assert "".join(text[a:b] for a, b in zip(s, e, strict=True)) == text
    assert set(out["steps_method"]) == {"rule:transition+inline"}
    para = SegmentSteps(mode="paragraph").apply(df, 0).kept
    assert (para["steps_count"] >= out["steps_count"]).all()
    assert (para["steps_count"] > out["steps_count"]).sum() > df.height * 0.9


def test_empty_thinking_has_no_steps() -> None:
    df = traces("olympiad_short").head(20).with_columns(pl.lit("").alias("thinking"))
    out = SegmentSteps().apply(df, 0).kept
    assert out["steps_count"].to_list() == [0] * 20


def test_min_steps_splits_a_thinking_without_transitions_by_paragraphs() -> None:
    """Short CoT without markers (numbered sections, no "Wait"/"But" paragraph) is one transition
    step; min_steps: 2 splits it by paragraphs, and steps_method says so."""
    df = traces("olympiad_short").head(40)
    rules = SegmentSteps().apply(df, 0).kept
    single = rules.filter(pl.col("steps_count") < 2)
    assert single.height > 10
    out = SegmentSteps(min_steps=2).apply(df, 0).kept
    fell_back = out.filter(pl.col("steps_method") == "rule:transition+inline->rule:paragraph")
    assert set(fell_back["id"]) == {i for i, t in zip(single["id"], single["thinking"], strict=True)
                                    if t.count("\n\n") >= 1}
    assert (fell_back["steps_count"] >= 2).all()
    kept = out.filter(pl.col("steps_method") == "rule:transition+inline")
    assert kept.select("id", "steps_start").equals(rules.filter(pl.col("id").is_in(kept["id"].to_list())).select("id", "steps_start"))
    with pytest.raises(ValueError, match="min_steps"):
        SegmentSteps(min_steps=0)


def test_parameters_are_validated() -> None:
    with pytest.raises(RecipeError, match="method 'model' needs a model"):
        build_step("segment_steps", {"mode": "model"})
    with pytest.raises(RecipeError, match="segment_steps' own"):
        build_step("profile", {"mode": "model"})
    with pytest.raises(RecipeError, match="min_step_chars"):
        build_step("segment_steps", {"min_step_chars": -1})
    with pytest.raises(RecipeError, match="unknown parameter"):
        build_step("profile", {"tokeniser": "x"})
    assert isinstance(build_step("segment_steps", {"mode": "paragraph"}), SegmentSteps)


# --- profile -----------------------------------------------------------------------------------


def test_profile_counts_keywords_and_tokens() -> None:
    df = traces("amc_corrupt07")
    out = Profile().apply(df, 0).kept
    for row in out.iter_rows(named=True):
        text = row["thinking"] + "\n\n" + row["solution"]
        waits = len(re.findall(r"(?<![\w'-])wait(?![\w'-])", text, re.IGNORECASE))
        assert row["profile_reflection_keywords"] >= waits
        assert row["profile_keywords"] == row["profile_reflection_keywords"] + row["profile_backtrack_keywords"]
        assert (row["profile_reflection_keywords"], row["profile_backtrack_keywords"]) == count_keywords(text)
        tokens = row["profile_thinking_tokens"] + row["profile_solution_tokens"]
        assert row["profile_keywords_per_1k"] == pytest.approx(row["profile_keywords"] * 1000 / tokens)
        assert row["profile_steps"] == len(step_starts(row["thinking"]))
        assert row["profile_mean_step_chars"] == pytest.approx(len(row["thinking"]) / row["profile_steps"])
        # the approximation lands between a word count and a character count
        assert len(row["thinking"].split()) <= row["profile_thinking_tokens"] < len(row["thinking"])
    assert set(out["profile_token_method"]) == {APPROX_METHOD}


def test_table4_aime_has_many_more_keywords_than_math500() -> None:
    from curate.ops.structure.table4 import table4

    t = table4([str(TRACES / f"{FILES['math500']}.gz"), str(TRACES / f"{FILES['aime_ckpt140']}.gz")])
    assert t["responses"].to_list() == [500, 30]
    m, a = t["keywords/resp"].to_list()
    assert a > 5 * m  # the paper's Table 4 shape: ~42 vs ~261 keywords per response
    math = Profile().apply(traces("math500"), 0).kept
    assert m == round(math["profile_keywords"].mean(), 1)


def test_profile_with_a_named_tokenizer(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    df = traces("amc_corrupt07")
    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(df["thinking"].to_list(), trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]"],
                                                                          show_progress=False))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    out = Profile(tokenizer=str(path)).apply(df, 0).kept
    expect = [len(tok.encode(t, add_special_tokens=False).ids) for t in df["thinking"].to_list()]
    assert out["profile_thinking_tokens"].to_list() == expect
    assert set(out["profile_token_method"]) == {f"hf:{path}"}
    with pytest.raises(ValueError, match="tokenizer"):
        Profile(tokenizer=str(tmp_path / "missing" / "nope.json")).apply(df.head(1), 0)


def test_profile_runs_in_a_pipeline(tmp_path: Path) -> None:
    src = read(TRACES / f"{FILES['amc_corrupt07']}.gz")
    result = Pipeline([SegmentSteps(), Profile()], batch_size=16).run(src, out=tmp_path / "out", progress=False)
    df = result.to_polars()
    assert df.height == 40
    assert df.schema["steps_start"] == pl.List(pl.Int32)
    assert (df["profile_steps"] == df["steps_count"]).all()


def test_model_mode_segments_at_the_paragraphs_the_model_names(tmp_path):
    """segment_steps mode model, through the openai backend on a loopback server that answers like a splitter."""
    import re as _re

    from curate import Pipeline, read
    from curate.models import clear_backends
    from curate.models.serve import make_server, start_in_thread
    from curate.ops import SegmentSteps

    prompts: list[str] = []

    def hook(path, body):
        prompts.append(body["prompt"])
        n = len(_re.findall(r"^\[(\d+)\] ", body["prompt"], flags=_re.M))
        text = "garbage" if n % 5 == 0 else ", ".join(str(k) for k in range(1, n + 1, 3))  # every third paragraph
        return 200, {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5}}, {}

    server = make_server(None, hook=hook)  # type: ignore[arg-type]
    url = start_in_thread(server)
    model = {"backend": "openai", "name_or_path": "splitter", "base_url": url, "cache": False}
    try:
        result = Pipeline([SegmentSteps(mode="model", model=model)]).run(
            read(Path(__file__).resolve().parent.parent / "curate/data/samples/skythought_correct5k27b_math500.jsonl"),
            out=tmp_path / "m", progress=False, card=False)
    finally:
        server.shutdown()
        server.server_close()
        clear_backends()
    df = result.to_polars()
    asked = model_rows = fallback = 0
    for text, starts, ends, method in df.select("thinking", "steps_start", "steps_end", "steps_method").iter_rows():
        assert "".join(text[a:b] for a, b in zip(starts, ends)) == text  # steps still tile the thinking
        paras = paragraph_starts(text) if text.strip() else []
        if len(paras) > 1:
            asked += 1
        if method.endswith("->rule:transition+inline"):
            fallback += 1
            assert len(paras) % 5 == 0
        elif len(paras) > 1:
            model_rows += 1
            assert starts == [paras[k] for k in range(0, len(paras), 3)]
    assert asked == len(prompts) > 0 and model_rows > 0 and fallback > 0
    assert result.stats("segment_steps") == {"model_segmented": model_rows, "rule_fallback": fallback}
    with pytest.raises(ValueError, match="needs a model"):
        SegmentSteps(mode="model")
