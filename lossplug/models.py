"""The demo model: one small network that serves every loss (logits and embeddings)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lossplug.losses import CrossEntropyLoss
from lossplug.mixin import LossLike, LossMixin
from lossplug.shared_checks import check_number, check_positive_int


class DemoClassifier(LossMixin, L.LightningModule):
    """A two-layer MLP encoder giving ``"embeddings"`` and a linear head giving ``"logits"``.

    Cross-entropy and focal losses read the logits, ArcFace and center loss the embeddings, and a
    :class:`~lossplug.losses.WeightedSum` routes each term. Predictions rank classes by the logits,
    or by ArcFace's cosine scores when the loss is ArcFace (its class weights are the classifier).
    Steps log their loss; accuracy, macro-F1, recall and calibration come from
    :class:`~lossplug.callbacks.LongTailReport`, which serves any lossplug model.

    Args:
        loss: The loss (picked with ``class_path``/``init_args`` in YAML); ``None`` is lossplug's
            cross-entropy.
        num_classes: Number of classes; the ``lossplug`` command fills it in from the data module
            (``None`` is an error anywhere else).
        input_dim: Input features (64: the demo's 8x8 digits).
        hidden_dim: Hidden layer width.
        embedding_dim: Embedding size (ArcFace's and center loss's ``embedding_dim``/``feature_dim``).
        lr: Learning rate of AdamW (the loss's own parameters take their loss's ``lr`` where it sets one).
        weight_decay: AdamW weight decay of the network (the loss's parameters get none).
        class_names: Names of the classes, for logs; the ``lossplug`` command fills them in from the
            data module when it has them.
    """

    def __init__(
        self,
        loss: LossLike | None = None,
        num_classes: int | None = None,
        input_dim: int = 64,
        hidden_dim: int = 128,
        embedding_dim: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(loss=loss if loss is not None else CrossEntropyLoss())
        self.save_hyperparameters()
        self.num_classes = check_positive_int("num_classes", num_classes, minimum=2)
        self.lr = check_number("lr", lr, 0.0, low_closed=False)
        self.weight_decay = check_number("weight_decay", weight_decay, 0.0)
        self.class_names = class_names or [str(index) for index in range(self.num_classes)]
        self.encoder = nn.Sequential(
            nn.Linear(check_positive_int("input_dim", input_dim), check_positive_int("hidden_dim", hidden_dim)),
            nn.ReLU(),
            nn.Linear(hidden_dim, check_positive_int("embedding_dim", embedding_dim)),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embedding_dim, self.num_classes))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        embeddings = self.encoder(features)
        return {"logits": self.head(embeddings), "embeddings": embeddings}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, target = batch
        loss = self.compute_loss(self(features), self.loss_target(target, self.num_classes))
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.prediction_logits(self(batch[0])).argmax(dim=1)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        features, target = batch
        loss = self.compute_loss(self(features), self.loss_target(target, self.num_classes))
        self.log(f"{stage}/loss", loss, prog_bar=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameter_groups(self.lr, self.weight_decay))
