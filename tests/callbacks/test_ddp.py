"""Two processes (ddp_spawn, gloo on the CPU) give the same sums as one, also when resumed mid-epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from callback_helpers import ShardedTableData, StopAfterCheckpoint, TableData, TableModel, make_trainer, read_csv
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor
from lossplug.losses import FocalLoss


def test_two_processes_give_the_sums_of_one(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    # 16 samples = 2 processes x batch 4 x 2 batches: nothing is padded, every sample is seen once
    logits = 3 * torch.randn(16, 5, generator=generator)
    target = torch.randint(0, 5, (16,), generator=generator)
    csvs = {}
    for name, options in (("one", {}), ("two", {"strategy": "ddp_spawn", "devices": 2})):
        out = tmp_path / name
        callbacks = [
            PerClassLossMonitor(dirpath=str(out), verbose=False),
            HardnessHistogram(dirpath=str(out), plot=False, verbose=False),
        ]
        trainer = make_trainer(out, callbacks, max_epochs=1, num_sanity_val_steps=0, **options)
        trainer.fit(TableModel(FocalLoss(gamma=2.0), logits), datamodule=TableData(target, batch_size=4))
        assert trainer.world_size == (2 if options else 1)
        csvs[name] = {file: read_csv(out / file) for file in ("per_class_loss.csv", "hardness_histogram.csv")}

    for file in ("per_class_loss.csv", "hardness_histogram.csv"):
        assert {row["stage"] for row in csvs["one"][file]} == {"train", "validate"}
        # float64 sums of float32 losses are exact here, so even the order of the additions does not show
        assert csvs["two"][file] == csvs["one"][file]
    # each process saw 8 samples: 16 is the sum over both, neither counted twice
    assert sum(int(row["count"]) for row in csvs["two"]["per_class_loss.csv"] if row["stage"] == "train") == 16


def test_two_processes_resumed_mid_epoch_write_what_they_write_uninterrupted(tmp_path: Path) -> None:
    """The running epoch's sums in the checkpoint are summed over both processes (a collective in state_dict)."""
    generator = torch.Generator().manual_seed(0)
    logits, target = 3 * torch.randn(16, 5, generator=generator), torch.randint(0, 5, (16,), generator=generator)

    def run(root: Path, checkpoint: Any = None, ckpt_path: str | None = None) -> None:
        callbacks = [PerClassLossMonitor(verbose=False), HardnessHistogram(plot=False, verbose=False)]
        if checkpoint is not None:
            callbacks = [StopAfterCheckpoint(), *callbacks, checkpoint]
        trainer = make_trainer(root, callbacks, max_epochs=2, logger=CSVLogger(root, version=0), num_sanity_val_steps=0,
                               enable_checkpointing=checkpoint is not None, strategy="ddp_spawn", devices=2)  # fmt: skip
        trainer.fit(TableModel(FocalLoss(gamma=2.0), logits), datamodule=ShardedTableData(target, batch_size=2), ckpt_path=ckpt_path)

    run(tmp_path / "whole")
    with pytest.raises(Exception, match="stopped after checkpoint"):
        run(tmp_path / "resumed", ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=3))
    run(tmp_path / "resumed", ckpt_path=str(tmp_path / "checkpoints" / "epoch=0-step=3.ckpt"))
    for name in ("per_class_loss.csv", "hardness_histogram.csv"):
        whole = read_csv(tmp_path / "whole" / "lightning_logs" / "version_0" / name)
        assert read_csv(tmp_path / "resumed" / "lightning_logs" / "version_0" / name) == whole
