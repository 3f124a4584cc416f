"""DemoClassifier: one network for every loss."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lossplug.callbacks import LongTailReport
from lossplug.data import DigitsDataModule
from lossplug.losses import ArcFaceLoss, BinaryFocalLoss, CrossEntropyLoss, FocalLoss
from lossplug.models import DemoClassifier


def test_forward_gives_logits_and_embeddings() -> None:
    model = DemoClassifier(CrossEntropyLoss(), num_classes=10, embedding_dim=8)
    output = model(torch.randn(5, 64))
    assert output["logits"].shape == (5, 10)
    assert output["embeddings"].shape == (5, 8)


@pytest.mark.parametrize(
    ("loss", "lr"),
    [
        (FocalLoss(gamma=2.0), 3e-3),
        # ten one-vs-rest sigmoid decisions learn more slowly than one softmax: a larger step
        (BinaryFocalLoss(alpha=0.5, normalization="positives"), 1e-2),
        (ArcFaceLoss(10, 32, scale=16.0, margin=0.3), 3e-3),
    ],
    ids=["focal", "binary-focal", "arcface"],
)
def test_training_improves_the_balanced_test_accuracy(loss: torch.nn.Module, lr: float, tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = DigitsDataModule()
    model = DemoClassifier(loss, num_classes=10, lr=lr)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[report := LongTailReport()],  # accuracy, macro-F1 and recall
    )
    before = trainer.test(model, data, verbose=False)[0]
    trainer.fit(model, data)
    after = trainer.test(model, data, verbose=False)[0]
    assert before["test/acc"] < 0.3
    assert after["test/acc"] > 0.7
    assert after["test/macro_f1"] > 0.6
    assert {f"test/recall/{digit}" for digit in range(10)} <= report.results["test"].keys()


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"`lr` to be a number > 0, but got 0"):
        DemoClassifier(CrossEntropyLoss(), num_classes=10, lr=0)
    with pytest.raises(ValueError, match=r"`num_classes` to be an integer >= 2, but got 1"):
        DemoClassifier(CrossEntropyLoss(), num_classes=1)
    with pytest.raises(ValueError, match=r"`num_classes` to be an integer >= 2, but got None"):
        DemoClassifier(CrossEntropyLoss())
