"""Coverage of a corruption: warn when a step changed fewer than 99% of the rows it meant to change."""

from __future__ import annotations

from typing import Any

#: A corruption that changed fewer of the rows it was meant to change than this is reported loudly.
MIN_CHANGED_SHARE = 0.99


def coverage_warnings(stats: dict[str, Any]) -> list[str]:
    """A line when a corruption changed < 99% of the rows it meant to change (``corruption: {rows,
    target, changed}`` in its stats): the other rows are copies of the base, partly not a variant."""
    c = stats.get("corruption")
    if not c or not c.get("target") or c["changed"] >= MIN_CHANGED_SHARE * c["target"]:
        return []
    drawn = f" ({c['target']} drawn)" if c["target"] != c["rows"] else ""
    return [f"changed {c['changed']:,} of {c['target']:,} rows{drawn} "
            f"({c['changed'] / c['target']:.1%} < {MIN_CHANGED_SHARE:.0%}): the other rows are unchanged "
            "copies of the base rows (on_untouched: reject drops them, with the reason)"]
