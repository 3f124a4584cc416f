"""A resumed run continues the CSVs: no epoch twice, none missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from callback_helpers import TableData, TableModel, make_trainer, read_csv
from lightning.pytorch.callbacks import ModelCheckpoint

from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor
from lossplug.losses import CrossEntropyLoss

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1], [-1.0, 3.0, 0.0], [1.0, 2.0, 3.0]])
TARGET = torch.tensor([0, 1, 1, 2])


def _callbacks(diagnostics: Path) -> tuple[PerClassLossMonitor, HardnessHistogram]:
    # the histogram writes into one fixed directory, the monitor into each run's own log directory
    return PerClassLossMonitor(verbose=False), HardnessHistogram(dirpath=str(diagnostics), verbose=False)


def _keys(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((row["epoch"], row["stage"]) for row in rows))


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_from_a_checkpoint_continues_both_csvs(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    monitor, histogram = _callbacks(tmp_path / "diagnostics")
    first = make_trainer(
        tmp_path,
        [monitor, histogram, ModelCheckpoint(dirpath=checkpoints, filename="{epoch}", save_top_k=-1)],
        max_epochs=2,
        enable_checkpointing=True,
    )
    first.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET, batch_size=2))
    first_rows = read_csv(monitor.csv_path)
    assert _keys(first_rows) == [("0", "train"), ("0", "validate"), ("1", "train"), ("1", "validate")]

    # from the end of epoch 0: epoch 1 runs again (its rows are replaced, not repeated), then epoch 2
    monitor, histogram = _callbacks(tmp_path / "diagnostics")
    second = make_trainer(
        tmp_path,
        [monitor, histogram, ModelCheckpoint(dirpath=tmp_path / "checkpoints-resumed")],
        max_epochs=3,
        enable_checkpointing=True,
    )
    second.fit(
        TableModel(CrossEntropyLoss(), LOGITS),
        datamodule=TableData(TARGET, batch_size=2),
        ckpt_path=checkpoints / "epoch=0.ckpt",
    )
    assert second.log_dir != first.log_dir  # a new logger version: the monitor's rows are carried over into it
    expected = [(str(epoch), stage) for epoch in range(3) for stage in ("train", "validate")]
    rows = read_csv(monitor.csv_path)
    assert _keys(rows) == expected
    assert len(rows) == 6 * 3
    assert rows[:6] == first_rows[:6]
    assert rows[6:12] == first_rows[6:12]  # nothing is learned, so epoch 1 is the same again
    histogram_rows = read_csv(histogram.csv_path)
    assert _keys(histogram_rows) == expected
    assert len(histogram_rows) == 6 * 11
    assert sorted(histogram.history[("train", "all")]) == [0, 1, 2]  # the PNG shows the restored epochs too


def test_state_dict_round_trip() -> None:
    monitor = PerClassLossMonitor(stages=["train"])
    assert monitor.state_key == "PerClassLossMonitor{'stages': ['train'], 'dirpath': None}"
    assert monitor.state_key != HardnessHistogram(stages=["train"]).state_key
    state = {"csv_path": "/runs/version_0/per_class_loss.csv", "written": [[0, "train"], [1, "train"]]}
    monitor.load_state_dict(state)
    assert monitor.state_dict() == state


def test_a_callback_used_again_starts_a_new_csv(tmp_path: Path) -> None:
    histogram = HardnessHistogram(stages=["train"], plot=False, verbose=False)
    for run, epochs in (("first", 2), ("second", 1)):
        trainer = make_trainer(tmp_path / run, [histogram], max_epochs=epochs, limit_val_batches=0)
        trainer.fit(TableModel(CrossEntropyLoss(), LOGITS), datamodule=TableData(TARGET, batch_size=2))
    assert histogram.csv_path == str(tmp_path / "second" / "lightning_logs" / "version_0" / "hardness_histogram.csv")
    assert _keys(read_csv(histogram.csv_path)) == [("0", "train")]
    assert sorted(histogram.history[("train", "all")]) == [0]
