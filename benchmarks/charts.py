"""PNG charts for the harness and the soak, drawn with matplotlib when it is installed.

matplotlib is a benchmark-only dependency (``pip install matplotlib``); without it the
callers print a notice and still write their CSV and JSON. Charts are sized to be
committed: small canvas, low DPI, no embedded fonts.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_DPI = 72


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or None when not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    """Write a small PNG: an adaptive 64-colour palette (Pillow comes with matplotlib)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=_DPI, format="png")
    try:
        from PIL import Image
    except ImportError:
        path.write_bytes(buffer.getvalue())
        return
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=64).save(path, optimize=True)


def available() -> bool:
    """Whether charts can be drawn here."""
    return _pyplot() is not None


# One series: label -> [(concurrency, requests/s, p50 ms, p99 ms), ...]
Series = Mapping[str, Sequence[tuple[int, float, float, float]]]


def latency_chart(panels: Mapping[str, Series], path: Path, title: str) -> bool:
    """Per scenario (a column): p50 and p99 against concurrency, then req/s, per target.

    Returns False when matplotlib is missing (nothing written).
    """
    plt = _pyplot()
    if plt is None or not panels:
        return False
    from matplotlib import ticker
    names = list(panels)
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names) + 0.6, 6.4),
                             squeeze=False)
    colours: dict[str, Any] = {}
    palette = plt.get_cmap("tab10")
    for col, name in enumerate(names):
        lat, thr = axes[0][col], axes[1][col]
        for label, points in panels[name].items():
            if not points:
                continue
            colour = colours.setdefault(label, palette(len(colours) % 10))
            xs = [p[0] for p in points]
            lat.plot(xs, [p[2] for p in points], "-o", color=colour, ms=3, lw=1.2,
                     label=f"{label} p50")
            lat.plot(xs, [p[3] for p in points], "--", color=colour, lw=1.0,
                     label=f"{label} p99")
            thr.plot(xs, [p[1] for p in points], "-o", color=colour, ms=3, lw=1.2, label=label)
        lat.set_title(name, fontsize=9)
        ticks = sorted({p[0] for points in panels[name].values() for p in points})
        for ax in (lat, thr):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.grid(True, which="both", lw=0.3, alpha=0.5)
            ax.tick_params(labelsize=7)
        lat.set_ylabel("latency ms (solid p50, dashed p99)", fontsize=7)
        thr.set_ylabel("2xx requests/s", fontsize=7)
        thr.set_xlabel("concurrent connections", fontsize=7)
    handles = [plt.Line2D([], [], color=c, lw=2) for c in colours.values()]
    fig.legend(handles, list(colours), loc="lower center", ncol=min(len(colours), 6),
               fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    _save(fig, path)
    plt.close(fig)
    return True


def rss_chart(times_s: Sequence[float], rss_mb: Sequence[float], path: Path, title: str,
              marks: Sequence[float] = ()) -> bool:
    """RSS over time, with vertical lines where the soak injected a fault.

    Returns False when matplotlib is missing (nothing written).
    """
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax.plot([t / 60 for t in times_s], rss_mb, "-o", ms=2.5, lw=1.2)
    for mark in marks:
        ax.axvline(mark / 60, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("minutes (dotted: upstream restarted)", fontsize=8)
    ax.set_ylabel("edge RSS, MB", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True
