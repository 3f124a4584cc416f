"""A user's own Lightning project, not the demo: 6 named classes, its own argument names and embedding size.

The `lossplug` command tests train it by class path (``tests.user_project.ZooNet``) and by YAML.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lossplug import LossLike, LossMixin
from lossplug.losses import CrossEntropyLoss

ANIMALS = ["ant", "bee", "cat", "dog", "eel", "fox"]
COUNTS = [40, 30, 20, 12, 8, 4]  # training samples per class: long-tailed


class ZooData(L.LightningDataModule):
    """Six Gaussian blobs in 5 dimensions, long-tailed for training, balanced for validation and test."""

    def __init__(self, spread: float = 0.6, batch: int = 16) -> None:
        super().__init__()
        self.num_classes = len(ANIMALS)
        self.class_names = list(ANIMALS)
        self.class_counts = torch.tensor(COUNTS)
        self.batch = batch
        generator = torch.Generator().manual_seed(0)
        centers = 2.0 * torch.randn(self.num_classes, 5, generator=generator)

        def split(counts: list[int]) -> TensorDataset:
            target = torch.cat([torch.full((count,), label) for label, count in enumerate(counts)])
            features = centers[target] + spread * torch.randn(len(target), 5, generator=generator)
            return TensorDataset(features, target)

        self.train_set, self.val_set, self.test_set = split(COUNTS), split([6] * 6), split([6] * 6)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch)


class ZooNet(LossMixin, L.LightningModule):
    """An encoder to ``embedding_dim`` and a linear head; its own names for width and learning rate."""

    def __init__(
        self,
        loss: LossLike | None = None,
        num_classes: int | None = None,
        width: int = 24,
        embedding_dim: int = 12,
        learning_rate: float = 0.02,
    ) -> None:
        super().__init__(loss=loss if loss is not None else CrossEntropyLoss())
        self.save_hyperparameters()
        if num_classes is None:
            raise ValueError("Expected argument `num_classes`, but got None.")
        self.num_classes = num_classes
        self.encoder = nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, embedding_dim))
        self.head = nn.Linear(embedding_dim, num_classes)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        embeddings = self.encoder(features)
        return {"logits": self.head(embeddings), "embeddings": embeddings}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, target = batch
        return self.compute_loss(self(features), self.loss_target(target, self.num_classes))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor]) -> None:
        features, target = batch
        output = self(features)
        self.log(f"{stage}/loss", self.compute_loss(output, self.loss_target(target, self.num_classes)))
        self.log(f"{stage}/acc", (self.prediction_logits(output).argmax(1) == target).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameter_groups(self.hparams.learning_rate))


class Unrelated(L.LightningModule):
    """A LightningModule without the mixin."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.net = nn.Linear(5, width)


class UncountedZooData(ZooData):
    """ZooData without ``class_counts``: computed alphas and priors have nothing to read."""

    def __init__(self) -> None:
        super().__init__()
        del self.class_counts


class UnnumberedZooData(ZooData):
    """ZooData without ``num_classes``."""

    def __init__(self) -> None:
        super().__init__()
        del self.num_classes


class LogitsOnly(LossMixin, L.LightningModule):
    """A mixin model with no embeddings and no ``embedding_dim`` argument."""

    def __init__(self, loss: LossLike | None = None) -> None:
        super().__init__(loss=loss if loss is not None else CrossEntropyLoss())
        self.net = nn.Linear(5, len(ANIMALS))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.compute_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SlowSteps(L.Callback):
    """Sleeps after every training batch: epochs long enough to kill a run in the middle of one."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        import time

        time.sleep(self.seconds)


class NoLossByDefault(LogitsOnly):
    """A mixin model whose loss is optional, with no default of its own."""

    def __init__(self, loss: LossLike | None = None) -> None:
        LossMixin.__init__(self, loss=loss)
        self.net = nn.Linear(5, len(ANIMALS))
