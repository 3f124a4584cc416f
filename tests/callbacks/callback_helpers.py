"""Tiny models, data and trainers for the diagnostics callback tests (importable by ddp_spawn workers)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lossplug.mixin import LossLike, LossMixin

# eight samples of three classes for TableModel and TableData: p_t of sample 2 is exactly 1; sample 4 is ignored
TABLE_LOGITS = torch.tensor(
    [
        [2.0, 0.0, -1.0],
        [0.5, 0.2, 0.1],
        [100.0, 0.0, 0.0],
        [-1.0, 3.0, 0.0],
        [0.0, 0.0, 0.0],
        [1.0, 2.0, 3.0],
        [0.3, -0.3, 0.0],
        [0.0, 1.0, -2.0],
    ]
)
TABLE_TARGET = torch.tensor([0, 0, 0, 1, -100, 2, 2, 1])
# the same eight samples as multi-label targets (every third entry positive) and as 2-d embeddings
TABLE_MULTI_LABEL_TARGET = (torch.arange(24).reshape(8, 3) % 3 == 0).float()
TABLE_EMBEDDINGS = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))


class TableModel(LossMixin, L.LightningModule):
    """Gives each sample fixed logits (and embeddings) looked up by its id: the losses are known exactly.

    Nothing is learned (the step returns the loss detached, plus a zero times the one parameter), so
    every epoch and every process layout sees the same per-sample losses, NaN ones included.
    """

    def __init__(
        self,
        loss: LossLike,
        logits: Tensor,
        embeddings: Tensor | None = None,
        validation_loss: bool = True,
        through_mixin: bool = True,
    ) -> None:
        super().__init__(loss=loss)
        self.register_buffer("logits", logits.clone())
        self.register_buffer("embeddings", None if embeddings is None else embeddings.clone())
        self.zero = nn.Parameter(torch.zeros(()))
        self.validation_loss = validation_loss
        self.through_mixin = through_mixin

    def forward(self, ids: Tensor) -> Tensor | dict[str, Tensor]:
        logits = self.logits[ids]
        if self.embeddings is None:
            return logits
        return {"logits": logits, "embeddings": self.embeddings[ids]}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        ids, target = batch
        loss = self.compute_loss(self(ids), target) if self.through_mixin else self.loss(self(ids), target)
        return loss.detach() + 0 * self.zero

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.validation_loss:
            ids, target = batch
            self.compute_loss(self(ids), target)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class PlainModel(L.LightningModule):
    """A LightningModule without the mixin."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 3)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self.net(batch[0].float()[:, None].expand(-1, 2)), batch[1])

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class TableData(L.LightningDataModule):
    """Sample ids with their targets, in order (no shuffling), for training and validation alike."""

    def __init__(self, target: Tensor, batch_size: int = 4, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.target = target
        self.batch_size = batch_size
        if class_names is not None:
            self.class_names = list(class_names)

    def _loader(self) -> DataLoader:
        ids = torch.arange(self.target.shape[0])
        return DataLoader(TensorDataset(ids, self.target), batch_size=self.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()


class ShardedTableData(TableData):
    """TableData whose training batches are split over the processes by hand and resumable mid-epoch."""

    def train_dataloader(self) -> Any:
        ids, size = torch.arange(self.target.shape[0]), self.batch_size
        rank, world = self.trainer.global_rank, self.trainer.world_size
        starts = range(size * rank, len(ids), size * world)
        return ResumableLoader([(ids[start : start + size], self.target[start : start + size]) for start in starts])


class DigitsMLP(LossMixin, L.LightningModule):
    """A small MLP on scikit-learn's 8x8 digits."""

    def __init__(self, loss: LossLike, hidden: int = 32, lr: float = 0.05) -> None:
        super().__init__(loss=loss)
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, target = batch
        return self.compute_loss(self.net(features), target)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        features, target = batch
        self.log("val_loss", self.compute_loss(self.net(features), target))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digits_loader(batch_size: int = 128, shuffle: bool = True) -> DataLoader:
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    target = torch.tensor(digits.target, dtype=torch.long)
    return DataLoader(TensorDataset(features, target), batch_size=batch_size, shuffle=shuffle)


class ResumableLoader:
    """The batches of ``loader`` in a fixed order, resumable mid-epoch (Lightning saves its state in checkpoints)."""

    def __init__(self, loader: Any) -> None:
        self.batches = list(loader)
        self.consumed = self.resume_at = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        start, self.resume_at = self.resume_at, 0
        for index in range(start, len(self.batches)):
            self.consumed = index + 1
            yield self.batches[index]

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_at = state["consumed"] % len(self.batches)  # a finished epoch: the next one starts afresh


class StopAfterCheckpoint(L.Callback):
    """Raises at the next training batch or training epoch end after the ``count``-th checkpoint was saved:
    the run stops between a checkpoint and the end of its epoch. Put it before the diagnostics callbacks."""

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.saved = 0

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.saved += 1

    def _stop(self) -> None:
        if self.saved >= self.count:
            raise RuntimeError(f"stopped after checkpoint {self.saved}")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._stop()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()


def make_trainer(
    root: str | os.PathLike[str], callbacks: Sequence[Any], max_epochs: int = 2, **kwargs: Any
) -> L.Trainer:
    options: dict[str, Any] = {
        "default_root_dir": root,
        "max_epochs": max_epochs,
        "logger": CSVLogger(root),
        "callbacks": list(callbacks),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    options.update(kwargs)
    return L.Trainer(**options)


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def rows_of(rows: list[dict[str, str]], **where: Any) -> list[dict[str, str]]:
    return [row for row in rows if all(row[key] == str(value) for key, value in where.items())]
