"""The public base of the diagnostics callbacks: build your own on :class:`LossDiagnostics`."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, TypeAlias, get_args

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from rich import get_console
from torch import Tensor, nn
from torchmetrics import Metric
from typing_extensions import override

from lossplug.callbacks._csv import CsvLog
from lossplug.losses.base import TORCH_COUNTERPARTS, BaseLoss
from lossplug.mixin import LossMixin
from lossplug.output import LossOutput, Task
from lossplug.shared_checks import check_option

Stage: TypeAlias = Literal["train", "validate", "test"]
"""A stage whose losses a callback observes (the values of ``trainer.state.stage``)."""

FLUSH_VALUES = 1 << 20
"""Observed values kept per stage before they are added to the table (else they are added when the stage ends)."""

STAGE_ORDER = {"train": 0, "validate": 1, "test": 2}
_RUNS_IN = {"fit": ("train", "validate"), "validate": ("validate",), "test": ("test",)}
_STEP = {"train": "training_step", "validate": "validation_step", "test": "test_step"}


class LossLayout(NamedTuple):
    """What a stage's loss outputs look like, in all its steps and processes (``terms``: the names of a
    :class:`~lossplug.losses.WeightedSum`'s terms, else empty)."""

    task: Task
    num_classes: int
    terms: tuple[str, ...]
    has_p_t: bool


class ObservedBatch(NamedTuple):
    """Observed loss outputs of one or more steps, one entry per element: a sample (a pixel, for outputs
    ``(N, C, d1, ...)``), or for binary and multi-label losses each entry of the target ``(N, C, ...)``.

    Attributes:
        loss: ``(M,)`` the element's loss, class weights included; 0 where not ``valid``.
        p_t: ``(M,)`` the probability of the true class (element-wise for binary losses); None for
            losses without class probabilities (center loss).
        class_index: ``(M,)`` long: the target class (0 where not ``valid``); for binary and
            multi-label losses the element's column.
        valid: ``(M,)`` bool: the element counts (its target is not ``ignore_index``).
        positive: ``(M,)`` bool: the target is above 0.5 (binary and multi-label losses); else None.
        term_losses: Each :class:`~lossplug.losses.WeightedSum` term's weighted loss ``(M,)``, 0 where
            not ``valid``; empty for other losses.
        predictions: ``(M, C)`` the model's class scores (multiclass losses) in the callback's
            ``prediction_stages``; else None.
    """

    loss: Tensor
    p_t: Tensor | None
    class_index: Tensor
    valid: Tensor
    positive: Tensor | None
    term_losses: dict[str, Tensor]
    predictions: Tensor | None


class Histogram(NamedTuple):
    """Binned values for a TensorBoard histogram: ``len(edges) == len(weights) + 1``."""

    tag: str
    edges: Sequence[float]
    weights: Sequence[float]


class EpochReport(NamedTuple):
    """What a finished stage reports (:meth:`LossDiagnostics.report`): CSV ``rows`` (one value per
    column of ``csv_header``), ``metrics`` for every logger, ``histograms`` for TensorBoard, and a
    ``summary`` for :meth:`LossDiagnostics.show` (by default anything ``rich`` prints)."""

    rows: list[Sequence[Any]]
    metrics: dict[str, float] = {}  # noqa: RUF012 - NamedTuple defaults are never mutated here
    histograms: Sequence[Histogram] = ()
    summary: Any = None


class _Finished(NamedTuple):
    stage: str
    epoch: int
    step: int
    layout: LossLayout
    table: Tensor  # summed over processes, on the CPU


class _SumTable(Metric):
    """A table of sums on the device; the metric's sync over processes sums the tables."""

    full_state_update = False
    sums: Tensor

    def __init__(self, shape: tuple[int, int], device: torch.device) -> None:
        super().__init__()
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.add_state("sums", torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")
        self.to(device)

    def update(self, rows: Tensor, values: Tensor) -> None:  # type: ignore[override]
        """Add ``values`` ``(M, columns)`` to the table's ``rows`` ``(M,)``."""
        self.sums.index_add_(0, rows, values.to(self.sums.dtype))

    def compute(self) -> Tensor:
        return self.sums


@dataclass
class _Run:
    """One stage's accumulation in one trainer entry point (fit, validate, test)."""

    device: torch.device
    pending: list[tuple[LossOutput, Tensor | None]] = field(default_factory=list)  # observed, not yet added
    values: int = 0  # the values in `pending`
    layout: LossLayout | None = None
    table: _SumTable | None = None
    open: bool = False  # between the stage's start and end: what a checkpoint carries


class LossDiagnostics(Callback):
    r"""Base of the diagnostics callbacks: per epoch and stage, sums what a subclass asks for.

    A subclass sets ``csv_name`` and ``csv_header`` and implements :meth:`table_shape` (raise
    ``ValueError`` there for a loss it cannot use), :meth:`increment` and :meth:`report`; optionally
    :meth:`show` and ``prediction_stages`` (the stages whose batches carry ``predictions``). This
    class does the rest: it observes a :class:`~lossplug.mixin.LossMixin` model's losses, sums on the
    device and over processes, writes the CSV (``epoch, stage``, then ``csv_header``), logs, prints,
    and resumes from checkpoints. Within an epoch of ``fit`` the training rows come first: a
    validation is summed when it ends, and written with its training epoch.

    Args:
        stages: Stages to observe: ``"train"``, ``"validate"``, ``"test"``.
        dirpath: Directory of the CSV; ``None`` is the run's log directory (``trainer.log_dir``).
        verbose: Print the console summary (:meth:`show`).
        log_scalars: Log the reports' scalars (and histograms) to the trainer's loggers.
    """

    csv_name: ClassVar[str]
    csv_header: ClassVar[tuple[str, ...]]
    prediction_stages: Collection[str] = ()

    def __init__(
        self,
        stages: Sequence[Stage] = ("train", "validate"),
        dirpath: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        log_scalars: bool = True,
    ) -> None:
        if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
            raise ValueError(
                f"Expected argument `stages` to be a non-empty list of {list(get_args(Stage))}, but got {stages!r}."
            )
        for stage in stages:
            check_option("stages", stage, get_args(Stage))
        if dirpath is not None and not isinstance(dirpath, str | os.PathLike):
            raise TypeError(f"Expected argument `dirpath` to be a path or None, but got {type(dirpath).__name__}.")
        self.stages: tuple[Stage, ...] = tuple(dict.fromkeys(stages))
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.verbose, self.log_scalars = bool(verbose), bool(log_scalars)
        self._runs: dict[str, _Run] = {}  # the stages observed in this entry point; none when stepped aside
        self._waiting: list[_Finished] = []  # summed, not yet written
        self._csv: CsvLog | None = None
        self._restored: dict[str, Any] | None = None
        self._state_key = self._generate_state_key(stages=list(self.stages), dirpath=self.dirpath)

    def table_shape(self, layout: LossLayout) -> tuple[int, int]:
        """The ``(rows, columns)`` of the table for a stage whose outputs look like ``layout``."""
        raise NotImplementedError

    def increment(self, batch: ObservedBatch) -> tuple[Tensor, Tensor]:
        """The table rows ``(K,)`` (long) that ``batch`` adds to, and what it adds ``(K, columns)``."""
        raise NotImplementedError

    def report(self, stage: str, epoch: int, table: Tensor, layout: LossLayout) -> EpochReport:
        """What a finished stage reports, from its table (on the CPU, summed over processes); on rank zero."""
        raise NotImplementedError

    def show(self, epoch: int, reports: list[tuple[str, EpochReport]]) -> None:
        """Called on rank zero once an epoch's ``(stage, report)`` are written: prints the summaries."""
        for _, report in reports:
            if self.verbose and report.summary is not None:
                get_console().print(report.summary)

    def observe_loss(self, output: LossOutput, stage: str, predictions: Tensor | None = None) -> None:
        """Keep one step's detached output: a list append, no tensor operation, no host-device sync."""
        run = self._runs.get(stage)
        if run is not None:
            kept = predictions if stage in self.prediction_stages else None
            run.pending.append((output, kept))
            run.values += output.per_sample.numel() if kept is None else kept.numel()
            if run.values >= FLUSH_VALUES:
                self._flush(run)

    def _flush(self, run: _Run) -> None:
        """Add the pending outputs to the table, in one batch."""
        if not run.pending:
            return
        layouts = {LossLayout(o.task, o.num_classes, tuple(o.terms), o.p_t is not None) for o, _ in run.pending}
        if len(layouts | {run.layout or next(iter(layouts))}) > 1:
            raise ValueError(f"{type(self).__name__} got outputs of different losses in one stage: {sorted(layouts)}.")
        with torch.no_grad():
            batch = _flatten(run.pending)
            if run.table is None:
                run.layout = next(iter(layouts))
                run.table = _SumTable(self.table_shape(run.layout), batch.loss.device)
            run.table.update(*self.increment(batch))
        run.pending.clear()
        run.values = 0

    def _sum(self, run: _Run) -> tuple[LossLayout, Tensor] | None:
        """The table summed over processes (a collective when there are several); None when empty on all."""
        self._flush(run)
        layout = run.layout
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            layouts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(layouts, layout)
            layout = next((item for item in layouts if item is not None), None)
        if layout is None:
            return None
        if run.table is None:  # this process saw nothing, and joins the sum with zeros
            run.layout, run.table = layout, _SumTable(self.table_shape(layout), run.device)
        with run.table.sync_context():
            return layout, run.table.sums.to("cpu", copy=True)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        stages = [name for name in _RUNS_IN.get(stage, ()) if name in self.stages]
        self._runs, self._waiting = {}, []
        if not stages:
            return  # e.g. `trainer.predict`
        if not isinstance(pl_module, LossMixin):
            name = type(pl_module).__name__
            raise TypeError(
                f"{type(self).__name__} reads the per-sample losses of a lossplug model, but {name} does not use "
                f"LossMixin. Declare `class {name}(LossMixin, L.LightningModule)`, pass the loss with "
                "`super().__init__(loss=loss)` and compute it with `self.compute_loss(output, target)`."
            )
        loss = getattr(pl_module, "loss", None)
        if isinstance(loss, nn.Module) and not isinstance(loss, BaseLoss):
            # one number per step: nothing to diagnose, and the run trains as it would without us
            pl_module.remove_loss_observer(self)
            name = type(loss).__name__
            rank_zero_warn(
                f"{type(self).__name__} is off for this run: the model's loss {type(loss).__module__}.{name} gives "
                f"no per-sample losses. Use lossplug.losses.{TORCH_COUNTERPARTS.get(name, 'CrossEntropyLoss')} "
                f"{'(the same values) ' if name in TORCH_COUNTERPARTS else ''}to see where the loss comes from."
            )
            return
        # trainer.log_dir is a collective (a broadcast from rank zero): resolved here, on every rank
        path = os.path.abspath(os.path.join(self.dirpath or trainer.log_dir or trainer.default_root_dir, self.csv_name))
        if self._csv is None or self._csv.path != path:
            self._csv = CsvLog(path, ("epoch", "stage", *self.csv_header), type(self).__name__)
        self._runs = {name: _Run(pl_module.device) for name in stages}
        pl_module.add_loss_observer(self)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Go on from the checkpoint: its stages not yet written, the running stage's sums, the CSV's rows."""
        restored, self._restored = self._restored, None
        if restored is None or not self._runs:
            return
        self._waiting = [_Finished._make([*item[:3], LossLayout(*item[3]), item[4]]) for item in restored["finished"]]
        for stage, (layout, table) in restored["partial"].items():
            if (run := self._runs.get(stage)) is not None:
                run.open, run.layout = True, LossLayout(*layout)
                if trainer.is_global_zero:  # the sums of all processes, added once
                    run.table = _SumTable(self.table_shape(run.layout), run.device)
                    run.table.sums += table.to(run.table.sums)
        if trainer.is_global_zero and self._csv is not None and restored["csv"] is not None:
            self._csv.resume(restored["csv"])

    def _start(self, stage: str) -> None:
        if (run := self._runs.get(stage)) is not None:
            run.pending, run.values, run.open = [], 0, True
            if run.table is not None:
                run.table.reset()

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, write: bool = True) -> None:
        if (run := self._runs.get(stage)) is None:
            return
        if trainer.sanity_checking:
            self._start(stage)  # its outputs are dropped
        elif (summed := self._sum(run)) is not None:
            self._waiting.append(_Finished(stage, trainer.current_epoch, trainer.global_step, *summed))
            run.table.reset()  # type: ignore[union-attr]
        elif batches := trainer.num_training_batches if stage == "train" else sum(
            trainer.num_test_batches if stage == "test" else trainer.num_val_batches
        ):
            said = f"{type(self).__name__} got no loss statistics in {batches} {stage} batches: compute the loss with "
            said += f"`self.compute_loss(output, target)` in `{type(pl_module).__name__}.{_STEP[stage]}`"
            if not any(other.table is not None or other.pending for other in self._runs.values()):  # no loss seen
                raise RuntimeError(f"{said}.")
            rank_zero_warn(f"{said}, or leave {stage!r} out of `stages`. Skipping {stage} statistics.")
        run.open = False
        if write:
            self._write(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("train")

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("validate")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "train")

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # inside fit, the validation waits for its training epoch: train rows first, one write per epoch
        self._end(trainer, pl_module, "validate", write="train" not in self._runs)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "test")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        with contextlib.suppress(OSError):  # a full disk: the exception being handled says so
            self._write(trainer)  # the stages summed already: no collective, other processes may be gone

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._write(trainer)
        if isinstance(pl_module, LossMixin):
            pl_module.remove_loss_observer(self)

    def _write(self, trainer: pl.Trainer) -> None:
        """Write the finished stages (rank zero): CSV rows, then loggers, then the console."""
        finished = sorted(self._waiting, key=lambda item: (item.epoch, STAGE_ORDER[item.stage]))
        self._waiting = []
        if not finished or not trainer.is_global_zero or self._csv is None:
            return
        reports = [(item, self.report(item.stage, item.epoch, item.table, item.layout)) for item in finished]
        rows = [(item.epoch, item.stage, *row) for item, report in reports for row in report.rows]
        self._csv.append(rows, [(item.epoch, item.stage) for item in finished])
        if self.log_scalars:
            _log(trainer, reports)
        for epoch, of_epoch in itertools.groupby(reports, key=lambda pair: pair[0].epoch):
            self.show(epoch, [(item.stage, report) for item, report in of_epoch])

    @property
    def csv_path(self) -> str | None:
        """The CSV this callback writes (absolute); None before ``setup``."""
        return None if self._csv is None else self._csv.path

    @property
    @override
    def state_key(self) -> str:
        return self._state_key  # made once: Lightning reads it around every hook call

    @override
    def state_dict(self) -> dict[str, Any]:
        """The CSV's fingerprint, the stages summed but not written, and the running stages' sums (summed
        over processes here: a collective, as Lightning saves checkpoints on every process)."""
        partial = {}
        for stage, run in self._runs.items():
            if run.open and (summed := self._sum(run)) is not None:
                partial[stage] = (tuple(summed[0]), summed[1])
        return {
            "csv": None if self._csv is None else self._csv.state(),
            "finished": [(i.stage, i.epoch, i.step, tuple(i.layout), i.table) for i in self._waiting],
            "partial": partial,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = {"csv": None, "finished": [], "partial": {}, **state_dict}

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn sends callbacks to its processes; a hash does not pickle
        return {**self.__dict__, "_csv": None}


def _flatten(observed: list[tuple[LossOutput, Tensor | None]]) -> ObservedBatch:
    """Concatenate the outputs' fields, one entry per element (binary outputs ``(N, C, ...)``: column last)."""
    binary, outputs = observed[0][0].task == "binary", [output for output, _ in observed]

    def flat(field: Tensor) -> Tensor:
        return (field.movedim(1, -1) if binary and field.ndim > 1 else field).reshape(-1)

    def joined(fields: list[Tensor]) -> Tensor:
        if len({field.shape[1:] for field in fields}) > 1:  # outputs of different sizes (images)
            fields = [flat(field) for field in fields]
        return flat(torch.cat(fields)) if len(fields) > 1 else flat(fields[0])

    valid, target = joined([o.valid for o in outputs]), joined([o.target for o in outputs])
    scores: list[Any] = [predictions for _, predictions in observed]
    predictions = None
    if not binary and all(score is not None for score in scores):  # one row of class scores per element
        predictions = torch.cat([score.movedim(1, -1).reshape(-1, score.shape[1]) for score in scores])
    if binary:  # the class column (dim 1, moved last) varies fastest; a plain (N,) target has one column
        class_index = torch.arange(len(valid), device=valid.device) % outputs[0].num_classes
    else:
        class_index = torch.where(valid, target, 0).long()
    return ObservedBatch(
        loss=torch.where(valid, joined([o.per_sample for o in outputs]), 0.0),  # 0, not NaN, where not valid
        p_t=None if outputs[0].p_t is None else joined([o.p_t for o in outputs]),  # type: ignore[misc]
        class_index=class_index,
        valid=valid,
        positive=target > 0.5 if binary else None,
        term_losses={
            name: torch.where(valid, joined([o.terms[name].per_sample for o in outputs]), 0.0)
            for name in outputs[0].terms
        },
        predictions=predictions,
    )


def _log(trainer: pl.Trainer, reports: list[tuple[_Finished, EpochReport]]) -> None:
    """Scalars to every logger (one call per step, with the epoch, as Lightning's own calls have it),
    histograms to TensorBoard."""
    by_step: dict[int, dict[str, float]] = {}
    for item, report in reports:
        if report.metrics:
            by_step.setdefault(item.step, {"epoch": item.epoch}).update(report.metrics)
    for logger in trainer.loggers:
        for step, metrics in by_step.items():
            logger.log_metrics(metrics, step=step)
        if isinstance(logger, TensorBoardLogger):
            for item, histogram in [(item, histogram) for item, report in reports for histogram in report.histograms]:
                if (fields := _histogram_fields(histogram)) is not None:
                    logger.experiment.add_histogram_raw(histogram.tag, **fields, global_step=item.step)


def _histogram_fields(histogram: Histogram) -> dict[str, Any] | None:
    """The arguments of ``add_histogram_raw`` for the bins; None when they hold nothing to draw."""
    weights = [weight if math.isfinite(weight) else 0.0 for weight in histogram.weights]
    filled = [index for index, weight in enumerate(weights) if weight > 0]
    if not filled:
        return None
    edges = list(histogram.edges)
    # only bin sums are known: the moments TensorBoard asks for are taken at the bin centres
    centres = [(low + high) / 2 for low, high in itertools.pairwise(edges)]
    num, total, squares = (math.fsum(w * c**power for w, c in zip(weights, centres, strict=True)) for power in range(3))
    return {
        "min": edges[filled[0]], "max": edges[filled[-1] + 1], "num": num, "sum": total, "sum_squares": squares,
        "bucket_limits": edges[1:], "bucket_counts": weights,
    }  # fmt: skip


def share(part: float, total: float) -> float:
    """``part / total``; NaN when ``total`` is 0 (a share of nothing is undefined)."""
    return part / total if total != 0 else math.nan
