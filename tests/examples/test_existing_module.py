"""The adoption example: a LightningModule written without lossplug, before and after the mixin."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from lossplug.losses import FocalLoss

EXAMPLE = Path(__file__).parents[2] / "examples" / "existing_module"
sys.path.insert(0, str(EXAMPLE))

import after  # noqa: E402
import before  # noqa: E402
from data import BreastCancerData  # noqa: E402


def _fit(model: L.LightningModule, tmp_path: Path) -> dict[str, float]:
    torch.manual_seed(0)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, BreastCancerData())
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def test_adopting_the_mixin_changes_a_few_lines() -> None:
    old = (EXAMPLE / "before.py").read_text().splitlines()
    new = (EXAMPLE / "after.py").read_text().splitlines()
    added = [line for line in difflib.unified_diff(old, new, lineterm="", n=0) if line.startswith("+")]
    marked = [line for line in added if "# lossplug" in line]
    assert 5 <= len(marked) <= 8
    removed = [line for line in difflib.unified_diff(old, new, lineterm="", n=0) if line.startswith("-")]
    assert len(removed) <= 10


def test_after_trains_like_before_with_its_default_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = before.LitClassifier()
    torch.manual_seed(0)
    adopted = after.LitClassifier()
    assert torch.equal(plain.net[0].weight, adopted.net[0].weight)
    plain_metrics, adopted_metrics = _fit(plain, tmp_path), _fit(adopted, tmp_path)
    assert adopted_metrics["val_loss"] == pytest.approx(plain_metrics["val_loss"], rel=1e-4)
    assert adopted_metrics["val_acc"] > 0.9


def test_after_takes_any_loss_in_its_own_lightning_cli(tmp_path: Path) -> None:
    cli = LightningCLI(
        after.LitClassifier,
        BreastCancerData,
        args=["--model.loss=FocalLoss", "--model.loss.gamma=1.5", "--model.loss.alpha=inverse_frequency"],
        run=False,
    )
    assert isinstance(cli.model.loss, FocalLoss)
    assert cli.model.loss.gamma == 1.5
    metrics = _fit(cli.model, tmp_path)
    assert cli.model.loss.alpha is not None
    assert cli.model.loss.alpha.max() == 1.0
    assert metrics["val_acc"] > 0.9


def test_the_lossplug_command_trains_it_as_the_readme_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lossplug.cli import build_cli

    monkeypatch.chdir(tmp_path)
    quick = ["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false"]
    cli = build_cli(["fit", "--model", "after.LitClassifier", "--data", "data.BreastCancerData", "--config", "focal", *quick])
    assert isinstance(cli.model.loss, FocalLoss)
    torch.testing.assert_close(cli.model.loss.alpha.max(), torch.tensor(1.0))  # from the data's class counts
    rows = (Path(cli.trainer.log_dir) / "per_class_loss.csv").read_text().splitlines()
    assert {row.split(",")[3] for row in rows[1:]} == {"malignant", "benign"}  # the data module's class names
