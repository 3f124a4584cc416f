"""What every diagnostics callback gets from the base: observing, the epoch life cycle, loggers, torch losses."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from callback_helpers import TABLE_LOGITS, TABLE_TARGET, TableData, TableModel, make_trainer, read_csv, rows_of
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor
from lossplug.losses import FocalLoss, WeightedSum


def _loss() -> WeightedSum:
    return WeightedSum({"focal": FocalLoss(gamma=2.0), "ce": FocalLoss(gamma=0.0)}, weights={"focal": 1.0, "ce": 0.5})


def _fit(root: Path, callbacks: list[L.Callback], **kwargs: object) -> None:
    trainer = make_trainer(root, callbacks, max_epochs=2, **kwargs)
    trainer.fit(TableModel(_loss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET, batch_size=3))


def test_callbacks_together_write_what_each_writes_alone(tmp_path: Path) -> None:
    together = [PerClassLossMonitor(verbose=False), HardnessHistogram(verbose=False, plot=False)]
    _fit(tmp_path / "together", together)
    alone_monitor = PerClassLossMonitor(verbose=False)
    _fit(tmp_path / "monitor", [alone_monitor])
    alone_histogram = HardnessHistogram(verbose=False, plot=False)
    _fit(tmp_path / "histogram", [alone_histogram])

    paths = [together[0].csv_path, alone_monitor.csv_path, together[1].csv_path, alone_histogram.csv_path]
    assert None not in paths
    monitor_rows = read_csv(together[0].csv_path)
    assert len(monitor_rows) == 2 * 2 * 3 * 3  # epochs, stages, terms (total, focal, ce), classes
    assert monitor_rows == read_csv(alone_monitor.csv_path)
    assert read_csv(together[1].csv_path) == read_csv(alone_histogram.csv_path)
    # 7 non-ignored samples per stage and epoch, counted once although two callbacks observed them
    assert sum(int(row["count"]) for row in rows_of(monitor_rows, epoch=0, stage="validate", term="total")) == 7


def test_two_validations_in_one_epoch_are_written_separately(tmp_path: Path) -> None:
    monitor = PerClassLossMonitor(verbose=False, stages=["train", "validate"])
    # a validation after each of the three training batches
    _fit(tmp_path, [monitor], val_check_interval=1, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    assert monitor.csv_path is not None
    rows = read_csv(monitor.csv_path)
    for epoch in (0, 1):
        validations = rows_of(rows, epoch=epoch, stage="validate", term="total")
        assert [int(row["count"]) for row in validations] == [3, 2, 2] * 3
        trained = rows_of(rows, epoch=epoch, stage="train", term="total")
        assert [int(row["count"]) for row in trained] == [3, 2, 2]


class _FailAtEpochEnd(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise RuntimeError("stopped at the end of the training epoch")


def test_a_finished_validation_is_written_when_the_run_fails_before_its_epoch_ends(tmp_path: Path) -> None:
    monitor = PerClassLossMonitor(verbose=False)
    with pytest.raises(RuntimeError, match="stopped at the end"):
        _fit(tmp_path, [_FailAtEpochEnd(), monitor], num_sanity_val_steps=0)
    assert monitor.csv_path is not None
    rows = read_csv(monitor.csv_path)
    assert {(row["epoch"], row["stage"]) for row in rows} == {("0", "validate")}
    assert sum(int(row["count"]) for row in rows_of(rows, term="total")) == 7


class _CountOps(TorchDispatchMode):
    """Counts every tensor operation (ATen call) while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_observing_a_step_runs_no_tensor_operation(tmp_path: Path) -> None:
    callbacks = [PerClassLossMonitor(verbose=False), HardnessHistogram(verbose=False, plot=False)]
    ops: list[list[str]] = []
    for callback in callbacks:

        def counted(*args: Any, observe: Any = callback.observe_loss) -> None:
            with _CountOps() as counter:
                observe(*args)
            ops.append(counter.ops)

        callback.observe_loss = counted  # type: ignore[method-assign]
    _fit(tmp_path, callbacks, num_sanity_val_steps=0)
    assert len(ops) == 2 * 2 * (3 + 3)  # callbacks x epochs x (train + validation batches)
    assert ops == [[]] * len(ops)  # a list append: no tensor operation, hence no host-device sync either


def test_a_torch_loss_is_named_once_per_callback_and_the_run_trains(tmp_path: Path) -> None:
    callbacks = [PerClassLossMonitor(), HardnessHistogram()]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TableModel(nn.CrossEntropyLoss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET))
    said = [str(warning.message) for warning in caught if "is off for this run" in str(warning.message)]
    assert len(said) == 2
    for callback, message in zip(callbacks, said, strict=True):
        assert message.startswith(f"{type(callback).__name__} is off for this run")
        assert "torch.nn.modules.loss.CrossEntropyLoss" in message
        assert "lossplug.losses.CrossEntropyLoss (the same values)" in message
    assert trainer.global_step == 2 * 2
    assert not os.path.exists(os.path.join(trainer.log_dir, "per_class_loss.csv"))


def test_loggers_get_scalars_and_tensorboard_its_histograms_through_lightning(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    tensorboard = TensorBoardLogger(tmp_path)
    callbacks = [PerClassLossMonitor(verbose=False), HardnessHistogram(verbose=False, plot=False)]
    _fit(tmp_path, callbacks, logger=[CSVLogger(tmp_path), tensorboard])
    assert record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c  # nothing of TensorBoard's is replaced
    events = EventAccumulator(tensorboard.log_dir)
    events.Reload()
    assert {"per_class/train/share/0", "hardness/validate/all/easy_fraction"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("per_class/train/share/0")] == [3, 6]
    assert {"hardness/train/all/p_t", "hardness/validate/all/p_t_loss"} <= set(events.Tags()["histograms"])
    metrics = read_csv(os.path.join(os.path.dirname(callbacks[0].csv_path or ""), "metrics.csv"))
    assert {"per_class/train/share/0", "hardness/validate/all/easy_fraction"} <= set(metrics[0])
    logged = [row for row in metrics if row["per_class/train/share/0"] or row["hardness/validate/all/easy_fraction"]]
    assert [row["epoch"] for row in logged] == ["0", "0", "1", "1"]  # a row per callback and epoch, with its epoch


class _FailInEpoch1(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("stopped in epoch 1")  # Ctrl-C and SIGTERM reach on_exception the same way


def test_an_interrupted_run_leaves_the_png_of_its_finished_epochs(tmp_path: Path) -> None:
    histogram = HardnessHistogram(verbose=False, plot_interval_s=3600)
    with pytest.raises(RuntimeError, match="stopped in epoch 1"):
        _fit(tmp_path, [_FailInEpoch1(), histogram], num_sanity_val_steps=0)
    assert histogram.png_path is not None
    assert Path(histogram.png_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # epoch 0, and the validation of epoch 1, which finished before the interruption
    assert {key: sorted(epochs) for key, epochs in histogram.history.items()} == {
        ("train", "all"): [0],
        ("validate", "all"): [0, 1],
    }


def test_during_the_run_the_png_is_drawn_every_plot_interval(tmp_path: Path) -> None:
    histogram = HardnessHistogram(verbose=False, plot_interval_s=0)
    drawn: list[float] = []

    class Watch(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if histogram.png_path is not None and os.path.exists(histogram.png_path):
                drawn.append(os.path.getmtime(histogram.png_path))

    trainer = make_trainer(tmp_path, [histogram, Watch()], max_epochs=3)
    trainer.fit(TableModel(_loss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET, batch_size=3))
    assert len(drawn) == 3  # on the training thread, at the end of every epoch
