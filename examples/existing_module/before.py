"""An existing LightningModule, written without lossplug in mind: the loss is hard-coded."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LitClassifier(L.LightningModule):
    def __init__(self, hidden_dim: int = 32, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(30, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 2))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, target = batch
        loss = F.cross_entropy(self.net(features), target)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        features, target = batch
        logits = self.net(features)
        self.log("val_loss", F.cross_entropy(logits, target))
        self.log("val_acc", (logits.argmax(1) == target).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
