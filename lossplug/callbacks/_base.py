"""What both diagnostics callbacks share: observing the loss, the epoch life cycle, the tidy CSV."""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal, NamedTuple, TextIO, TypeAlias, get_args

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from rich.console import Console
from typing_extensions import override

from lossplug.callbacks._accumulate import (
    FLUSH_VALUES,
    HOST_VALUES,
    Array,
    Layout,
    Observed,
    StatisticSums,
    layout_of,
    observed,
)
from lossplug.callbacks._tensorboard import Histogram, LoggedValues, log_tensorboard
from lossplug.losses.base import BaseLoss
from lossplug.mixin import LossMixin
from lossplug.output import LossOutput
from lossplug.shared_checks import check_option

Stage: TypeAlias = Literal["train", "validate", "test"]
"""A stage whose loss statistics a callback collects (the values of ``trainer.state.stage``)."""

_STAGE_ORDER = {"train": 0, "validate": 1, "test": 2}
_STEP_METHOD = {"train": "training_step", "validate": "validation_step", "test": "test_step"}
_OBSERVED_IN: dict[str, tuple[Stage, ...]] = {
    "fit": ("train", "validate"),
    "validate": ("validate",),
    "test": ("test",),
}
"""The stages each of the trainer's entry points (``setup``'s ``stage``) runs."""


def stage_order(stage: str) -> int:
    """Where ``stage`` goes when stages are shown together: train, validate, test."""
    return _STAGE_ORDER.get(stage, len(_STAGE_ORDER))


def check_stages(stages: object) -> tuple[Stage, ...]:
    """Return ``stages`` as a tuple, or raise unless it is a non-empty sequence of known stages."""
    if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
        raise ValueError(
            f"Expected argument `stages` to be a non-empty list of {list(get_args(Stage))}, but got {stages!r}."
        )
    for stage in stages:
        check_option("stages", stage, get_args(Stage))
    return tuple(dict.fromkeys(stages))


class StageReport(NamedTuple):
    """One stage's finished epoch on rank zero, computed and waiting to be written."""

    stage: str
    epoch: int
    step: int
    rows: list[Sequence[Any]]
    """CSV rows."""
    metrics: dict[str, float]
    """Scalars for the loggers."""
    histograms: list[Histogram]
    """Histograms for TensorBoard."""
    summary: Any
    """What the callback shows in the console (its own type)."""


class _StageRecord:
    """One stage's accumulation for the epoch that is running."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.epoch = self.step = 0  # the trainer's, when the stage ended
        self.sums: StatisticSums | None = None
        self.layout: Layout | None = None
        self.batches = 0  # the batches its loop finished in the epoch, read when the stage ended
        self.pending: list[LossOutput] = []  # observed, not yet added to `sums`
        self.pending_values = 0


def _batches_finished(trainer: pl.Trainer, stage: str) -> int:
    """The batches that the loop of ``stage`` has finished in its current epoch: Lightning's own count.

    Read where the stage ends, instead of counted in a hook per batch.
    """
    if stage == "train":
        loop: Any = trainer.fit_loop.epoch_loop
    elif stage == "validate":
        loop = trainer.fit_loop.epoch_loop.val_loop if trainer.state.fn == TrainerFn.FITTING else trainer.validate_loop
    else:
        loop = trainer.test_loop
    return int(loop.batch_progress.current.completed)


def _on_host(record: _StageRecord) -> bool:
    """Whether the record's pending outputs are added to its table in NumPy: few, on the CPU."""
    return record.sums is not None and record.sums.sums.device.type == "cpu" and record.pending_values < HOST_VALUES


def _adding(on_host: bool) -> contextlib.AbstractContextManager[Any]:
    """The context of an addition to the tables: inference mode for torch's (autograd's bookkeeping costs a
    tenth of their time), none for NumPy's (entering it costs 15-20 µs at the end of an epoch, more than
    it would save)."""
    return contextlib.nullcontext() if on_host else torch.inference_mode()


class LossStatisticsCallback(Callback):
    """Base of the diagnostics callbacks: observes a :class:`~lossplug.mixin.LossMixin` model's loss.

    Subclasses say what to add to the device table per observed output (:meth:`_increment`), how
    large the table is (:meth:`_table_shape`), what the reduced table of an epoch reports
    (:meth:`_epoch_finished`, rank zero only) and how it is shown (:meth:`_show`); this class runs
    the rest: registration, per-stage accumulation, reduction over processes, the CSV and the
    loggers, and resumption.

    A validation that runs inside a training epoch is written together with that epoch's training
    statistics, when the training epoch ends: one CSV write, one logger call per step and one
    console summary per epoch, instead of one per stage.
    """

    csv_name: ClassVar[str]
    csv_header: ClassVar[tuple[str, ...]]

    def __init__(self, stages: Sequence[Stage], dirpath: str | None, verbose: bool, log_scalars: bool) -> None:
        self.stages = check_stages(stages)
        self.log_scalars = bool(log_scalars)
        if dirpath is not None and not isinstance(dirpath, str | os.PathLike):
            raise TypeError(f"Expected argument `dirpath` to be a path or None, but got {type(dirpath).__name__}.")
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.verbose = bool(verbose)
        self._records: dict[str, _StageRecord] = {}
        self._tables: dict[str, StatisticSums] = {}
        self._zeroed: set[str] = set()  # stages whose table is zero (and no record holds it)
        self._log_dir: str | None = None
        self._csv_path: str | None = None
        self._csv_file: TextIO | None = None  # open for appending while a run writes it
        self._written: list[tuple[int, str]] = []
        self._restored: dict[str, Any] | None = None
        self._observed_any = False
        self._warned_stages: set[str] = set()
        self._state_key: tuple[object, str] = (None, "")
        self._unpublished: list[StageReport] = []
        self._unwritten: list[tuple[int, str]] = []
        self._deferred: list[_StageRecord] = []  # validations inside fit, finished when their training epoch ends
        self._tensorboard_held: list[LoggedValues] = []  # the other diagnostics callbacks' values, to send with ours

    # -- what subclasses provide ---------------------------------------------------------------------
    def _table_shape(self, layout: Layout) -> tuple[int, int]:
        raise NotImplementedError

    def _increment(self, batch: Observed, dtype: torch.dtype) -> tuple[Array | None, Array]:
        raise NotImplementedError

    def _observed(self, outputs: list[LossOutput], on_host: bool) -> Observed:
        """The outputs' fields that :meth:`_increment` reads, concatenated (NumPy arrays ``on_host``)."""
        return observed(outputs, on_host=on_host)

    def _check_output(self, output: LossOutput) -> None:
        """Raise when this callback cannot use ``output`` (called once per stage and epoch)."""

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
        """One stage's report from its reduced table, one list per row (rank zero): nothing is written yet."""
        raise NotImplementedError

    def _show(self, trainer: pl.Trainer, reports: list[StageReport]) -> None:
        """Show the reports that were just written (rank zero): the console, plots."""

    def _rows_restored(self, rows: list[dict[str, str]]) -> None:
        """Rows of earlier epochs carried over into the CSV when a run resumes."""

    def _new_run(self) -> None:
        """Forget what earlier runs left in memory (the callback is used again in a new run directory)."""

    # -- the observer ---------------------------------------------------------------------------------
    def observe_loss(self, output: LossOutput, stage: str) -> None:
        """Take one step's detached :class:`LossOutput` into the statistics of ``stage``.

        The output is kept and added to the device sums together with the others of the epoch (or
        once :data:`~lossplug.callbacks._accumulate.FLUSH_VALUES` values have gathered): one
        batched addition costs what one step's would, and a step only appends to a list.
        """
        if stage not in self.stages:
            return
        record = self._records.get(stage)
        if record is None:
            record = self._records[stage] = _StageRecord(stage)
        layout = record.layout
        if record.sums is None or layout is None:
            self._check_output(output)
            record.layout = layout = layout_of(output)
            record.sums = self._table(stage, layout, output.per_sample.device)
        elif (
            output.num_classes != layout.num_classes
            or output.task != layout.task
            or (output.p_t is not None) != layout.has_p_t
            or len(output.terms) != len(layout.terms)
        ):
            raise ValueError(
                f"{type(self).__name__} got loss outputs of two kinds in one {stage} epoch: {layout} and then "
                f"{layout_of(output)}. Use one loss (one number of classes) for every step of a stage."
            )
        record.pending.append(output)
        record.pending_values += output.per_sample.numel()
        if record.pending_values >= FLUSH_VALUES:
            self._flush(record)
        self._observed_any = True

    def _flush(self, record: _StageRecord) -> None:
        """Add the record's pending outputs to its device sums."""
        if record.pending and record.sums is not None:
            on_host = _on_host(record)
            with _adding(on_host):
                self._add(record, self._observed(record.pending, on_host))

    def _add(self, record: _StageRecord, batch: Observed) -> None:
        if record.sums is not None:
            index, values = self._increment(batch, record.sums.sums.dtype)
            record.sums.add(index, values)
        record.pending.clear()
        record.pending_values = 0

    def _flush_together(self, pl_module: LossMixin, record: _StageRecord) -> None:
        """:meth:`_flush`, and the same for the model's other diagnostics callbacks that hold the same outputs.

        One concatenation serves them all, and their tables are filled one after the other while
        the caches are warm; when they reach the end of the stage they find nothing pending.
        """
        pending = record.pending
        if not pending:
            return
        others = [
            (observer, other)
            for observer in pl_module.loss_observers
            if observer is not self and isinstance(observer, LossStatisticsCallback)
            for other in (*observer._records.values(), *observer._deferred)
            if len(other.pending) == len(pending)
            and all(mine is theirs for mine, theirs in zip(pending, other.pending, strict=True))
        ]
        if not others:
            self._flush(record)
            return
        on_host = _on_host(record)
        with _adding(on_host):
            batch = observed(pending, on_host=on_host)  # every field: each callback reads its own
            self._add(record, batch)
            for callback, other in others:
                callback._add(other, batch)

    def _table(self, stage: str, layout: Layout, device: torch.device) -> StatisticSums:
        """The stage's device table, zeroed; kept from epoch to epoch while its shape and device stay."""
        shape = self._table_shape(layout)
        table = self._tables.get(stage)
        if table is None or tuple(table.sums.shape) != shape or table.sums.device != device:
            table = self._tables[stage] = StatisticSums(shape, device)
            self._zeroed.discard(stage)
        elif stage in self._zeroed:  # when it was read (`_finish`)
            self._zeroed.discard(stage)
        else:  # a stage that did not finish (a sanity check) left it
            table.zero()
        return table

    # -- registration -----------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not set(_OBSERVED_IN.get(stage, ())) & set(self.stages):
            return  # e.g. `trainer.predict`, or `trainer.test` when "test" is not in `stages`
        if not isinstance(pl_module, LossMixin):
            name = type(pl_module).__name__
            raise TypeError(
                f"{type(self).__name__} reads the per-sample losses of a lossplug model, but {name} does not use "
                f"LossMixin. Declare `class {name}(LossMixin, L.LightningModule)`, pass the loss with "
                "`super().__init__(loss=loss)` and compute it with `self.compute_loss(output, target)`."
            )
        pl_module.add_loss_observer(self)
        # trainer.log_dir is a collective (a broadcast from rank zero): resolve it here, on every rank
        self._log_dir = self.dirpath if self.dirpath is not None else (trainer.log_dir or trainer.default_root_dir)
        self._records.clear()
        self._deferred.clear()
        self._unpublished.clear()
        self._unwritten.clear()
        self._tensorboard_held.clear()
        if trainer.is_global_zero and self._csv_path is not None and self._csv_path != self.csv_path:
            # the same callback in a new run directory: a new CSV, and nothing of the old run in memory
            self._close_csv()
            self._csv_path = None
            self._written.clear()
            self._new_run()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(pl_module, LossMixin):
            pl_module.remove_loss_observer(self)
        self._records.clear()
        self._finish_deferred_alone(trainer, pl_module)
        self._tables.clear()
        self._zeroed.clear()
        self._publish(trainer)
        self._close_csv()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish_deferred_alone(trainer, pl_module)
        self._publish(trainer)  # the stages that finished before the exception
        self._close_csv()

    def _finish_deferred_alone(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Finish deferred validations outside the epoch's life cycle: in one process; with several, drop them.

        Other processes may not reach this point (an exception), and a reduction would wait for them forever.
        """
        if not self._deferred:
            return
        if trainer.world_size == 1:
            self._finish_deferred(trainer, pl_module)
            return
        epochs = sorted({record.epoch for record in self._deferred})
        self._deferred.clear()
        warnings.warn(
            f"{type(self).__name__}: the validation statistics of epoch(s) {epochs} are not written: the run stopped "
            "before the end of their training epoch, where they are summed over processes.",
            stacklevel=2,
        )

    # -- the epoch life cycle -----------------------------------------------------------------------------
    def _start_stage(self, stage: str) -> None:
        if stage in self.stages:
            # a sanity check's record is dropped when it ends
            self._records[stage] = _StageRecord(stage)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_stage("train")

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_deferred(trainer, pl_module)  # a second validation in one training epoch: the table is reused
        self._start_stage("validate")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_stage("test")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_stage(trainer, pl_module, "train")
        self._finish_deferred(trainer, pl_module)
        self._publish(trainer)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._records.pop("validate", None)
            return
        self._end_stage(trainer, pl_module, "validate")
        self._publish(trainer)  # nothing, when the validation was deferred

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_stage(trainer, pl_module, "test")
        self._publish(trainer)

    def _end_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Finish the epoch of ``stage``; a validation inside fit waits for the end of its training epoch.

        There it is finished right after the training statistics, the same work twice in a row on warm
        caches, and both are written together: one CSV write, one logger call and one console summary.
        """
        if stage not in self.stages:
            return
        record = self._records.pop(stage, None) or _StageRecord(stage)
        record.epoch, record.step = trainer.current_epoch, trainer.global_step
        record.batches = _batches_finished(trainer, stage)
        if stage == "validate" and trainer.state.fn == TrainerFn.FITTING and "train" in self.stages:
            self._deferred.append(record)
        else:
            self._finish(trainer, pl_module, record)

    def _finish_deferred(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        deferred, self._deferred = self._deferred, []
        for record in deferred:
            self._finish(trainer, pl_module, record)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: _StageRecord) -> None:
        """Reduce a stage's table over processes and, on rank zero, turn it into a report to publish."""
        stage = record.stage
        layout, batches, observed_any = record.layout, record.batches, self._observed_any
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # a rank that saw no loss still has to join the reduction with a table of the same shape
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (layout, batches, observed_any))
            layouts = [item[0] for item in gathered if item[0] is not None]
            layout = layouts[0] if layouts else None
            batches = sum(item[1] for item in gathered)
            observed_any = any(item[2] for item in gathered)
        if layout is None:
            if batches > 0:
                self._no_statistics(pl_module, stage, batches, observed_any)
            return
        if isinstance(pl_module, LossMixin):
            self._flush_together(pl_module, record)
        else:
            self._flush(record)
        sums = record.sums if record.sums is not None else self._table(stage, layout, pl_module.device)
        table = sums.reduced()
        sums.zero()  # for the next epoch, now, while the table is in the cache
        self._zeroed.add(stage)
        if trainer.is_global_zero:
            self._unpublished.append(
                self._epoch_finished(trainer, pl_module, stage, record.epoch, record.step, layout, table)
            )
        self._unwritten.append((record.epoch, stage))

    def _publish(self, trainer: pl.Trainer) -> None:
        """Write the finished stages' reports: CSV rows, logger scalars and histograms, the console.

        TensorBoard gets one event per step from all the trainer's diagnostics callbacks together:
        each hands its values on to the last of them, whose same hook runs after its own and sends
        them with its own values (handing an event to TensorBoard's writer thread costs about 0.1 ms
        here, and as much again on that thread).
        """
        reports, self._unpublished = self._unpublished, []
        self._written += self._unwritten
        self._unwritten = []
        held, self._tensorboard_held = self._tensorboard_held, []
        if reports:
            self._append_rows([row for report in reports for row in report.rows])
            if self.log_scalars and trainer.loggers:
                held += self._log_scalars(trainer, reports)
        if held:
            sender = _tensorboard_sender(trainer)
            if sender is None or sender is self:
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        log_tensorboard(logger, held)
            else:
                sender._tensorboard_held += held
        if reports:
            self._show(trainer, reports)

    @staticmethod
    def _log_scalars(trainer: pl.Trainer, reports: list[StageReport]) -> list[LoggedValues]:
        """Log the reports' scalars to the loggers other than TensorBoard; what TensorBoard gets, per step."""
        to_tensorboard: list[LoggedValues] = []
        tensorboard = any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)
        for step, at_step in itertools.groupby(reports, key=lambda report: report.step):
            same_step = list(at_step)
            metrics = {name: value for report in same_step for name, value in report.metrics.items()}
            for logger in trainer.loggers:
                if not isinstance(logger, TensorBoardLogger):
                    logger.log_metrics(metrics, step=step)
            if tensorboard:
                histograms = [histogram for report in same_step for histogram in report.histograms]
                to_tensorboard.append(LoggedValues(step, metrics, histograms))
        return to_tensorboard

    def _no_statistics(self, pl_module: pl.LightningModule, stage: str, batches: int, observed_any: bool) -> None:
        loss = pl_module.__dict__.get("_modules", {}).get("loss")
        where = f"{type(self).__name__} got no loss statistics in {batches} {stage} batches"
        if loss is not None and not isinstance(loss, BaseLoss):
            raise RuntimeError(
                f"{where}: the model's loss is {type(loss).__module__}.{type(loss).__name__}, which gives no per-sample "
                "losses. Configure a lossplug loss instead (e.g. `lossplug.losses.CrossEntropyLoss`)."
            )
        advice = (
            f"compute the loss with `self.compute_loss(output, target)` in `{type(pl_module).__name__}."
            f"{_STEP_METHOD[stage]}`"
        )
        if not observed_any:
            raise RuntimeError(f"{where}: {advice}.")
        if stage not in self._warned_stages:
            self._warned_stages.add(stage)
            warnings.warn(
                f"{where}: {advice}, or leave {stage!r} out of `stages`. Skipping {stage} statistics.", stacklevel=2
            )

    # -- the CSV and resumption -------------------------------------------------------------------------
    @property
    def log_dir(self) -> str | None:
        """Where the CSV (and plots) go: ``dirpath``, else the run's log directory; known from ``setup``."""
        return self._log_dir

    @property
    def csv_path(self) -> str | None:
        """The CSV this callback writes; None before the run's log directory is known."""
        return None if self._log_dir is None else os.path.join(self._log_dir, self.csv_name)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restored, self._restored = self._restored, None
        if restored is None:
            return
        # epochs from the checkpoint's epoch on run again: their rows are written anew
        resume_epoch = trainer.current_epoch
        self._written = [
            (int(epoch), str(stage)) for epoch, stage in restored.get("written", []) if epoch < resume_epoch
        ]
        previous = restored.get("csv_path")
        if trainer.is_global_zero and previous is not None:
            self._carry_over(previous, resume_epoch)

    def _carry_over(self, previous: str, resume_epoch: int) -> None:
        target = self.csv_path
        if target is None:  # setup, which knows the log directory, always runs before on_train_start
            return
        if not os.path.exists(previous):
            if self._written:
                warnings.warn(
                    f"{type(self).__name__} resumes a run whose CSV {previous!r} is gone: epochs before {resume_epoch} "
                    f"are missing from {target!r}.",
                    stacklevel=2,
                )
            return
        with open(previous, newline="") as file:
            reader = csv.DictReader(file)
            kept = [row for row in reader if int(row["epoch"]) < resume_epoch]
        found = {(int(row["epoch"]), row["stage"]) for row in kept}
        missing = sorted(set(self._written) - found)
        if missing:
            warnings.warn(
                f"{type(self).__name__}: {previous!r} lacks the rows of {missing} (epoch, stage), which the checkpoint "
                "says were written.",
                stacklevel=2,
            )
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        self._close_csv()
        partial = target + ".partial"
        with open(partial, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(self.csv_header))
            writer.writeheader()
            writer.writerows(kept)
        os.replace(partial, target)
        self._csv_path = target
        self._rows_restored(kept)

    def _append_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        target = self.csv_path
        if target is None:
            raise RuntimeError(f"{type(self).__name__} writes its CSV only in a run (its `setup` was not called).")
        fresh = self._csv_path != target
        if fresh:
            self._close_csv()
            if os.path.exists(target):
                warnings.warn(f"{type(self).__name__} replaces {target!r}, left there by an earlier run.", stacklevel=2)
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        file = self._csv_file
        if file is None:
            # kept open: opening and closing it every epoch costs more than writing the rows
            file = self._csv_file = open(target, "w" if fresh else "a", newline="")  # noqa: SIM115
        writer = csv.writer(file)
        if fresh:
            writer.writerow(self.csv_header)
        writer.writerows(rows)
        file.flush()  # the epoch is on disk when it ends
        self._csv_path = target

    def _close_csv(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_csv_file"] = None  # a file does not pickle (ddp_spawn sends callbacks to new processes)
        return state

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads the key around every hook call (to name the hook in its profiler)
        key = (self.stages, self.dirpath)
        if self._state_key[0] != key:
            self._state_key = (key, self._generate_state_key(stages=list(self.stages), dirpath=self.dirpath))
        return self._state_key[1]

    @override
    def state_dict(self) -> dict[str, Any]:
        csv_path = self._csv_path
        if csv_path is None and self._restored is not None:  # loaded, not yet carried over
            csv_path = self._restored.get("csv_path")
        return {"csv_path": csv_path, "written": [list(key) for key in self._written]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)
        self._written = [(int(epoch), str(stage)) for epoch, stage in state_dict.get("written", [])]
        self._close_csv()
        self._csv_path = None


def class_names_for(
    trainer: pl.Trainer, pl_module: pl.LightningModule, given: Sequence[str] | None, num_classes: int
) -> list[str]:
    """Names of the classes: ``given``, else the data module's or the model's ``class_names``, else the indices."""
    candidates = [
        (given, "argument `class_names`"),
        (getattr(getattr(trainer, "datamodule", None), "class_names", None), "the data module's `class_names`"),
        (getattr(pl_module, "class_names", None), "the model's `class_names`"),
    ]
    for names, source in candidates:
        if names is None:
            continue
        if len(names) == num_classes:
            return [str(name) for name in names]
        warnings.warn(
            f"Expected {source} to name the loss's {num_classes} classes, but got {len(names)} names; ignoring them.",
            stacklevel=2,
        )
    return [str(index) for index in range(num_classes)]


def _tensorboard_sender(trainer: pl.Trainer) -> LossStatisticsCallback | None:
    """The trainer's last diagnostics callback: its hooks run after the others' (Lightning calls them in order)."""
    for callback in reversed(trainer.callbacks):  # type: ignore[attr-defined]
        if isinstance(callback, LossStatisticsCallback):
            return callback
    return None


_console: Console | None = None


def console() -> Console:
    """The console the callbacks print to (created on first use, so that it writes to the current stdout)."""
    global _console
    if _console is None:
        _console = Console()
    return _console


def share(part: float, total: float) -> float:
    """``part / total``, NaN when the total is zero (a share of nothing is undefined)."""
    return part / total if total != 0 else math.nan
