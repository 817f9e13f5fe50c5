"""Plots for reports, as PNG bytes (matplotlib, imported only when a plot is drawn).

Owns: `sensitivity_png`, `length_histogram_png`, `pareto_png`, `latency_png`. Figures come in,
pictures go out; nothing here measures anything.
"""

from __future__ import annotations

import io
from array import array
from collections.abc import Sequence

SHOWN_LAYERS = 30
"""A chart shows the most sensitive layers; the full list is in the artifact's slimforge.json."""


def _rank_key(figures: dict[str, float]) -> float:
    return figures.get("alone_sqnr_db", figures.get("sqnr_db", float("inf")))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


AXES = {"latency": ("p50_ms", "p50 latency (ms), batch 1"), "size": ("size_mb", "size (MB)")}
"""x of a Pareto chart: the row field and its label."""


def pareto_png(rows: list[dict], front: list[str], axis: str, chosen: str | None = None
               ) -> bytes | None:
    """Judged quality (each row's first quality metric) against latency or size, one point per
    measurement (a row that reuses another's is not drawn twice), the Pareto front joined by a
    line; None with fewer than two points.

    Args:
        rows: result rows (`results.json`): `name`, `kind`, `status`, `accepted`, `quality`
            and the x field.
        front: names on the Pareto front (`search.pareto`).
        axis: `latency` or `size`.
        chosen: the chosen row's name, drawn as a star.
    """
    measured = [r for r in rows if r.get("status") == "measured" and not r.get("same_as")]
    if len(measured) < 2:
        return None
    key, label = AXES[axis]
    metric = next(iter(measured[0]["quality"]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"baseline": ("k", "s"), "peer": ("tab:purple", "D")}
    for row in measured:
        color, marker = styles.get(row["kind"], ("tab:green" if row.get("accepted")
                                                 else "tab:red", "o"))
        if row["name"] == chosen:
            marker = "*"
        x, y = row[key], row["quality"][metric]["value"]
        ax.scatter([x], [y], c=color, marker=marker, s=120 if marker == "*" else 40, zorder=3)
        q = row["quality"][metric]
        if "low" in q:
            ax.vlines(x, q["low"], q["high"], colors=color, linewidth=1, zorder=2)
        ax.annotate(row["name"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    line = sorted((r[key], r["quality"][metric]["value"]) for r in measured if r["name"] in front)
    ax.plot([p[0] for p in line], [p[1] for p in line], "--", color="tab:blue", linewidth=1,
            label="Pareto front")
    ax.set_xlabel(label)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylabel(metric.replace("_", " ") + " (bootstrap interval)")
    ax.set_title(f"quality vs {axis}: green accepted, red rejected, black baseline, "
                 "purple peer", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def latency_png(rows: list[dict]) -> bytes | None:
    """Box plots of every timed latency call per measured row; None without samples."""
    measured = [r for r in rows if r.get("status") == "measured"
                and r.get("bench", {}).get("latency_samples_ms")]
    if not measured:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.35 * len(measured)))
    ax.boxplot([r["bench"]["latency_samples_ms"] for r in measured], orientation="horizontal",
               tick_labels=[r["name"] for r in measured], showfliers=True)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel(f"latency per call (ms): {measured[0]['bench']['latency_shape']}")
    ax.set_title("latency distribution per candidate", fontsize=10)
    return _png(fig)


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
