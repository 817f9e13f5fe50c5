"""Plots for reports, as PNG bytes (matplotlib, imported only when a plot is drawn).

Owns: `sensitivity_png`, `length_histogram_png`. Figures come in, pictures go out; nothing
here measures anything.
"""

from __future__ import annotations

import io
from array import array
from collections.abc import Sequence

SHOWN_LAYERS = 30
"""A chart shows the most sensitive layers; the full list is in the artifact's slimforge.json."""


def _rank_key(figures: dict[str, float]) -> float:
    return figures.get("alone_sqnr_db", figures.get("sqnr_db", float("inf")))


def sensitivity_png(layers: dict[str, dict[str, float]], title: str) -> bytes | None:
    """A horizontal bar chart of per-layer SQNR (dB), most sensitive layer on top.

    Args:
        layers: per-layer figures as in `LoadedModel.layers`: `sqnr_db` (the layer's output
            against its float self) and, where sensitivity was ranked, `alone_sqnr_db` (the
            model's output with only that layer quantized). Ranked by the latter when present.
        title: the chart's title.

    Returns:
        PNG bytes, or None when there is no figure to plot.
    """
    ranked = sorted((item for item in layers.items()
                     if {"sqnr_db", "alone_sqnr_db"} & set(item[1])),
                    key=lambda kv: _rank_key(kv[1]))
    ranked = ranked[:SHOWN_LAYERS]
    if not ranked:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    series = [(key, label) for key, label in (
        ("alone_sqnr_db", "model output, only this layer quantized"),
        ("sqnr_db", "this layer's output vs float"))
        if any(key in figures for _, figures in ranked)]
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * len(ranked)))
    for i, (key, label) in enumerate(series):
        positions = [row + i * height for row in range(len(ranked))]
        values = [figures.get(key, 0.0) for _, figures in ranked]
        ax.barh(positions, values, height=height, label=label)
    ax.set_yticks([row + height * (len(series) - 1) / 2 for row in range(len(ranked))])
    kept = len(series) > 1  # ranked layers without their own SQNR were kept in float
    ax.set_yticklabels([name + (" (kept in float)" if kept and "sqnr_db" not in figures else "")
                        for name, figures in ranked], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB), higher is closer to float")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def length_histogram_png(series: dict[str, Sequence[int]], title: str) -> bytes | None:
    """A histogram of text lengths (characters, log-spaced bins), one outline per named
    series (shares of texts, so datasets of different sizes compare); None without texts."""
    series = {name: lengths for name, lengths in series.items() if len(lengths)}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import pyplot as plt

    arrays = {name: np.maximum(np.frombuffer(memoryview(lengths), dtype=np.uint32)
                               if isinstance(lengths, array) else np.asarray(lengths), 1)
              for name, lengths in series.items()}
    top = max(int(values.max()) for values in arrays.values())
    bins = np.unique(np.geomspace(1, max(top, 2), 40).astype(int))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, values in arrays.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=name,
                weights=np.full(len(values), 1 / len(values)))
    ax.set_xscale("log")
    ax.set_xlabel("characters per text")
    ax.set_ylabel("share of texts")
    if len(arrays) > 1:
        ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
