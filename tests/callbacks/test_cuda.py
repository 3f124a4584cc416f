"""The diagnostics on a CUDA device: the rows a CPU run writes, and no host-device sync to observe a step.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests/callbacks/test_cuda.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from callback_helpers import DigitsMLP, digits_loader, make_trainer, read_csv

from lossplug.callbacks import HardnessHistogram, PerClassLossMonitor
from lossplug.losses import FocalLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class SyncRefusingMonitor(PerClassLossMonitor):
    """Fails the run if observing a step makes the host wait for the device."""

    def observe_loss(self, output: Any, stage: str, predictions: Any = None) -> None:
        torch.cuda.set_sync_debug_mode("error")
        try:
            super().observe_loss(output, stage, predictions)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def _fit(root: Path, accelerator: str) -> dict[str, list[dict[str, str]]]:
    L.seed_everything(0)
    model = DigitsMLP(FocalLoss(gamma=2.0))  # initialized on the CPU: the same weights for both runs
    monitor = SyncRefusingMonitor(dirpath=root) if accelerator == "gpu" else PerClassLossMonitor(dirpath=root)
    trainer = make_trainer(root, [monitor, HardnessHistogram(dirpath=root, plot=False)], accelerator=accelerator)
    trainer.fit(model, digits_loader(shuffle=False), digits_loader(shuffle=False))
    return {name: read_csv(root / name) for name in ("per_class_loss.csv", "hardness_histogram.csv")}


def test_a_fit_on_cuda_writes_the_rows_of_a_cpu_fit(tmp_path: Path) -> None:
    cpu, gpu = _fit(tmp_path / "cpu", "cpu"), _fit(tmp_path / "gpu", "gpu")
    per_class = zip(cpu["per_class_loss.csv"], gpu["per_class_loss.csv"], strict=True)
    for expected, got in per_class:
        assert [got[key] for key in ("epoch", "stage", "term", "class", "count")] == [
            expected[key] for key in ("epoch", "stage", "term", "class", "count")
        ]
        # two epochs of training in float32 on two devices: the same model, up to rounding
        assert float(got["loss_sum"]) == pytest.approx(float(expected["loss_sum"]), rel=1e-2, abs=1e-3)
    hardness = zip(cpu["hardness_histogram.csv"], gpu["hardness_histogram.csv"], strict=True)
    for expected, got in hardness:
        assert [got[key] for key in ("epoch", "stage", "group", "bin_low")] == [
            expected[key] for key in ("epoch", "stage", "group", "bin_low")
        ]
        assert abs(int(got["count"]) - int(expected["count"])) <= 3  # a p_t on a bin edge may round across it
