"""The CSV on disk: an epoch reaches the file whole or not at all; a full disk is one clear error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from callback_helpers import TABLE_LOGITS, TABLE_TARGET, TableData, TableModel, make_trainer, read_csv

from lossplug.callbacks import PerClassLossMonitor
from lossplug.losses import CrossEntropyLoss


def test_a_full_disk_is_one_clear_error_and_the_file_ends_after_the_epoch_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = PerClassLossMonitor(verbose=False, stages=["train"])
    write = os.write
    sizes: list[int] = []

    class FullDisk:
        """After epoch 0, a write to the CSV writes half of what it is given, and then fails as a full disk does."""

        def __init__(self) -> None:
            self.partial_write = False

        def __call__(self, descriptor: int, data: bytes) -> int:
            path = monitor.csv_path
            ours = path is not None and os.path.exists(path) and os.fstat(descriptor).st_ino == os.stat(path).st_ino
            if not ours or not sizes:
                written = write(descriptor, data)
                if ours:
                    sizes.append(os.fstat(descriptor).st_size)
                return written
            if not self.partial_write:
                self.partial_write = True
                return write(descriptor, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    full_disk = FullDisk()
    monkeypatch.setattr(os, "write", full_disk)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3, limit_val_batches=0)
    with pytest.raises(OSError, match=r"could not write epoch 1 to '.*per_class_loss\.csv' \(No space left on device\)") as raised:
        trainer.fit(TableModel(CrossEntropyLoss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET))
    assert raised.value.errno == errno.ENOSPC
    assert full_disk.partial_write  # half of epoch 1 had reached the file before the disk was full
    monkeypatch.undo()
    assert monitor.csv_path is not None
    assert os.path.getsize(monitor.csv_path) == sizes[0]  # cut back: it ends after epoch 0, with no torn row
    rows = read_csv(monitor.csv_path)
    assert [(row["epoch"], row["stage"]) for row in rows] == [("0", "train")] * 3


def test_a_run_without_a_checkpoint_replaces_a_file_left_by_an_earlier_run(tmp_path: Path) -> None:
    (tmp_path / "per_class_loss.csv").write_text("epoch,stage\n0,torn")
    monitor = PerClassLossMonitor(verbose=False, stages=["train"], dirpath=str(tmp_path))
    with pytest.warns(UserWarning, match="replaces .*per_class_loss.csv', left there by an earlier run"):
        make_trainer(tmp_path, [monitor], max_epochs=1, limit_val_batches=0).fit(
            TableModel(CrossEntropyLoss(), TABLE_LOGITS), datamodule=TableData(TABLE_TARGET)
        )
    assert [row["epoch"] for row in read_csv(tmp_path / "per_class_loss.csv")] == ["0"] * 3
