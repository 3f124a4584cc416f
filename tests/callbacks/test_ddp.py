"""Two processes (ddp_spawn, gloo on the CPU) give the same sums as one."""

from __future__ import annotations

from pathlib import Path

import torch
from callback_helpers import TableData, TableModel, make_trainer, read_csv

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
