"""PerClassLossMonitor: which classes the loss comes from, per epoch and stage."""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from rich import get_console
from rich.table import Table
from torch import Tensor
from typing_extensions import override

from lossplug.callbacks.base import EpochReport, LossDiagnostics, LossLayout, ObservedBatch, Stage, share
from lossplug.shared_checks import check_number, check_positive_int

TOTAL = "total"  # the `term` of the whole loss's rows (a WeightedSum's terms have their names)


class PerClassLossMonitor(LossDiagnostics):
    r"""Per epoch and stage: how many samples of each class were seen, their loss, and its share.

    For each class :math:`c`, with :math:`\ell_i` the per-sample loss (class weights included),
    summed over the epoch's non-ignored samples on every process:

    .. math::
        \mathrm{count}_c = |\{i : y_i = c\}|, \quad
        \mathrm{loss\_sum}_c = \sum_{i : y_i = c} \ell_i, \quad
        \mathrm{loss\_mean}_c = \frac{\mathrm{loss\_sum}_c}{\mathrm{count}_c}, \quad
        \mathrm{share}_c = \frac{\mathrm{loss\_sum}_c}{\sum_k \mathrm{loss\_sum}_k}

    For binary and multi-label losses the classes are the target columns, and every element counts
    for its column. A :class:`~lossplug.losses.WeightedSum`'s terms (weights applied) are reported
    besides the ``total``; a term's shares are of that term's loss. Samples that a ``DistributedSampler``
    repeats to even out the processes count again (at most ``processes - 1`` per epoch). Output per epoch:

    * ``per_class_loss.csv`` in the run's log directory, a row per class and term: ``epoch, stage,
      term, class, count, loss_sum, loss_mean, share`` (``nan`` where a mean or share is undefined).
    * In every logger, for the ``top_k`` classes with the largest loss: ``per_class/{stage}/share/{class}``
      and ``per_class/{stage}/loss_mean/{class}``; ``per_class/{stage}/term_share/{term}`` for a WeightedSum.
    * A table of the ``top_k`` classes in the console, when ``verbose``: for the run's last epoch, and
      for epochs that end ``print_interval_s`` or more after the last tables printed.

    Args:
        top_k: How many classes (those with the largest loss) are logged and shown; the CSV has all.
        stages: Stages to observe: ``"train"``, ``"validate"``, ``"test"``.
        class_names: Names of the classes, in index order. ``None`` takes the ``class_names``
            attribute of the data module, else of the model, where one has it; else indices.
        log_scalars: Log the top-k scalars to the trainer's loggers.
        dirpath: Directory of the CSV; ``None`` is the run's log directory (``trainer.log_dir``).
        verbose: Print the table.
        print_interval_s: Seconds at least between printed tables (from the start of the run), so that
            fast epochs scroll no tables by; 0 prints every epoch.

    Example:
        >>> PerClassLossMonitor(top_k=5, stages=["train"])
        PerClassLossMonitor(top_k=5, stages=['train'])
    """

    csv_name = "per_class_loss.csv"
    csv_header = ("term", "class", "count", "loss_sum", "loss_mean", "share")

    def __init__(
        self,
        top_k: int = 10,
        stages: Sequence[Stage] = ("train", "validate"),
        class_names: Sequence[str] | None = None,
        log_scalars: bool = True,
        dirpath: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        print_interval_s: float = 30.0,
    ) -> None:
        super().__init__(stages=stages, dirpath=dirpath, verbose=verbose, log_scalars=log_scalars)
        self.top_k = check_positive_int("top_k", top_k)
        self.print_interval_s = check_number("print_interval_s", print_interval_s, 0.0)
        if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
            raise TypeError(
                f"Expected argument `class_names` to be a list of names or None, but got {type(class_names).__name__}."
            )
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self._names: tuple[str, list[str]] = ("", [])  # the class names of this run, and where they come from
        self._printed_at = 0.0
        self._unprinted: list[Table] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(top_k={self.top_k}, stages={list(self.stages)})"

    @override
    def table_shape(self, layout: LossLayout) -> tuple[int, int]:
        return layout.num_classes, 2 + len(layout.terms)  # count, loss, each term's loss

    @override
    def increment(self, batch: ObservedBatch) -> tuple[Tensor, Tensor]:
        return batch.class_index, torch.stack([batch.valid, batch.loss, *batch.term_losses.values()], dim=1)

    @override
    def report(self, stage: str, epoch: int, table: Tensor, layout: LossLayout) -> EpochReport:
        names = self._class_names(layout.num_classes)
        count, *columns = table.T.tolist()  # in Python from here: a few numbers per class
        counts = [int(value) for value in count]
        sums = dict(zip((TOTAL, *layout.terms), columns, strict=True))
        totals = {term: math.fsum(column) for term, column in sums.items()}
        rows: list[Sequence[Any]] = [
            (term, name, number, loss, share(loss, number), share(loss, totals[term]))
            for term, column in sums.items()
            for name, number, loss in zip(names, counts, column, strict=True)
        ]
        losses, total = sums[TOTAL], totals[TOTAL]
        # the classes with the largest loss; a NaN loss (diverged) first
        top = heapq.nlargest(self.top_k, range(len(counts)), key=lambda i: (math.isnan(losses[i]), losses[i]))
        shown = share(math.fsum(losses[i] for i in top), total)
        caption = f"top {len(top)} of {len(names)} classes: {shown:.1%} of the loss" if len(top) < len(names) else None
        printed = Table(title=f"Per-class loss · {stage} · epoch {epoch}", caption=caption)
        headings = ["#", "class", "count", "loss sum", "mean loss", "share", "cum. share"]
        for column, heading in enumerate(headings + [f"{term} sum" for term in layout.terms]):
            printed.add_column(heading, justify="left" if column == 1 else "right")
        metrics: dict[str, float] = {}
        cumulative = 0.0
        for rank, i in enumerate(top, start=1):
            metrics[f"per_class/{stage}/share/{names[i]}"] = part = share(losses[i], total)
            metrics[f"per_class/{stage}/loss_mean/{names[i]}"] = mean = share(losses[i], counts[i])
            cumulative += part
            cells = [f"{counts[i]:,}", f"{losses[i]:.4g}", f"{mean:.4g}", f"{part:.1%}", f"{cumulative:.1%}"]
            printed.add_row(str(rank), names[i], *cells, *(f"{sums[term][i]:.4g}" for term in layout.terms))
        metrics |= {f"per_class/{stage}/term_share/{term}": share(totals[term], total) for term in layout.terms}
        return EpochReport(rows, metrics, summary=printed)

    def _class_names(self, num_classes: int) -> list[str]:
        source, names = self._names
        if len(names) != num_classes:
            if source:
                rank_zero_warn(f"Expected {source} to name the {num_classes} classes, but got {len(names)} names.")
            self._names = ("", names := [str(index) for index in range(num_classes)])
        return names

    @override
    def show(self, epoch: int, reports: list[tuple[str, EpochReport]]) -> None:
        self._unprinted = [report.summary for _, report in reports] if self.verbose else []
        if time.monotonic() - self._printed_at >= self.print_interval_s:
            self._print()

    def _print(self) -> None:
        for table in self._unprinted:
            get_console().print(table)
        self._printed_at, self._unprinted = time.monotonic(), []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        candidates = [
            ("argument `class_names`", self.class_names),
            ("the data module's `class_names`", getattr(getattr(trainer, "datamodule", None), "class_names", None)),
            ("the model's `class_names`", getattr(pl_module, "class_names", None)),
        ]
        source, names = next(((source, names) for source, names in candidates if names is not None), ("", []))
        self._names = (source, [str(name) for name in names])
        # the first tables, too, wait for the interval: a short run shows only its last ones
        self._printed_at, self._unprinted = time.monotonic(), []

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._print()  # the run's last tables
