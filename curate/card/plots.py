"""PNG plots for dataset cards: thinking length per source, the operator funnel, difficulty, variants.

Matplotlib's object API with the Agg canvas (no pyplot, no display, no global state), fixed sizes
and no timestamp or version in the PNG metadata, so the same data gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

_SIZE = (7.0, 3.6)
_DPI = 110
# PNG text chunks matplotlib would add (its version); dropping them keeps the bytes reproducible
_PNG_METADATA = {"Software": None}


def _figure(size: tuple[float, float] = _SIZE):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata=_PNG_METADATA)
    return path


def length_histogram(lengths: Mapping[str, Sequence[int]], path: Path, *,
                     title: str = "Thinking length per source", xlabel: str = "thinking characters") -> Path:
    """One step histogram per group (source or domain) on shared bins, so the shapes compare."""
    fig = _figure()
    ax = fig.add_subplot()
    groups = {k: np.asarray(v, dtype=float) for k, v in sorted(lengths.items()) if len(v)}
    if groups:
        every = np.concatenate(list(groups.values()))
        bins = np.histogram_bin_edges(every, bins=min(30, max(5, int(np.sqrt(every.size)))))
        for name, values in groups.items():
            label = f"{name} (n={values.size}, median {int(np.median(values)):,})"
            ax.hist(values, bins=bins, histtype="step", linewidth=1.6, label=label)
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return _save(fig, path)


def funnel(stages: Sequence[Mapping], path: Path, *, title: str = "Rows kept and rejected per step") -> Path:
    """Horizontal bars, one per stage (read first, at the top): kept in blue, rejected in red."""
    height = max(2.0, 0.45 * len(stages) + 1.2)
    fig = _figure((_SIZE[0], height))
    ax = fig.add_subplot()
    labels = [f"{s['step']}: {s['name']}" for s in stages]
    kept = np.array([s["kept"] for s in stages], dtype=float)
    rejected = np.array([s["rejected"] for s in stages], dtype=float)
    y = np.arange(len(stages))[::-1]
    ax.barh(y, kept, color="#4C72B0", label="kept")
    ax.barh(y, rejected, left=kept, color="#DD5555", label="rejected")
    for yi, k, r in zip(y, kept, rejected):
        ax.text(k + r, yi, f"  {int(k):,} kept" + (f", {int(r):,} rejected" if r else ""),
                va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, max(1.0, float((kept + rejected).max(initial=0))) * 1.45)
    ax.set_xlabel("rows")
    ax.set_title(title, fontsize=10)
    fig.legend(fontsize=7, frameon=False, loc="outside lower center", ncols=2)
    return _save(fig, path)


def value_histogram(values: Sequence[float], path: Path, *, title: str, xlabel: str) -> Path:
    """A plain histogram (difficulty pass rates and other numeric annotations)."""
    fig = _figure()
    ax = fig.add_subplot()
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if data.size:
        ax.hist(data, bins=min(20, max(5, int(np.sqrt(data.size)))), color="#4C72B0")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return _save(fig, path)


def variant_bars(values: Mapping[str, float], path: Path, *, title: str, xlabel: str) -> Path:
    """One bar per config (variant comparison of a validation metric)."""
    names = list(values)
    fig = _figure((_SIZE[0], max(2.0, 0.3 * len(names) + 1.2)))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    ax.barh(y, [values[n] for n in names], color="#4C72B0")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
