"""The same LightningModule after adopting lossplug: the changed lines are marked ``# lossplug``.

Train it with the ``lossplug`` command (its loggers, diagnostics and checkpoints), from this folder::

    lossplug fit --model after.LitClassifier --data data.BreastCancerData --config focal

or with its own LightningCLI, picking any loss from the command line or YAML::

    python after.py fit --model.loss=FocalLoss --model.loss.gamma=2
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn

from lossplug import LossLike, LossMixin  # lossplug
from lossplug.losses import CrossEntropyLoss  # lossplug: the default, as before


class LitClassifier(LossMixin, L.LightningModule):  # lossplug: the mixin comes first
    def __init__(self, loss: LossLike | None = None, hidden_dim: int = 32, lr: float = 1e-2) -> None:  # lossplug
        super().__init__(loss=loss if loss is not None else CrossEntropyLoss())  # lossplug
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(30, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 2))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, target = batch
        loss = self.compute_loss(self.net(features), target)  # lossplug
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        features, target = batch
        logits = self.net(features)
        self.log("val_loss", self.compute_loss(logits, target))  # lossplug
        self.log("val_acc", (logits.argmax(1) == target).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":
    from data import BreastCancerData  # the example's data module, beside this file

    LightningCLI(LitClassifier, BreastCancerData, trainer_defaults={"max_epochs": 10})
