"""The hardness PNG: p_t histograms over epochs, in samples and in loss (matplotlib, imported on first use)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from lossplug.callbacks._accumulate import GROUPS_BINARY
from lossplug.callbacks._base import stage_order

if TYPE_CHECKING:
    from lossplug.callbacks.hardness import GroupHistogram

_GROUP_ORDER = {group: index for index, group in enumerate(GROUPS_BINARY)}
_HARD_COLOUR = "#c0392b"
_EASY_COLOUR = "#1e8449"
_MAX_EPOCHS_DRAWN = 12
"""More lines than this are a tangle: older epochs are thinned out evenly (the first and last are kept)."""


def _shares(values: Sequence[float]) -> list[float]:
    finite = [value if math.isfinite(value) else 0.0 for value in values]
    total = math.fsum(finite)
    return [value / total if total > 0 else 0.0 for value in finite]


def _spread(epochs: Sequence[int], at_most: int) -> list[int]:
    if len(epochs) <= at_most:
        return list(epochs)
    step = (len(epochs) - 1) / (at_most - 1)
    return sorted({epochs[round(index * step)] for index in range(at_most)})


def _hard_and_easy(
    histogram: GroupHistogram, loss: bool, edges: Sequence[float], hard: float, easy: float
) -> tuple[float, float]:
    """Shares of the hard and easy categories; from the bins when the categories are unknown (restored runs)."""
    categories = histogram.category_losses if loss else histogram.category_counts
    if categories:
        shares = _shares(categories)
        return shares[0], shares[-1]
    shares = _shares(histogram.loss_sums if loss else histogram.counts)
    lows = edges[:-1]
    return (
        math.fsum(part for part, low in zip(shares, lows, strict=True) if low < hard),
        math.fsum(part for part, low in zip(shares, lows, strict=True) if low >= easy),
    )


def draw_hardness(
    history: Mapping[tuple[str, str], Mapping[int, GroupHistogram]],
    edges: Sequence[float],
    hard_threshold: float,
    easy_threshold: float,
    path: str,
) -> None:
    """Draw every (stage, group)'s histograms over epochs into ``path``: samples left, loss right."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    panels = sorted(history, key=lambda key: (stage_order(key[0]), key[0], _GROUP_ORDER.get(key[1], len(_GROUP_ORDER))))
    epochs = sorted({epoch for per_epoch in history.values() for epoch in per_epoch})
    first, last = epochs[0], epochs[-1]
    # early epochs light, the latest dark: the history fades behind the current state
    cmap = LinearSegmentedColormap.from_list("fading", colormaps["viridis_r"](np.linspace(0.1, 1.0, 256)))
    colours = ScalarMappable(norm=Normalize(vmin=first, vmax=last if last > first else first + 1), cmap=cmap)
    drawn = set(_spread(epochs, _MAX_EPOCHS_DRAWN))

    # a fixed layout in inches: matplotlib's constrained layout would double the drawing time
    height = 1.5 + 2.8 * len(panels)
    figure = Figure(figsize=(12.5, height), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = 1 - 0.7 / height, 1.0 / height
    figure.subplots_adjust(left=0.065, right=0.895, top=top, bottom=bottom, wspace=0.16, hspace=0.95 / 2.8)
    axes = figure.subplots(len(panels), 2, squeeze=False, sharex=True)
    figure.suptitle(
        "Where the loss comes from: samples and loss by p_t, the probability the model gives the true class",
        fontsize=13,
        fontweight="bold",
        y=1 - 0.18 / height,
    )
    views: tuple[tuple[str, Callable[[GroupHistogram], list[float]]], ...] = (
        ("samples", lambda histogram: histogram.counts),
        ("loss", lambda histogram: histogram.loss_sums),
    )
    bins = len(edges) - 1
    for row, (stage, group) in enumerate(panels):
        per_epoch = history[(stage, group)]
        latest_epoch = max(per_epoch)
        latest = per_epoch[latest_epoch]
        for column, (what, pick) in enumerate(views):
            ax = axes[row][column]
            ax.axvspan(0.0, hard_threshold, color=_HARD_COLOUR, alpha=0.08, linewidth=0)
            ax.axvspan(easy_threshold, 1.0, color=_EASY_COLOUR, alpha=0.08, linewidth=0)
            peak = 0.0
            for epoch in sorted(per_epoch):
                if epoch not in drawn and epoch != latest_epoch:
                    continue
                shares = _shares(pick(per_epoch[epoch]))
                peak = max(peak, *shares)
                colour = cmap((epoch - first) / max(last - first, 1))
                if epoch == latest_epoch:
                    ax.stairs(shares, edges, color=colour, fill=True, alpha=0.15, linewidth=0)
                    ax.stairs(shares, edges, color=colour, linewidth=2.6, zorder=3)
                else:
                    ax.stairs(shares, edges, color=colour, linewidth=1.2, alpha=0.9)
            hard, easy = _hard_and_easy(latest, column == 1, edges, hard_threshold, easy_threshold)
            ax.set_title(f"{stage} · {group} · {what}", fontsize=10.5, loc="left", fontweight="bold")
            summary = f"epoch {latest_epoch}: hard {hard:.0%} · easy {easy:.0%}"
            if latest.nan_count:
                summary += f" · NaN p_t: {int(latest.nan_count)} (not drawn)"
            ax.set_title(summary, fontsize=9.5, loc="right", color=_HARD_COLOUR if latest.nan_count else "#444444")
            ax.set_xlim(0.0, 1.0)
            ax.set_ylim(0.0, max(peak, 1e-9) * 1.12)
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
            ax.set_ylabel(f"share of {what}")
            ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
            ax.set_axisbelow(True)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("p_t (probability the model gives the true class)")
        if bins <= 20:
            ax.set_xticks(list(edges)[:: max(1, bins // 10)])
    handles = [
        Patch(color=_HARD_COLOUR, alpha=0.25, label=f"hard: p_t < {hard_threshold:g}"),
        Patch(color=_EASY_COLOUR, alpha=0.25, label=f"easy: p_t ≥ {easy_threshold:g}"),
    ]
    figure.legend(handles=handles, loc="lower center", ncols=2, frameon=False, fontsize=10)
    bar_height = min(top - bottom, 4.5 / height)
    colourbar_axes = figure.add_axes((0.915, top - bar_height, 0.014, bar_height))
    colourbar = figure.colorbar(colours, cax=colourbar_axes)
    colourbar.set_label("epoch (thick line, filled: latest)", fontsize=9)
    colourbar.locator = MaxNLocator(integer=True)
    colourbar.update_ticks()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".partial.png"
    figure.savefig(partial, facecolor="white")
    os.replace(partial, path)
