"""The hardness PNG: p_t histograms over epochs, in samples and in loss (matplotlib, imported on first use)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lossplug.callbacks.base import STAGE_ORDER

if TYPE_CHECKING:
    from lossplug.callbacks.hardness import GroupHistogram

_HARD, _EASY = "#c0392b", "#1e8449"
_GROUPS = {"all": 0, "positive": 1, "negative": 2}


def _shares(values: Sequence[float]) -> list[float]:
    finite = [value if math.isfinite(value) else 0.0 for value in values]
    total = math.fsum(finite)
    return [value / total if total > 0 else 0.0 for value in finite]


def draw_hardness(
    history: Mapping[tuple[str, str], Mapping[int, GroupHistogram]],
    edges: Sequence[float],
    hard_threshold: float,
    easy_threshold: float,
    path: str,
) -> None:
    """Draw every (stage, group)'s histograms over epochs into ``path``: samples left, loss right."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    panels = sorted(history, key=lambda key: (STAGE_ORDER.get(key[0], 3), key[0], _GROUPS.get(key[1], 3)))
    epochs = sorted({epoch for per_epoch in history.values() for epoch in per_epoch})
    # at most 12 lines per panel, spread evenly (the first and the last kept): more are a tangle
    drawn = {epochs[round(index * (len(epochs) - 1) / 11)] for index in range(12)} if len(epochs) > 12 else set(epochs)
    # early epochs light, the latest dark: the history fades behind the current state
    first, last = epochs[0], epochs[-1]
    norm, cmap = Normalize(first - 0.1 * (last - first + 1), last), colormaps["viridis_r"]
    height = 1.5 + 2.8 * len(panels)  # a fixed layout in inches: constrained layout would double the drawing time
    figure = Figure(figsize=(12.5, height), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = 1 - 0.7 / height, 1.0 / height
    figure.subplots_adjust(left=0.065, right=0.895, top=top, bottom=bottom, wspace=0.16, hspace=0.95 / 2.8)
    axes = figure.subplots(len(panels), 2, squeeze=False, sharex=True)
    title = "Where the loss comes from: samples and loss by p_t, the probability the model gives the true class"
    figure.suptitle(title, fontsize=13, fontweight="bold", y=1 - 0.18 / height)
    for row, (stage, group) in enumerate(panels):
        per_epoch = history[(stage, group)]
        latest = per_epoch[newest := max(per_epoch)]
        for column, (what, field) in enumerate((("samples", "counts"), ("loss", "loss_sums"))):
            ax = axes[row][column]
            ax.axvspan(0.0, hard_threshold, color=_HARD, alpha=0.08, linewidth=0)
            ax.axvspan(easy_threshold, 1.0, color=_EASY, alpha=0.08, linewidth=0)
            peak = 0.0
            for epoch in sorted(epoch for epoch in per_epoch if epoch in drawn or epoch == newest):
                shares = _shares(getattr(per_epoch[epoch], field))
                peak, colour = max(peak, *shares), cmap(norm(epoch))
                if epoch == newest:
                    ax.stairs(shares, edges, color=colour, fill=True, alpha=0.15, linewidth=0)
                thick = epoch == newest
                ax.stairs(shares, edges, color=colour, linewidth=2.6 if thick else 1.2, zorder=3 if thick else 2)
            hard, _, easy = _shares(latest.category_losses if column else latest.category_counts)
            summary = f"epoch {newest}: hard {hard:.0%} · easy {easy:.0%}"
            if latest.nan_count:
                summary += f" · NaN p_t: {int(latest.nan_count)} (not drawn)"
            ax.set_title(f"{stage} · {group} · {what}", fontsize=10.5, loc="left", fontweight="bold")
            ax.set_title(summary, fontsize=9.5, loc="right", color=_HARD if latest.nan_count else "#444444")
            ax.set(xlim=(0.0, 1.0), ylim=(0.0, max(peak, 1e-9) * 1.12), ylabel=f"share of {what}")
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
            ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
            ax.set_axisbelow(True)
            ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("p_t (probability the model gives the true class)")
        if len(edges) <= 21:
            ax.set_xticks(list(edges)[:: max(1, (len(edges) - 1) // 10)])
    labels = f"hard: p_t < {hard_threshold:g}", f"easy: p_t ≥ {easy_threshold:g}"
    handles = [Patch(color=colour, alpha=0.25, label=text) for colour, text in zip((_HARD, _EASY), labels, strict=True)]
    figure.legend(handles=handles, loc="lower center", ncols=2, frameon=False, fontsize=10)
    bar_height = min(top - bottom, 4.5 / height)
    bar = figure.add_axes((0.915, top - bar_height, 0.014, bar_height))
    label = "epoch (thick line, filled: latest)"
    figure.colorbar(ScalarMappable(norm, cmap), cax=bar, ticks=MaxNLocator(integer=True)).set_label(label, fontsize=9)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(partial := path + ".partial.png", facecolor="white")
    os.replace(partial, path)  # a reader never sees half a PNG
