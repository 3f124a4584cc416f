"""HardnessHistogram: is the loss spent on easy or on hard samples? Histograms of p_t, per epoch and stage."""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lossplug.callbacks._accumulate import CATEGORIES, Array, HardnessBins, Layout, Observed, observed
from lossplug.callbacks._base import LossStatisticsCallback, Stage, StageReport, console, share, stage_order
from lossplug.callbacks._tensorboard import Histogram
from lossplug.output import LossOutput
from lossplug.shared_checks import check_number, check_positive_int

_DRAWING_INTERVAL_FACTOR = 50.0
"""Without ``plot_every_n_epochs``, the PNG is redrawn when 50 times the last drawing's duration has
passed since it, so that drawing takes at most about 2% of the run."""
_FIRST_DRAWING_S = 1.0
"""What the first drawing is assumed to take (matplotlib's import included)."""
_FINAL_DRAWING_DELAY_S = 0.2
"""The drawing at the end of a run starts this much later, once the trainer has closed its loggers
and checkpoints: a drawing thread holds the interpreter for several milliseconds at a time, and
would otherwise stretch the trainer's own teardown."""


class GroupHistogram(NamedTuple):
    """One epoch's histogram of one stage and group, as drawn and logged."""

    counts: list[float]
    loss_sums: list[float]
    nan_count: float
    nan_loss: float
    category_counts: list[float]
    category_losses: list[float]

    @property
    def total_count(self) -> float:
        return sum(self.counts) + self.nan_count

    @property
    def total_loss(self) -> float:
        """The loss of the group; NaN losses (of diverged samples) are left out of it."""
        return math.fsum(value for value in (*self.loss_sums, self.nan_loss) if not math.isnan(value))


class HardnessHistogram(LossStatisticsCallback):
    r"""Per epoch and stage: the histogram of p_t, the probability the model gives the true class,
    counted in samples and weighted by loss.

    Lin et al. (2017) introduced focal loss because with cross-entropy the many easy samples
    (p_t near 1) together carry much of the loss; focal loss moves it to the hard ones. This
    callback shows where a run stands: the share of samples and the share of the loss in each p_t
    bin, and the easy / medium / hard fractions:

    .. math::
        \text{hard}: p_t < \text{hard\_threshold}, \qquad
        \text{medium}: \text{hard\_threshold} \le p_t < \text{easy\_threshold}, \qquad
        \text{easy}: p_t \ge \text{easy\_threshold}

    The ``bins`` bins split ``[0, 1]`` evenly; each is closed on the left and the last one also on
    the right, so that p_t = 1 falls into it. p_t that is NaN (a diverged model) is counted in its
    own row and reported, never dropped. For binary and multi-label losses every element is a
    sample; the groups ``positive`` (target > 0.5) and ``negative`` (target <= 0.5) are reported
    besides ``all``. A :class:`~lossplug.losses.WeightedSum` is binned by the p_t of its first term
    that has one, weighted by the total loss.

    The model must use :class:`~lossplug.mixin.LossMixin` and compute its loss with
    ``self.compute_loss(output, target)``; the counts and loss sums are accumulated on the device
    in float64 without a host-device synchronization per step, summed over processes at the end of
    the epoch, and shares are formed after that. Samples that a ``DistributedSampler`` repeats to
    even out the processes are counted again (at most ``processes - 1`` per epoch).

    Output, at the end of every epoch of each stage in ``stages``:

    * ``hardness_histogram.csv`` in the run's log directory:
      ``epoch, stage, group, bin_low, bin_high, count, loss_sum, loss_share``, one row per bin and
      one more with ``bin_low`` and ``bin_high`` ``nan`` for NaN p_t. ``loss_share`` is the bin's
      share of the group's loss. The counts of a group sum to its number of non-ignored samples.
    * ``hardness_histogram.png`` beside it: the share of samples and the share of loss per bin, one
      line per epoch, for every stage and group.
    * Scalars in every logger: ``hardness/{stage}/{group}/{easy,medium,hard}_fraction`` (of the
      samples), ``.../{easy,medium,hard}_loss_share`` and ``.../nan_count``; with a
      :class:`~lightning.pytorch.loggers.TensorBoardLogger`, also the histograms
      ``hardness/{stage}/{group}/p_t`` (samples) and ``.../p_t_loss`` (loss).
    * One line per epoch in the console (rank zero), when ``verbose``: for each stage, the easy /
      medium / hard shares of the samples and of the loss, and the count of NaN p_t.

    Args:
        bins: Number of p_t bins, >= 1.
        easy_threshold: p_t at or above this is easy; in ``[0, 1]``.
        hard_threshold: p_t below this is hard; in ``[0, easy_threshold]``.
        stages: Stages to observe: ``"train"``, ``"validate"``, ``"test"``.
        log_scalars: Log the fractions (and TensorBoard histograms) to the trainer's loggers.
        plot: Draw the PNG.
        plot_every_n_epochs: Redraw the PNG every this many epochs, and when the run ends. ``None``
            redraws it as often as keeps drawing (a few tenths of a second each time) under about 2%
            of the run's time, and when the run ends.
        dirpath: Directory of the CSV and the PNG; ``None`` is the run's log directory.
        verbose: Print the one-line summary at the end of each epoch.

    Example:
        >>> HardnessHistogram(bins=20, easy_threshold=0.8)
        HardnessHistogram(bins=20, easy_threshold=0.8, hard_threshold=0.5, stages=['train', 'validate'])
    """

    csv_name = "hardness_histogram.csv"
    png_name = "hardness_histogram.png"
    csv_header = ("epoch", "stage", "group", "bin_low", "bin_high", "count", "loss_sum", "loss_share")

    def __init__(
        self,
        bins: int = 10,
        easy_threshold: float = 0.9,
        hard_threshold: float = 0.5,
        stages: Sequence[Stage] = ("train", "validate"),
        log_scalars: bool = True,
        plot: bool = True,
        plot_every_n_epochs: int | None = None,
        dirpath: str | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__(stages, dirpath, verbose, log_scalars)
        self.bins = check_positive_int("bins", bins)
        self.easy_threshold = check_number("easy_threshold", easy_threshold, 0.0, 1.0)
        self.hard_threshold = check_number(
            "hard_threshold",
            hard_threshold,
            0.0,
            self.easy_threshold,
            high_text=f"easy_threshold={self.easy_threshold:g}",
        )
        self.plot = bool(plot)
        self.plot_every_n_epochs = (
            None if plot_every_n_epochs is None else check_positive_int("plot_every_n_epochs", plot_every_n_epochs)
        )
        self._bins = HardnessBins(self.bins, self.hard_threshold, self.easy_threshold)
        self.edges = self._bins.edges
        self._history: dict[tuple[str, str], dict[int, GroupHistogram]] = {}
        self._plot_pending = False
        self._last_drawing: tuple[float, float] | None = None  # (when it ended, how long it took)
        self._started = time.monotonic()
        self._drawing: threading.Thread | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bins={self.bins}, easy_threshold={self.easy_threshold:g}, "
            f"hard_threshold={self.hard_threshold:g}, stages={list(self.stages)})"
        )

    @property
    def png_path(self) -> str | None:
        """The PNG this callback draws; None before the run's log directory is known."""
        return None if self.log_dir is None else os.path.join(self.log_dir, self.png_name)

    @property
    def history(self) -> dict[tuple[str, str], dict[int, GroupHistogram]]:
        """Every finished epoch's histograms on rank zero: ``{(stage, group): {epoch: histogram}}``."""
        return self._history

    # -- accumulation ---------------------------------------------------------------------------------
    def _check_output(self, output: LossOutput) -> None:
        if output.p_t is None:
            raise self._no_p_t()

    def _no_p_t(self) -> ValueError:
        return ValueError(
            f"{type(self).__name__} bins samples by p_t, but the model's loss gives none (center loss has no class "
            "probabilities). Combine it with a classification loss in `lossplug.losses.WeightedSum`, or leave "
            "HardnessHistogram out of `trainer.callbacks`."
        )

    def _table_shape(self, layout: Layout) -> tuple[int, int]:
        return len(self._bins.groups(layout.task)) * self._bins.rows_per_group, 2

    def _observed(self, outputs: list[LossOutput], on_host: bool) -> Observed:
        return observed(outputs, with_terms=False, on_host=on_host)

    def _increment(self, batch: Observed, dtype: torch.dtype) -> tuple[Array | None, Array]:
        # every output has p_t: the first is checked (`_check_output`), the others match its layout
        return self._bins.increment(batch, dtype)

    # -- the end of an epoch ------------------------------------------------------------------------------
    def _epoch_finished(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        epoch: int,
        step: int,
        layout: Layout,
        table: list[list[float]],
    ) -> StageReport:
        rows: list[Sequence[Any]] = []
        histograms: dict[str, GroupHistogram] = {}
        size = self._bins.rows_per_group
        for number, group in enumerate(self._bins.groups(layout.task)):
            per_bin, nan, per_category = self._bins.split(table[number * size : (number + 1) * size])
            histogram = GroupHistogram(
                counts=[count for count, _ in per_bin],
                loss_sums=[loss for _, loss in per_bin],
                nan_count=nan[0],
                nan_loss=nan[1],
                category_counts=[count for count, _ in per_category],
                category_losses=[loss for _, loss in per_category],
            )
            histograms[group] = histogram
            self._history.setdefault((stage, group), {})[epoch] = histogram
            total_loss = histogram.total_loss
            for low, high, count, loss_sum in zip(
                self.edges[:-1], self.edges[1:], histogram.counts, histogram.loss_sums, strict=True
            ):
                rows.append((epoch, stage, group, low, high, int(count), loss_sum, share(loss_sum, total_loss)))
            nan_loss = histogram.nan_loss
            rows.append(
                (
                    epoch,
                    stage,
                    group,
                    math.nan,
                    math.nan,
                    int(histogram.nan_count),
                    nan_loss,
                    share(nan_loss, total_loss),
                )
            )
        self._plot_pending = True
        fractions = {group: self._fractions(histogram) for group, histogram in histograms.items()}
        metrics = {
            f"hardness/{stage}/{group}/{name}": value
            for group, values in fractions.items()
            for name, value in values.items()
        }
        drawn = [
            drawing
            for group, histogram in histograms.items()
            for drawing in (
                Histogram(f"hardness/{stage}/{group}/p_t", self.edges, histogram.counts),
                Histogram(f"hardness/{stage}/{group}/p_t_loss", self.edges, histogram.loss_sums),
            )
        ]
        return StageReport(stage, epoch, step, rows, metrics, drawn, summary=fractions["all"])

    def _show(self, trainer: pl.Trainer, reports: list[StageReport]) -> None:
        if self.verbose:
            for epoch, of_epoch in itertools.groupby(reports, key=lambda report: report.epoch):
                self._print(epoch, [(report.stage, report.summary) for report in of_epoch])
        if self.plot and self._plot_due(reports[-1].epoch):
            self._draw()

    def _fractions(self, histogram: GroupHistogram) -> dict[str, float]:
        total_count, total_loss = histogram.total_count, histogram.total_loss
        values: dict[str, float] = {}
        for category, count, loss in zip(CATEGORIES, histogram.category_counts, histogram.category_losses, strict=True):
            values[f"{category}_fraction"] = share(count, total_count)
            values[f"{category}_loss_share"] = share(loss, total_loss)
        values["nan_count"] = histogram.nan_count
        return values

    def _print(self, epoch: int, stages: list[tuple[str, dict[str, float]]]) -> None:
        """One line for the epoch: per stage, the easy / medium / hard shares of samples and of the loss.

        ``stages``: each stage's :meth:`_fractions` of its group ``all``.
        """
        order = tuple(reversed(CATEGORIES))
        parts = []
        for stage, values in sorted(stages, key=lambda item: stage_order(item[0])):
            samples = " / ".join(f"{100 * values[f'{category}_fraction']:.1f}" for category in order)
            loss = " / ".join(f"{100 * values[f'{category}_loss_share']:.1f}" for category in order)
            parts.append(f"{stage}: samples {samples} %, loss {loss} %")
        nan = sum(int(values["nan_count"]) for _, values in stages)
        line = (
            f"Hardness · epoch {epoch} · easy / medium / hard (p_t ≥ {self.easy_threshold:g}, < "
            f"{self.hard_threshold:g}) · " + " · ".join(parts) + f" · NaN p_t: {nan}"
        )
        if nan:
            console().print(line, highlight=False, soft_wrap=True, style="bold red")
        else:  # plain text: rich's rendering of a line costs more than the epoch's statistics
            print(line, file=console().file)

    # -- the plot ---------------------------------------------------------------------------------------
    def _plot_due(self, epoch: int) -> bool:
        if self.plot_every_n_epochs is not None:
            return (epoch + 1) % self.plot_every_n_epochs == 0
        if self._last_drawing is None:
            # the first drawing (importing matplotlib included) waits until the run has trained a while
            started, took = self._started, _FIRST_DRAWING_S
        else:
            started, took = self._last_drawing
        return time.monotonic() - started >= took * _DRAWING_INTERVAL_FACTOR

    def _draw(self, delay: float = 0.0) -> None:
        """Draw the PNG on a background thread, from a snapshot of the history, after ``delay`` seconds.

        Drawing takes about a second (matplotlib's import included): off the training thread, it
        overlaps with training instead of adding to it. The thread is not a daemon, so the program
        waits for the PNG before it exits; :meth:`wait_for_plot` waits for it explicitly.
        """
        path = self.png_path
        if path is None or not self._history:
            return
        if self._drawing is not None and self._drawing.is_alive():
            return  # still drawing the previous epoch: this one stays pending
        snapshot = {key: dict(epochs) for key, epochs in self._history.items()}
        self._plot_pending = False
        self._drawing = threading.Thread(
            target=self._draw_snapshot, args=(snapshot, path, delay), name="lossplug-hardness-plot"
        )
        self._drawing.start()

    def _draw_snapshot(
        self, history: dict[tuple[str, str], dict[int, GroupHistogram]], path: str, delay: float
    ) -> None:
        time.sleep(delay)
        from lossplug.callbacks._plot import draw_hardness

        start = time.monotonic()
        draw_hardness(history, self.edges, self.hard_threshold, self.easy_threshold, path)
        end = time.monotonic()
        self._last_drawing = (end, end - start)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_drawing"] = None  # a thread does not pickle (ddp_spawn sends callbacks to new processes)
        return state

    def wait_for_plot(self, timeout: float | None = None) -> None:
        """Wait until the PNG being drawn (if any) is on disk."""
        if self._drawing is not None:
            self._drawing.join(timeout)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._started = time.monotonic()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self.plot and self._plot_pending and trainer.is_global_zero:
            self.wait_for_plot()  # the last drawing must show every epoch
            self._draw(delay=_FINAL_DRAWING_DELAY_S)

    def _new_run(self) -> None:
        self._history.clear()
        self._plot_pending = False

    def _rows_restored(self, rows: list[dict[str, str]]) -> None:
        self._history.clear()
        collected: dict[tuple[str, str, int], dict[str, list[float]]] = {}
        for row in rows:
            key = (row["stage"], row["group"], int(row["epoch"]))
            entry = collected.setdefault(key, {"counts": [], "loss_sums": [], "nan": [0.0, 0.0]})
            if math.isnan(float(row["bin_low"])):
                entry["nan"] = [float(row["count"]), float(row["loss_sum"])]
            else:
                entry["counts"].append(float(row["count"]))
                entry["loss_sums"].append(float(row["loss_sum"]))
        for (stage, group, epoch), entry in collected.items():
            if len(entry["counts"]) != self.bins:
                continue  # written with another number of bins: not drawn
            # the categories are not in the CSV; the plot does not need them
            nan_count, nan_loss = entry["nan"]
            histogram = GroupHistogram(entry["counts"], entry["loss_sums"], nan_count, nan_loss, [], [])
            self._history.setdefault((stage, group), {})[epoch] = histogram
