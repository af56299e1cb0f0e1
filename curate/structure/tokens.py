"""Token counts: a named Hugging Face tokenizer when given, a fast regex approximation otherwise.

The approximation (method ``approx:v1``) counts each run of letters as one token, each digit as
one token (Qwen / Llama-3 style tokenizers split numbers into digits) and each other
non-space character as one token. It runs in polars (Rust regex), with no model files. It has
not been calibrated against a real tokenizer (none was reachable offline when it was written):
treat it as an estimate, keep the recorded method with the numbers, and name a tokenizer when
exact counts matter.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

APPROX_METHOD = "approx:v1"
_APPROX = r"[^\W\d_]+|\d|[^\w\s]|_"


def approx_expr(col: str | pl.Expr) -> pl.Expr:
    """Approximate token count of a text column, as a polars expression (null text counts 0)."""
    e = pl.col(col) if isinstance(col, str) else col
    return e.fill_null("").str.count_matches(_APPROX).cast(pl.Int64)


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Any:
    """A tokenizer by Hugging Face name or local path (a tokenizer.json file or a folder holding one).

    Uses ``transformers.AutoTokenizer`` when installed, else the ``tokenizers`` library.
    """
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
    if hasattr(tok, "encode_batch"):  # tokenizers.Tokenizer
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
    enc = tok(texts, add_special_tokens=False)["input_ids"]  # transformers tokenizer
    return [len(ids) for ids in enc]


def method_name(tokenizer: str | None) -> str:
    return f"hf:{tokenizer}" if tokenizer else APPROX_METHOD
