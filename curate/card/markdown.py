"""Markdown for dataset cards: table cells, code spans, numbers as the card prints them.

Shared by the card and by the sections steps contribute (``curate.card.section``)."""

from __future__ import annotations

import json
import re
from typing import Any


class Md(str):
    """Text that is already Markdown (a code span, a link): a table cell keeps it as is."""


def code(text: Any) -> Md:
    """``text`` as a code span, never cut (a fence longer than any backtick run inside)."""
    text = str(text).replace("\n", " ")
    ticks = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Md(f"{ticks}{pad}{text}{pad}{ticks}")


# what inline Markdown (a table cell holds no blocks) would interpret: escapes, code, emphasis,
# links, strikethrough, math, the cell separator; "_" only where it can open or close emphasis
_MD_SPECIAL = re.compile(r"([\\`*\[\]~$|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def escape(text: str) -> str:
    """Plain text for a Markdown table cell: HTML and Markdown syntax shown, not interpreted
    (a LaTeX problem keeps its ``\\frac``, ``$`` and ``*``, with no italics)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def number(v: float) -> str:
    """Thousands separators; no ``.0`` on a whole number (a median of 3948 prints 3,948)."""
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"


def fmt(v: Any) -> str:
    """A value as a table cell shows it: numbers with separators, text escaped and cut at 200."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return number(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, Md):
        return str(v).replace("|", "\\|")
    text = " ".join(str(v).split())
    text = text if len(text) <= 200 else text[:199] + "…"
    return escape(text)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; every cell through ``fmt``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def params_text(params: dict[str, Any]) -> str:
    """``k=v, ...`` with JSON values (as a recipe types them), or a dash for none."""
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in params.items()) or "—"
