"""What both diagnostics callbacks share: one flush for several callbacks, validations finished with their epoch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from callback_helpers import TABLE_LOGITS, TABLE_TARGET, TableData, TableModel, make_trainer, read_csv, rows_of

from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor
from lossplug.losses import FocalLoss, WeightedSum


def _loss() -> WeightedSum:
    return WeightedSum({"focal": FocalLoss(gamma=2.0), "ce": FocalLoss(gamma=0.0)}, weights={"focal": 1.0, "ce": 0.5})


def _fit(root: Path, callbacks: list[L.Callback], **kwargs: object) -> None:
    trainer = make_trainer(root, callbacks, max_epochs=2, **kwargs)
    trainer.fit(TableModel(_loss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET, batch_size=3))


def test_callbacks_together_write_what_each_writes_alone(tmp_path: Path) -> None:
    # together, the first callback to end a stage fills both tables from one concatenation
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
    # a validation after each of the three training batches: each reuses the table of the one before
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
