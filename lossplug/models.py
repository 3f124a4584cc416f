"""The demo model: one small network that serves every loss (logits and embeddings)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from lossplug.mixin import LossLike, LossMixin
from lossplug.shared_checks import check_number, check_positive_int


class DemoClassifier(LossMixin, L.LightningModule):
    """A two-layer MLP encoder giving ``"embeddings"`` and a linear head giving ``"logits"``.

    Cross-entropy and focal losses read the logits, ArcFace and center loss the embeddings, and a
    :class:`~lossplug.losses.WeightedSum` routes each term. Predictions rank classes by the logits,
    or by ArcFace's cosine scores when the loss is ArcFace (its class weights are the classifier).
    Validation and test log accuracy, macro-F1 and per-class recall (torchmetrics).

    Args:
        loss: The loss (picked with ``class_path``/``init_args`` in YAML).
        num_classes: Number of classes (linked from the data module by the ``lossplug`` command).
        input_dim: Input features (linked from the data module).
        hidden_dim: Hidden layer width.
        embedding_dim: Embedding size (ArcFace's and center loss's ``embedding_dim``/``feature_dim``).
        lr: Learning rate of AdamW.
        loss_lr: Learning rate of the loss's own parameters (ArcFace weights, centers); ``None`` uses ``lr``.
        weight_decay: AdamW weight decay of the network (the loss's parameters get none).
        class_names: Names of the classes, for logs (linked from the data module).
    """

    def __init__(
        self,
        loss: LossLike,
        num_classes: int = 10,
        input_dim: int = 64,
        hidden_dim: int = 128,
        embedding_dim: int = 32,
        lr: float = 3e-3,
        loss_lr: float | None = None,
        weight_decay: float = 1e-4,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(loss=loss)
        self.save_hyperparameters()
        self.num_classes = check_positive_int("num_classes", num_classes, minimum=2)
        self.lr = check_number("lr", lr, 0.0, low_closed=False)
        self.loss_lr = None if loss_lr is None else check_number("loss_lr", loss_lr, 0.0, low_closed=False)
        self.weight_decay = check_number("weight_decay", weight_decay, 0.0)
        self.class_names = class_names or [str(index) for index in range(num_classes)]
        self.encoder = nn.Sequential(
            nn.Linear(check_positive_int("input_dim", input_dim), check_positive_int("hidden_dim", hidden_dim)),
            nn.ReLU(),
            nn.Linear(hidden_dim, check_positive_int("embedding_dim", embedding_dim)),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embedding_dim, num_classes))
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_recall = MulticlassRecall(num_classes, average="none")
        self.test_recall = MulticlassRecall(num_classes, average="none")

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        embeddings = self.encoder(features)
        return {"logits": self.head(embeddings), "embeddings": embeddings}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, target = batch
        loss = self.compute_loss(self(features), self.loss_target(target, self.num_classes))
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics, self.val_recall)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics, self.test_recall)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.prediction_logits(self(batch[0])).argmax(dim=1)

    def _evaluate(
        self, batch: tuple[Tensor, Tensor], stage: str, metrics: MetricCollection, recall: MulticlassRecall
    ) -> None:
        features, target = batch
        output = self(features)
        loss = self.compute_loss(output, self.loss_target(target, self.num_classes))
        predictions = self.prediction_logits(output)
        metrics.update(predictions, target)
        recall.update(predictions, target)
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log_dict(metrics, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_recall("val", self.val_recall)

    def on_test_epoch_end(self) -> None:
        self._log_recall("test", self.test_recall)

    def _log_recall(self, stage: str, recall: MulticlassRecall) -> None:
        values = recall.compute()
        recall.reset()
        self.log_dict({f"{stage}/recall/{name}": value for name, value in zip(self.class_names, values, strict=True)})

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameter_groups(self.lr, self.loss_lr, self.weight_decay))
