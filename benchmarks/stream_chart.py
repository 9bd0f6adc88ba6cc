"""A grouped horizontal bar chart as SVG text, with no plotting library.

`benchmarks.streams` must draw its chart on any machine, matplotlib or not; a few bars
with labels and values is all it needs, and plain SVG opens in every browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")
_BAR = 14
_GAP = 10
_LABEL_W = 130
_PLOT_W = 480


def bar_chart(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]]) -> str:
    """One group of bars per label, one bar per series, each with its value written."""
    names = list(series)
    top = max([v for values in series.values() for v in values] or [1.0]) or 1.0
    group_h = _BAR * len(names) + _GAP
    height = 60 + group_h * len(labels) + 20 * len(names)
    width = _LABEL_W + _PLOT_W + 80
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="13">{escape(title)}</text>']
    y = 40
    for row, label in enumerate(labels):
        out.append(f'<text x="{_LABEL_W - 6}" y="{y + group_h / 2}" '
                   f'text-anchor="end">{escape(label)}</text>')
        for column, name in enumerate(names):
            value = series[name][row]
            length = max(1.0, value / top * _PLOT_W)
            bar_y = y + column * _BAR
            out.append(f'<rect x="{_LABEL_W}" y="{bar_y}" width="{length:.1f}" '
                       f'height="{_BAR - 2}" fill="{_COLOURS[column % len(_COLOURS)]}"/>')
            out.append(f'<text x="{_LABEL_W + length + 4:.1f}" y="{bar_y + _BAR - 4}">'
                       f'{value:.1f}</text>')
        y += group_h
    for column, name in enumerate(names):
        key_y = y + 10 + column * 20
        out.append(f'<rect x="{_LABEL_W}" y="{key_y}" width="12" height="12" '
                   f'fill="{_COLOURS[column % len(_COLOURS)]}"/>')
        out.append(f'<text x="{_LABEL_W + 18}" y="{key_y + 10}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
