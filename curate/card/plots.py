"""PNG plots for dataset cards: thinking length per source, the operator funnel, difficulty, variants.

Drawn with Pillow: axis-aligned bars and step outlines, round ticks, text in Pillow's bundled font.
matplotlib drew the same charts, but importing it and laying out two figures cost about 0.45 s of
CPU per ``curate run``, four times the rest of the card (BENCHMARKS.md, *Start-up*). Fixed sizes
and no metadata in the PNG, so the same data gives byte-identical files; written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

_SIZE = (770, 396)  # pixels (7.0 x 3.6 inches at 110 dpi)
_BLUE, _RED, _INK, _GRID = "#4C72B0", "#DD5555", "#222222", "#DDDDDD"
_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")  # matplotlib's default colours, one per group
_PAD, _TICK = 10, 5  # pixels around the canvas; tick length


@cache
def _font(size: int) -> Any:
    """Pillow's bundled TrueType font at ``size`` pixels (its bitmap font on a Pillow without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1, or no FreeType: one fixed size
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, integer: bool = False, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten apart) from ``lo`` to ``hi``."""
    raw = max(hi - lo, 1e-12) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    step = max(step, 1.0) if integer else step
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _tick_label(value: float, step: float) -> str:
    """A tick as a reader wants it: thousands separators, as many decimals as the step needs."""
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9 * max(1.0, abs(step)):
        decimals += 1
    return f"{value:,.{decimals}f}"


class _Chart:
    """One chart: a white canvas with a title, a framed plot area with data limits, axis labels,
    numeric ticks on x and numeric or named ticks on y; the methods draw in data units."""

    def __init__(self, size: tuple[int, int], *, title: str, xlabel: str, xlim: tuple[float, float],
                 ylim: tuple[float, float], ylabel: str | None = None,
                 ynames: Sequence[tuple[float, str]] | None = None, below: int = 0,
                 xinteger: bool = False) -> None:
        from PIL import Image, ImageDraw

        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.xlim, self.ylim = xlim, ylim
        self.xticks = [(v, _tick_label(v, _step(t))) for t in [_ticks(*xlim, xinteger)] for v in t]
        yt = _ticks(*ylim, integer=True)
        self.yticks = list(ynames) if ynames is not None else [(v, _tick_label(v, _step(yt))) for v in yt]
        tick_font, label_font = _font(12), _font(13)
        label_w = max((self._size(s, tick_font)[0] for _, s in self.yticks), default=0)
        left = _PAD + (self._size(ylabel, label_font)[1] + 8 if ylabel else 0) + label_w + _TICK + 4
        top = _PAD + self._size(title, _font(14))[1] + 10
        bottom = (_PAD + below + self._size(xlabel, label_font)[1] + 6 + self._size("0", tick_font)[1]
                  + _TICK + 6)
        right = max(_PAD + 12, self._size(self.xticks[-1][1], tick_font)[0] // 2 + _PAD) if self.xticks else 22
        self.box = (left, top, size[0] - right, size[1] - bottom)
        self.title, self.xlabel, self.ylabel, self.below = title, xlabel, ylabel, below

    def _size(self, text: str, font: Any) -> tuple[int, int]:
        x0, y0, x1, y1 = self.draw.textbbox((0, 0), text, font=font)
        return x1 - x0, y1 - y0

    def px(self, x: float, y: float) -> tuple[float, float]:
        """Data units to pixels."""
        (x0, x1), (y0, y1), (left, top, right, bottom) = self.xlim, self.ylim, self.box
        return (left + (x - x0) / (x1 - x0) * (right - left),
                bottom - (y - y0) / (y1 - y0) * (bottom - top))

    def text(self, xy: tuple[float, float], text: str, size: int = 12, anchor: str = "lm",
             fill: str = _INK) -> None:
        """Text at a pixel position; ``anchor``: l/m/r horizontally, then t/m/b vertically."""
        font = _font(size)
        x0, y0, x1, y1 = self.draw.textbbox((0, 0), text, font=font)
        x = xy[0] - {"l": 0, "m": (x1 - x0) / 2, "r": x1 - x0}[anchor[0]] - x0
        y = xy[1] - {"t": 0, "m": (y1 - y0) / 2, "b": y1 - y0}[anchor[1]] - y0
        self.draw.text((round(x), round(y)), text, font=font, fill=fill)

    def rect(self, x0: float, x1: float, y0: float, y1: float, fill: str, edge: str | None = None) -> None:
        (a, b), (c, d) = self.px(x0, y0), self.px(x1, y1)
        box = (round(min(a, c)), round(min(b, d)), round(max(a, c)), round(max(b, d)))
        self.draw.rectangle(box, fill=fill, outline=edge)

    def outline(self, edges: np.ndarray, counts: np.ndarray, color: str) -> None:
        """A histogram as a step outline (``histtype="step"``): up, across each bin, down."""
        points = [(edges[0], 0.0)]
        for lo, hi, n in zip(edges[:-1], edges[1:], counts):
            points += [(lo, float(n)), (hi, float(n))]
        points.append((edges[-1], 0.0))
        self.draw.line([tuple(map(round, self.px(x, y))) for x, y in points], fill=color, width=2)

    def legend(self, entries: Sequence[tuple[str, str]], *, patches: bool = False) -> None:
        """Colour keys: in the plot's top right corner, or in one row under the x label (``below``)."""
        font, (_, top, right, _) = _font(11), self.box
        if self.below:
            widths = [28 + self._size(label, font)[0] for _, label in entries]
            x, y = (self.image.width - sum(widths) - 16 * (len(entries) - 1)) / 2, self.image.height - _PAD - 8
            for (color, label), w in zip(entries, widths):
                self._key(x, y, color, patches)
                self.text((x + 26, y), label, 11)
                x += w + 16
            return
        width = max(self._size(label, font)[0] for _, label in entries) + 34
        for i, (color, label) in enumerate(entries):
            y = top + 12 + 16 * i
            self._key(right - width, y, color, patches)
            self.text((right - width + 26, y), label, 11)

    def _key(self, x: float, y: float, color: str, patch: bool) -> None:
        if patch:
            self.draw.rectangle((round(x), round(y - 5), round(x + 20), round(y + 5)), fill=color)
        else:
            self.draw.line((round(x), round(y), round(x + 20), round(y)), fill=color, width=2)

    def save(self, path: Path) -> Path:
        """Frame, ticks and labels over the data; then the PNG, atomically."""
        from curate.io.write import replacing

        left, top, right, bottom = self.box
        for v, label in self.xticks:
            x = round(self.px(v, self.ylim[0])[0])
            self.draw.line((x, bottom, x, bottom + _TICK), fill=_INK)
            self.text((x, bottom + _TICK + 3), label, 12, "mt")
        for v, label in self.yticks:
            y = round(self.px(self.xlim[0], v)[1])
            self.draw.line((left - _TICK, y, left, y), fill=_INK)
            self.text((left - _TICK - 4, y), label, 12, "rm")
        self.draw.rectangle((left, top, right, bottom), outline=_INK)
        self.text(((left + right) / 2, _PAD), self.title, 14, "mt")
        label_y = bottom + _TICK + 6 + self._size("0", _font(12))[1] + 6
        self.text(((left + right) / 2, label_y), self.xlabel, 13, "mt")
        if self.ylabel:
            self._vertical_text((_PAD, (top + bottom) / 2), self.ylabel, 13)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            self.image.save(tmp, format="PNG")
        return path

    def _vertical_text(self, xy: tuple[float, float], text: str, size: int) -> None:
        """Text turned a quarter left, its left edge at ``xy[0]``, centred on ``xy[1]``."""
        from PIL import Image, ImageDraw

        font = _font(size)
        x0, y0, x1, y1 = self.draw.textbbox((0, 0), text, font=font)
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(mask).text((-x0, -y0), text, font=font, fill=255)
        mask = mask.rotate(90, expand=True)
        x, y = round(xy[0]), round(xy[1] - mask.height / 2)
        self.image.paste(_INK, (x, y, x + mask.width, y + mask.height), mask)


def _step(ticks: list[float]) -> float:
    return ticks[1] - ticks[0] if len(ticks) > 1 else 1.0


def _margin(lo: float, hi: float, share: float = 0.05) -> tuple[float, float]:
    """Data limits with a margin on each side (matplotlib's 5%), never empty."""
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * share
    return lo - pad, hi + pad


def length_histogram(lengths: Mapping[str, Sequence[int]], path: Path, *,
                     title: str = "Thinking length per source", xlabel: str = "thinking characters") -> Path:
    """One step histogram per group (source or domain) on shared bins, so the shapes compare."""
    groups = {k: np.asarray(v, dtype=float) for k, v in sorted(lengths.items()) if len(v)}
    if not groups:
        chart = _Chart(_SIZE, title=title, xlabel=xlabel, ylabel="rows", xlim=(0, 1), ylim=(0, 1))
        chart.text(chart.px(0.5, 0.5), "no rows", 13, "mm")
        return chart.save(path)
    every = np.concatenate(list(groups.values()))
    edges = np.histogram_bin_edges(every, bins=min(30, max(5, int(np.sqrt(every.size)))))
    counts = {name: np.histogram(values, bins=edges)[0] for name, values in groups.items()}
    peak = max(int(c.max()) for c in counts.values())
    # the key sits above the highest bar: the y range grows by the key's share of the height
    key_share = min(0.6, (16 * len(groups) + 20) / (_SIZE[1] - 90))
    chart = _Chart(_SIZE, title=title, xlabel=xlabel, ylabel="rows", xlim=_margin(edges[0], edges[-1]),
                   ylim=(0, max(1, peak) * 1.05 / (1 - key_share)))
    entries = []
    for (name, values), color in zip(groups.items(), _cycle(len(groups))):
        chart.outline(edges, counts[name], color)
        entries.append((color, f"{name} (n={values.size}, median {int(np.median(values)):,})"))
    chart.legend(entries)
    return chart.save(path)


def _cycle(n: int) -> list[str]:
    return [_CYCLE[i % len(_CYCLE)] for i in range(n)]


def funnel(stages: Sequence[Mapping], path: Path, *, title: str = "Rows kept and rejected per step") -> Path:
    """Horizontal bars, one per stage (read first, at the top): kept in blue, rejected in red."""
    height = round(max(2.0, 0.45 * len(stages) + 1.2) * 110)
    kept = [float(s["kept"]) for s in stages]
    rejected = [float(s["rejected"]) for s in stages]
    top = max(1.0, max((k + r for k, r in zip(kept, rejected)), default=0.0)) * 1.45
    n = len(stages)
    names = [(n - 1 - i, f"{s['step']}: {s['name']}") for i, s in enumerate(stages)]
    chart = _Chart((_SIZE[0], height), title=title, xlabel="rows", xlim=(0, top), ylim=(-0.6, n - 0.4),
                   ynames=names, below=30, xinteger=True)
    for (y, _), k, r in zip(names, kept, rejected):
        if k:
            chart.rect(0, k, y - 0.4, y + 0.4, _BLUE)
        if r:
            chart.rect(k, k + r, y - 0.4, y + 0.4, _RED)
        x, yp = chart.px(k + r, y)
        chart.text((x + 6, yp), f"{int(k):,} kept" + (f", {int(r):,} rejected" if r else ""), 11)
    chart.legend([(_BLUE, "kept"), (_RED, "rejected")], patches=True)
    return chart.save(path)


def value_histogram(values: Sequence[float], path: Path, *, title: str, xlabel: str) -> Path:
    """A plain histogram (difficulty pass rates and other numeric annotations)."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    data = data[np.isfinite(data)]
    if not data.size:
        chart = _Chart(_SIZE, title=title, xlabel=xlabel, ylabel="rows", xlim=(0, 1), ylim=(0, 1))
        return chart.save(path)
    counts, edges = np.histogram(data, bins=min(20, max(5, int(np.sqrt(data.size)))))
    chart = _Chart(_SIZE, title=title, xlabel=xlabel, ylabel="rows", xlim=_margin(edges[0], edges[-1]),
                   ylim=(0, max(1, int(counts.max())) * 1.05))
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        if c:
            chart.rect(lo, hi, 0, float(c), _BLUE, edge="white")
    return chart.save(path)


def variant_bars(values: Mapping[str, float], path: Path, *, title: str, xlabel: str) -> Path:
    """One bar per config (variant comparison of a validation metric), its value at its end."""
    names = list(values)
    height = round(max(2.0, 0.3 * len(names) + 1.2) * 110)
    lo = min(0.0, *values.values()) if values else 0.0
    hi = max(0.0, *values.values()) if values else 1.0
    xlim = (lo * 1.05, (hi if hi > lo else lo + 1) * 1.15)
    ys = [(len(names) - 1 - i, name) for i, name in enumerate(names)]
    chart = _Chart((_SIZE[0], height), title=title, xlabel=xlabel, xlim=xlim, ylim=(-0.6, len(names) - 0.4),
                   ynames=ys)
    for y, name in ys:
        chart.rect(0, values[name], y - 0.4, y + 0.4, _BLUE)
        x, yp = chart.px(max(0.0, values[name]), y)
        chart.text((x + 6, yp), f"{values[name]:.3g}", 11)
    return chart.save(path)
