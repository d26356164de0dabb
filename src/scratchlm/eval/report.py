"""Results as people read them: an aligned table, a JSON report written atomically, a PNG plot of a series.

Plain helpers shared by the eval commands; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scratchlm.fs import atomic_path, atomic_write_text


def fmt(value: Any) -> str:
    """Numbers the way a results table shows them: 4 significant decimals, integers as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table with a dashed rule under the header."""
    cells = [list(header)] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Atomically (temp file + rename): a crash mid-write never leaves a half report."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n", what="report file")


def _axes() -> tuple[Any, Any]:
    """A new (figure, axes) from matplotlib's file-only backend (imported here: only plots need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4))


def _save(fig: Any, ax: Any, path: str | Path, xlabel: str, title: str) -> None:
    """Label, title, and write the figure as PNG atomically, then free it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path, what="plot") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_series(path: str | Path, x: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str,
                title: str = "") -> None:
    """One line per series against x (e.g. perplexity per checkpoint step), saved as PNG."""
    fig, ax = _axes()
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", label=name)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, ax, path, xlabel, title)


def plot_histogram(path: str | Path, values: Sequence[float], bins: Sequence[float], xlabel: str,
                   title: str = "") -> None:
    """A histogram (e.g. of judge scores), saved as PNG."""
    fig, ax = _axes()
    ax.hist(list(values), bins=list(bins), edgecolor="black")
    ax.set_ylabel("items")
    _save(fig, ax, path, xlabel, title)
