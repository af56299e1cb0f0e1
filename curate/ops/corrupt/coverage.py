"""Coverage of a corruption: warn when a step changed fewer than 99% of the rows it meant to change."""

from __future__ import annotations

from typing import Any

#: A corruption that changed fewer of the rows it was meant to change than this is reported loudly.
MIN_CHANGED_SHARE = 0.99


def coverage_warnings(manifest: dict[str, Any]) -> list[str]:
    """One line per corruption step (base or config) that changed < 99% of the rows it meant to change.

    Reads the ``corruption: {rows, target, changed}`` stats every corruption reports in its funnel
    entry; unchanged rows are copies of the base rows, so such a variant is partly not a variant.
    """
    entries = [(None, f) for f in manifest.get("funnel", [])]
    entries += [(name, f) for name, c in manifest.get("configs", {}).items() for f in c.get("funnel", [])]
    out = []
    for config, f in entries:
        c = (f.get("stats") or {}).get("corruption")
        if not c or not c.get("target") or c["changed"] >= MIN_CHANGED_SHARE * c["target"]:
            continue
        where = f"config {config}: " if config else ""
        drawn = f" ({c['target']} drawn)" if c["target"] != c["rows"] else ""
        out.append(f"{where}step {f['step']} '{f['name']}' changed {c['changed']:,} of {c['target']:,} rows{drawn} "
                   f"({c['changed'] / c['target']:.1%} < {MIN_CHANGED_SHARE:.0%}): the other rows are unchanged "
                   "copies of the base rows (on_untouched: reject drops them, with the reason)")
    return out
