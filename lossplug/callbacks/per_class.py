"""PerClassLossMonitor: which classes the loss comes from, per epoch and stage."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from rich.box import HEAVY_HEAD
from rich.cells import cell_len
from rich.text import Text
from typing_extensions import override

from lossplug.callbacks._accumulate import Array, Layout, Observed, observed, per_class_increment
from lossplug.callbacks._base import (
    LossStatisticsCallback,
    Stage,
    StageReport,
    class_names_for,
    console,
    share,
    stage_order,
)
from lossplug.output import LossOutput
from lossplug.shared_checks import check_number, check_positive_int

TOTAL = "total"
"""The ``term`` of the rows for the whole loss (a :class:`~lossplug.losses.WeightedSum`'s terms have their names)."""


def _nan_as_largest(value: float) -> float:
    return math.inf if math.isnan(value) else value


class PerClassLossMonitor(LossStatisticsCallback):
    r"""Per epoch and stage: how many samples of each class were seen, their loss, and its share.

    For each class :math:`c`, with :math:`\ell_i` the per-sample loss (class weights included) and
    the sums over the epoch's non-ignored samples on every process:

    .. math::
        \mathrm{count}_c = |\{i : y_i = c\}|, \quad
        \mathrm{loss\_sum}_c = \sum_{i : y_i = c} \ell_i, \quad
        \mathrm{loss\_mean}_c = \frac{\mathrm{loss\_sum}_c}{\mathrm{count}_c}, \quad
        \mathrm{share}_c = \frac{\mathrm{loss\_sum}_c}{\sum_k \mathrm{loss\_sum}_k}

    For binary and multi-label losses the classes are the target columns (dim 1 of the target; a
    plain binary target ``(N,)`` is one class), and every element counts for its column, positive
    or negative. For :class:`~lossplug.losses.WeightedSum`, each term (with its weight applied) is
    reported as well as the total; a term's shares are shares of that term's loss.

    The model must use :class:`~lossplug.mixin.LossMixin` and compute its loss with
    ``self.compute_loss(output, target)``; the callback reads what that call computed, summing it
    on the device in float64 without a host-device synchronization per step, and sums the tables
    of all processes at the end of the epoch. Samples that a ``DistributedSampler`` repeats to give
    every process the same number of batches cannot be told apart from the others and are counted
    again (at most ``processes - 1`` samples per epoch; none when the dataset size is divisible by
    the number of processes).

    Output, at the end of every epoch of each stage in ``stages``:

    * ``per_class_loss.csv`` in the run's log directory, one row per class (every class) and term:
      ``epoch, stage, term, class, count, loss_sum, loss_mean, share``. ``term`` is ``total``, or a
      WeightedSum term's name; ``class`` is the class name when known, else its index;
      ``loss_mean`` and ``share`` are ``nan`` where undefined (no samples, no loss). The epoch's
      rows are on disk when the epoch ends; after a resume, the file goes on from the checkpoint's
      epoch. When validation runs several times per epoch (``val_check_interval`` < 1), each run
      writes its rows under the epoch's number.
    * Scalars in every logger, once per epoch, for the ``top_k`` classes with the largest loss:
      ``per_class/{stage}/share/{class}`` and ``per_class/{stage}/loss_mean/{class}``; for a
      WeightedSum also ``per_class/{stage}/term_share/{term}``, the term's share of the total.
    * A table of the ``top_k`` classes in the console (rank zero), when ``verbose``: for the run's
      last epoch, and for the epochs that end ``print_interval_s`` seconds or more after the last
      tables printed (or the start of the run).

    Args:
        top_k: How many classes (those with the largest loss) are logged and shown; the CSV keeps
            every class.
        stages: Stages to observe: ``"train"``, ``"validate"``, ``"test"``.
        class_names: Names of the classes, in index order. ``None`` takes the ``class_names``
            attribute of the data module, else of the model, where one has it; else indices.
        log_scalars: Log the top-k scalars to the trainer's loggers.
        dirpath: Directory of the CSV; ``None`` is the run's log directory (``trainer.log_dir``).
        verbose: Print the table at the end of epochs.
        print_interval_s: Print the tables of an epoch only when at least this many seconds have
            passed since the last ones were printed or the run started (the run's last tables are
            printed when it ends), so that fast epochs do not spend their time drawing tables
            nobody can read as they scroll by; 0 prints every epoch.

    Example:
        >>> PerClassLossMonitor(top_k=5, stages=["train"])
        PerClassLossMonitor(top_k=5, stages=['train'])
    """

    csv_name = "per_class_loss.csv"
    csv_header = ("epoch", "stage", "term", "class", "count", "loss_sum", "loss_mean", "share")

    def __init__(
        self,
        top_k: int = 10,
        stages: Sequence[Stage] = ("train", "validate"),
        class_names: Sequence[str] | None = None,
        log_scalars: bool = True,
        dirpath: str | None = None,
        verbose: bool = True,
        print_interval_s: float = 30.0,
    ) -> None:
        super().__init__(stages, dirpath, verbose, log_scalars)
        self.top_k = check_positive_int("top_k", top_k)
        self.print_interval_s = check_number("print_interval_s", print_interval_s, 0.0)
        if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
            raise TypeError(
                f"Expected argument `class_names` to be a list of names or None, but got {type(class_names).__name__}."
            )
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self._names_cache: tuple[int, list[str]] | None = None
        self._printed: tuple[int, float] | None = None  # (epoch, when) of the last tables printed
        self._unprinted: dict[str, tuple[int, Callable[[], Text]]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(top_k={self.top_k}, stages={list(self.stages)})"

    def _table_shape(self, layout: Layout) -> tuple[int, int]:
        return layout.num_classes, 2 + len(layout.terms)

    def _observed(self, outputs: list[LossOutput], on_host: bool) -> Observed:
        return observed(outputs, with_p_t=False, on_host=on_host)

    def _increment(self, batch: Observed, dtype: torch.dtype) -> tuple[Array | None, Array]:
        return per_class_increment(batch, dtype)

    def _names(self, trainer: pl.Trainer, pl_module: pl.LightningModule, num_classes: int) -> list[str]:
        if self._names_cache is None or self._names_cache[0] != num_classes:
            self._names_cache = (num_classes, class_names_for(trainer, pl_module, self.class_names, num_classes))
        return self._names_cache[1]

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
        names = self._names(trainer, pl_module, layout.num_classes)
        # in Python from here: a handful of classes takes fewer steps than tensor operations on them,
        # and 100,000 classes take milliseconds
        count, *sum_columns = (list(column) for column in zip(*table, strict=True))
        counts = [int(value) for value in count]
        term_names = [TOTAL, *layout.terms]
        term_totals = {term: math.fsum(loss_sums) for term, loss_sums in zip(term_names, sum_columns, strict=True)}
        rows: list[Sequence[Any]] = []
        for term, loss_sums in zip(term_names, sum_columns, strict=True):
            total = term_totals[term]
            rows += zip(
                [epoch] * len(names),
                [stage] * len(names),
                [term] * len(names),
                names,
                counts,
                loss_sums,
                [share(loss_sum, value) for loss_sum, value in zip(loss_sums, counts, strict=True)],
                [share(loss_sum, total) for loss_sum in loss_sums],
                strict=True,
            )
        losses = sum_columns[0]
        # a class whose loss is NaN (diverged) comes first
        top = heapq.nlargest(self.top_k, range(len(counts)), key=lambda index: _nan_as_largest(losses[index]))
        top_sums = {
            term: [column[index] for index in top] for term, column in zip(term_names, sum_columns, strict=True)
        }
        top_counts = [counts[index] for index in top]
        return StageReport(
            stage=stage,
            epoch=epoch,
            step=step,
            rows=rows,
            metrics=self._metrics(stage, [names[index] for index in top], top_counts, top_sums, term_totals),
            histograms=[],
            summary=lambda: self._table_of(stage, epoch, names, top, top_counts, top_sums, term_totals[TOTAL]),
        )

    def _metrics(
        self,
        stage: str,
        top_names: list[str],
        top_counts: list[int],
        top_sums: dict[str, list[float]],
        term_totals: dict[str, float],
    ) -> dict[str, float]:
        total = term_totals[TOTAL]
        metrics: dict[str, float] = {}
        for name, count, loss_sum in zip(top_names, top_counts, top_sums[TOTAL], strict=True):
            metrics[f"per_class/{stage}/share/{name}"] = share(loss_sum, total)
            metrics[f"per_class/{stage}/loss_mean/{name}"] = share(loss_sum, count)
        for term, term_total in term_totals.items():
            if term != TOTAL:
                metrics[f"per_class/{stage}/term_share/{term}"] = share(term_total, total)
        return metrics

    def _show(self, trainer: pl.Trainer, reports: list[StageReport]) -> None:
        if self.verbose:
            for report in reports:
                self._print(report.stage, report.epoch, report.summary)

    def _print(self, stage: str, epoch: int, grid: Callable[[], Text]) -> None:
        """Print the table now, or keep it (unbuilt: most are never printed) until the interval has passed."""
        now = time.monotonic()
        printed = self._printed
        if printed is not None and printed[0] != epoch and now - printed[1] < self.print_interval_s:
            self._unprinted[stage] = (epoch, grid)
            return
        if printed is None or printed[0] != epoch:
            self._printed = (epoch, now)
        self._unprinted.pop(stage, None)
        console().print(grid(), crop=False, soft_wrap=True)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # the first tables, too, wait for the interval: a short run shows only its last ones
        self._printed = (-1, time.monotonic())
        self._unprinted.clear()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        for _, (_, grid) in sorted(self._unprinted.items(), key=lambda item: (item[1][0], stage_order(item[0]))):
            console().print(grid(), crop=False, soft_wrap=True)
        self._unprinted.clear()

    def _table_of(
        self,
        stage: str,
        epoch: int,
        names: list[str],
        top: list[int],
        top_counts: list[int],
        top_sums: dict[str, list[float]],
        total: float,
    ) -> Text:
        shown = share(math.fsum(top_sums[TOTAL]), total)
        title = f"Per-class loss · {stage} · epoch {epoch}"
        caption = f"top {len(top)} of {len(names)} classes: {shown:.1%} of the loss" if len(top) < len(names) else None
        term_names = [term for term in top_sums if term != TOTAL]
        headings = ["#", "class", "count", "loss sum", "mean loss", "share", "cum. share"]
        headings += [f"{term} sum" for term in term_names]
        rows: list[list[str]] = []
        cumulative = 0.0
        for rank, (index, count, loss_sum) in enumerate(zip(top, top_counts, top_sums[TOTAL], strict=True), start=1):
            cumulative += share(loss_sum, total)
            cells = [
                str(rank),
                names[index],
                f"{count:,}",
                f"{loss_sum:.4g}",
                f"{share(loss_sum, count):.4g}",
                f"{share(loss_sum, total):.1%}",
                f"{cumulative:.1%}",
            ]
            rows.append(cells + [f"{top_sums[term][rank - 1]:.4g}" for term in term_names])
        return _boxed(title, caption, headings, rows, left_column=1)


def _boxed(title: str, caption: str | None, headings: list[str], rows: list[list[str]], left_column: int) -> Text:
    """A table in rich's default box (``HEAVY_HEAD``), laid out here: one text, rendered in a fraction of a millisecond.

    rich's ``Table`` measures and renders each cell on its own, which costs about 3 ms per table here:
    as much as a training step of the default run. Columns are right-aligned except ``left_column``.
    """
    box = HEAVY_HEAD.substitute(console().options)
    widths = [
        max(cell_len(heading), *(cell_len(row[column]) for row in rows)) for column, heading in enumerate(headings)
    ]
    spans = [width + 2 for width in widths]  # one space of padding on either side

    def cells(values: list[str]) -> list[str]:
        return [
            value + " " * (width - cell_len(value))
            if column == left_column
            else " " * (width - cell_len(value)) + value
            for column, (value, width) in enumerate(zip(values, widths, strict=True))
        ]

    vertical = f" {box.mid_vertical} "
    lines = [
        f"{box.get_top(spans)}\n{box.head_left} "
        + f" {box.head_vertical} ".join(cells(headings))
        + f" {box.head_right}",
        box.get_row(spans, level="head"),
        *(f"{box.mid_left} " + vertical.join(cells(row)) + f" {box.mid_right}" for row in rows),
        box.get_bottom(spans),
    ]
    text = Text(no_wrap=True, overflow="ignore")
    text.append(f"{title}\n", style="table.title")
    text.append(lines[0], style="table.header")  # a few styled spans: each one costs rich a pass
    text.append("\n" + "\n".join(lines[1:]))
    if caption is not None:
        text.append(f"\n{caption}", style="table.caption")
    return text
