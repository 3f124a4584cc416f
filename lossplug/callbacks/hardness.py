"""HardnessHistogram: is the loss spent on easy or on hard samples? Histograms of p_t, per epoch and stage."""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import lightning.pytorch as pl
import torch
from rich import get_console
from torch import Tensor
from typing_extensions import override

from lossplug.callbacks.base import EpochReport, Histogram, LossDiagnostics, LossLayout, ObservedBatch, Stage, share
from lossplug.shared_checks import check_number, check_positive_int

CATEGORIES = ("hard", "medium", "easy")  # by increasing p_t


class GroupHistogram(NamedTuple):
    """One epoch's histogram of one stage and group, as written, logged and drawn."""

    counts: list[float]
    loss_sums: list[float]
    nan_count: float
    nan_loss: float
    category_counts: list[float]  # hard, medium, easy
    category_losses: list[float]


class HardnessHistogram(LossDiagnostics):
    r"""Per epoch and stage: the histogram of p_t, the probability the model gives the true class, in samples
    and weighted by loss. With cross-entropy the many easy samples (p_t near 1) carry much of the loss;
    focal loss (Lin et al., 2017) moves it to the hard ones.

    The ``bins`` even bins of ``[0, 1]`` are closed on the left (the last one on both sides; p_t is
    compared at its own precision, float32 at least), NaN p_t has a row of its own; the categories:

    .. math::
        \text{hard}: p_t < \text{hard\_threshold}, \quad
        \text{medium}: \text{hard\_threshold} \le p_t < \text{easy\_threshold}, \quad
        \text{easy}: p_t \ge \text{easy\_threshold}

    Binary and multi-label losses count every element, in the groups ``all``, ``positive`` (target
    > 0.5) and ``negative``; multiclass losses in ``all``. Output per epoch of each stage in ``stages``:

    * ``hardness_histogram.csv`` in the run's log directory: ``epoch, stage, group, bin_low, bin_high,
      count, loss_sum, loss_share`` (of the group's loss), a row per bin and one (``nan`` bounds) for NaN p_t.
    * ``hardness_histogram.png`` beside it, a line per epoch: drawn when the run ends (on a background
      thread: :meth:`wait_for_plot`) or stops on an exception, and every ``plot_interval_s`` meanwhile.
    * In every logger ``hardness/{stage}/{group}/{easy,medium,hard}_fraction`` (of the samples),
      ``.../{easy,medium,hard}_loss_share`` and ``.../nan_count``; TensorBoard also gets the
      histograms ``hardness/{stage}/{group}/p_t`` and ``.../p_t_loss``.
    * A console line per epoch, when ``verbose``: the easy / medium / hard shares, and NaN p_t.

    Args:
        bins: Number of p_t bins, >= 1.
        easy_threshold: p_t at or above this is easy; in ``[0, 1]``.
        hard_threshold: p_t below this is hard; in ``[0, easy_threshold]``.
        stages: Stages to observe: ``"train"``, ``"validate"``, ``"test"``.
        log_scalars: Log the fractions (and TensorBoard histograms) to the trainer's loggers.
        plot: Draw the PNG.
        plot_interval_s: Seconds between two drawings during the run (the first one after as long).
        dirpath: Directory of the CSV and the PNG; ``None`` is the run's log directory.
        verbose: Print the summary line.

    Example:
        >>> HardnessHistogram(bins=20, easy_threshold=0.8)
        HardnessHistogram(bins=20, easy_threshold=0.8, hard_threshold=0.5, stages=['train', 'validate'])
    """

    csv_name = "hardness_histogram.csv"
    csv_header = ("group", "bin_low", "bin_high", "count", "loss_sum", "loss_share")
    png_name = "hardness_histogram.png"

    def __init__(
        self,
        bins: int = 10,
        easy_threshold: float = 0.9,
        hard_threshold: float = 0.5,
        stages: Sequence[Stage] = ("train", "validate"),
        log_scalars: bool = True,
        plot: bool = True,
        plot_interval_s: float = 120.0,
        dirpath: str | os.PathLike[str] | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__(stages=stages, dirpath=dirpath, verbose=verbose, log_scalars=log_scalars)
        self.bins = check_positive_int("bins", bins)
        self.easy_threshold = check_number("easy_threshold", easy_threshold, 0.0, 1.0)
        self.hard_threshold = check_number(
            "hard_threshold", hard_threshold, 0.0, self.easy_threshold, high_text=f"easy_threshold={easy_threshold:g}"
        )
        self.plot = bool(plot)
        self.plot_interval_s = check_number("plot_interval_s", plot_interval_s, 0.0)
        self.edges = [index / self.bins for index in range(self.bins + 1)]
        self.history: dict[tuple[str, str], dict[int, GroupHistogram]] = {}
        """Every finished epoch's histograms (rank zero): ``{(stage, group): {epoch: histogram}}``."""
        self._drawn_at = 0.0
        self._pending = False  # epochs finished since the last drawing
        self._drawing: threading.Thread | None = None

    def __repr__(self) -> str:
        thresholds = f"easy_threshold={self.easy_threshold:g}, hard_threshold={self.hard_threshold:g}"
        return f"{type(self).__name__}(bins={self.bins}, {thresholds}, stages={list(self.stages)})"

    @property
    def png_path(self) -> str | None:
        """The PNG this callback draws; None before ``setup``."""
        return None if self.csv_path is None else os.path.join(os.path.dirname(self.csv_path), self.png_name)

    @override
    def table_shape(self, layout: LossLayout) -> tuple[int, int]:
        if not layout.has_p_t:
            raise ValueError(
                f"{type(self).__name__} bins samples by p_t, but the model's loss gives none (center loss has no class "
                "probabilities). Combine it with a classification loss in `lossplug.losses.WeightedSum`, or leave "
                "HardnessHistogram out of `trainer.callbacks`."
            )
        return len(_groups(layout)) * (self.bins + 4), 2  # per group: bins, NaN, 3 categories; count and loss

    @override
    def increment(self, batch: ObservedBatch) -> tuple[Tensor, Tensor]:
        p_t = cast(Tensor, batch.p_t)  # there: `table_shape` refuses a loss without it
        p_t = p_t if p_t.dtype == torch.float64 else p_t.float()
        nan = p_t.isnan()
        inner = torch.tensor(self.edges[1:-1], dtype=p_t.dtype, device=p_t.device)
        category = (p_t >= self.hard_threshold).long() + (p_t >= self.easy_threshold).long()
        # each element adds to its bin (a NaN p_t: to the NaN row) and to its category (a NaN p_t: to none)
        bin_row = torch.where(nan, self.bins, torch.bucketize(p_t, inner, right=True))
        rows = torch.cat([bin_row, self.bins + 1 + category])
        values = torch.stack([batch.valid, batch.loss], dim=1)
        values = torch.cat([values, torch.where(nan.unsqueeze(1), 0.0, values)])
        if batch.positive is not None:  # and again to the group positive or negative
            rows = torch.cat([rows, rows + torch.where(batch.positive, 1, 2).repeat(2) * (self.bins + 4)])
            values = torch.cat([values, values])
        return rows, values

    @override
    def report(self, stage: str, epoch: int, table: Tensor, layout: LossLayout) -> EpochReport:
        rows: list[Sequence[Any]] = []
        metrics: dict[str, float] = {}
        histograms: list[Histogram] = []
        bins, edges, bounds = self.bins, self.edges, [*itertools.pairwise(self.edges), (math.nan, math.nan)]
        for number, group in enumerate(_groups(layout)):
            count, loss = table[number * (bins + 4) : (number + 1) * (bins + 4)].T.tolist()
            self.history.setdefault((stage, group), {})[epoch] = GroupHistogram(
                count[:bins], loss[:bins], count[bins], loss[bins], count[bins + 1 :], loss[bins + 1 :]
            )
            self._pending = True
            total = math.fsum(value for value in loss[: bins + 1] if not math.isnan(value))  # NaN losses left out
            kept = zip(bounds, count[: bins + 1], loss[: bins + 1], strict=True)
            rows += [(group, *bound, int(n), part, share(part, total)) for bound, n, part in kept]
            name = f"hardness/{stage}/{group}"
            for category, n, part in zip(CATEGORIES, count[bins + 1 :], loss[bins + 1 :], strict=True):
                metrics[f"{name}/{category}_fraction"] = share(n, math.fsum(count[: bins + 1]))
                metrics[f"{name}/{category}_loss_share"] = share(part, total)
            metrics[f"{name}/nan_count"] = count[bins]
            histograms += [Histogram(f"{name}/p_t", edges, count[:bins])]
            histograms += [Histogram(f"{name}/p_t_loss", edges, loss[:bins])]
        summary = {key.rsplit("/", 1)[1]: value for key, value in metrics.items() if f"{stage}/all/" in key}
        return EpochReport(rows, metrics, histograms, summary)

    @override
    def show(self, epoch: int, reports: list[tuple[str, EpochReport]]) -> None:
        if self.verbose:
            easy, hard = f"{self.easy_threshold:g}", f"{self.hard_threshold:g}"
            line = f"Hardness · epoch {epoch} · easy / medium / hard (p_t ≥ {easy}, < {hard})"
            for stage, report in reports:
                samples, loss = (
                    " / ".join(f"{100 * report.summary[f'{name}_{what}']:.1f}" for name in CATEGORIES[::-1])
                    for what in ("fraction", "loss_share")
                )
                line += f" · {stage}: samples {samples} %, loss {loss} %"
            nan = sum(int(report.summary["nan_count"]) for _, report in reports)
            if nan:
                get_console().print(f"{line} · NaN p_t: {nan}", highlight=False, soft_wrap=True, style="bold red")
            else:  # plain text: the line has nothing for rich to lay out
                print(f"{line} · NaN p_t: 0", file=get_console().file)
        if self.plot and self._pending and time.monotonic() - self._drawn_at >= self.plot_interval_s:
            self._draw()  # on the training thread: rare enough to cost little

    def _draw(self, background: bool = False) -> None:
        """Draw the finished epochs into the PNG (rank zero, which has them: ``_pending`` is set)."""
        from lossplug.callbacks._plot import draw_hardness

        self.wait_for_plot()  # one drawing at a time
        self._drawn_at, self._pending = time.monotonic(), False
        snapshot = {key: dict(epochs) for key, epochs in self.history.items()}
        arguments = (snapshot, self.edges, self.hard_threshold, self.easy_threshold, str(self.png_path))
        if background:  # not a daemon: the program waits for the PNG, which is drawn while it goes on
            self._drawing = threading.Thread(target=draw_hardness, args=arguments, name="lossplug-hardness-plot")
            self._drawing.start()
        else:
            draw_hardness(*arguments)

    def wait_for_plot(self, timeout: float | None = None) -> None:
        """Wait until the PNG being drawn on the background thread (if any) is on disk."""
        if self._drawing is not None:
            self._drawing.join(timeout)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_drawing": None}  # nor does a thread

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        csv_path = self.csv_path
        super().setup(trainer, pl_module, stage)
        if self.csv_path != csv_path:
            self.history = {}  # a new run's folder: its own epochs only
        self._drawn_at = time.monotonic()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if self.plot and self._pending:
            self._draw()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self.plot and self._pending:
            self._draw(background=True)  # the training thread is done: the drawing overlaps the program's exit

    @override
    def state_dict(self) -> dict[str, Any]:
        history = [(*key, epoch, tuple(fields)) for key, of in self.history.items() for epoch, fields in of.items()]
        return {**super().state_dict(), "history": history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.history = {}
        for stage, group, epoch, fields in state_dict.get("history", []):
            self.history.setdefault((stage, group), {})[int(epoch)] = GroupHistogram(*fields)


def _groups(layout: LossLayout) -> tuple[str, ...]:
    return ("all", "positive", "negative") if layout.task == "binary" else ("all",)
