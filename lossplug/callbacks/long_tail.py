r"""LongTailReport: how a model does on rare classes, for any lossplug model: per-class and shot-group
recall, accuracy, macro-F1 and calibration."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassRecall,
)
from typing_extensions import override

from lossplug.losses.base import BaseLoss
from lossplug.mixin import LossMixin
from lossplug.output import LossOutput
from lossplug.shared_checks import check_bool, check_class_counts, check_positive_int

_PREFIX = {"validate": "val", "test": "test"}
_FLUSH_VALUES = 1 << 20  # class scores kept before they are added: bounds what an evaluation holds


def shot_groups(class_counts: Sequence[int] | Tensor, many_shot: int = 100, few_shot: int = 20) -> list[str]:
    """Each class's group by its training samples: ``"many"`` (more than ``many_shot``), ``"few"`` (fewer
    than ``few_shot``) or ``"medium"`` (the rest), as in Liu et al. 2019 (OLTR).

    Example:
        >>> shot_groups([500, 100, 20, 19])
        ['many', 'medium', 'medium', 'few']
    """
    counts = check_class_counts(class_counts).tolist()
    return ["many" if count > many_shot else "few" if count < few_shot else "medium" for count in counts]


def group_recall(recall: Sequence[float], groups: Sequence[str]) -> dict[str, float]:
    """The mean recall of each group's classes (NaN for a group without classes).

    Example:
        >>> group_recall([1.0, 0.5, 0.0], ["many", "few", "few"])
        {'many': 1.0, 'medium': nan, 'few': 0.25}
    """
    means = {}
    for group in ("many", "medium", "few"):
        values = [value for value, of in zip(recall, groups, strict=True) if of == group]
        means[group] = math.fsum(values) / len(values) if values else math.nan
    return means


class LongTailReport(Callback):
    r"""At the end of every validation and test epoch: accuracy, macro-F1, each class's recall, the mean
    recall of the many-, medium- and few-shot classes, and the expected calibration error.

    Classes are grouped by their training samples :math:`n_c`: many-shot :math:`n_c >` ``many_shot``,
    few-shot :math:`n_c <` ``few_shot``, medium-shot the rest; a group's recall is the mean recall of
    its classes (NaN for an empty group). The expected calibration error (Guo et al. 2017) bins the
    top-1 confidence :math:`\hat p_i` into ``bins`` bins :math:`B_b = [b/\text{bins}, (b+1)/\text{bins})`, as
    torchmetrics does (a confidence of exactly 1 is a bin of its own):

    .. math::
        \mathrm{ECE} = \sum_b \frac{|B_b|}{N} \left| \frac{1}{|B_b|}\sum_{i \in B_b} \mathbb{1}[\hat y_i = y_i]
        - \frac{1}{|B_b|}\sum_{i \in B_b} \hat p_i \right|

    The values are also in :attr:`results`, per stage. It reads the class scores the model predicts with (:meth:`~lossplug.mixin.LossMixin.prediction_logits`,
    post-hoc logit adjustment included) and the targets of its ``compute_loss`` calls: class indices
    (ignored ones left out), or, for binary and multi-label losses, the one positive class of each
    target row (rows with none or several positives are left out). The sums are torchmetrics states, summed over processes. ``{val,test}/acc``, ``/macro_f1``,
    ``/recall_many``, ``/recall_medium``, ``/recall_few`` and ``/ece`` go through ``pl_module.log``: to
    every logger, to ``trainer.callback_metrics`` (``ModelCheckpoint`` and ``EarlyStopping`` can
    monitor them) and to what ``trainer.test`` returns; ``{val,test}/recall/{class}`` to every logger.

    Args:
        many_shot: Classes with more training samples than this are many-shot.
        few_shot: Classes with fewer training samples than this are few-shot; at most ``many_shot``.
        bins: Bins of the calibration error.
        class_counts: Training samples per class; ``None`` reads the data module's ``class_counts``
            (without counts, the groups are not reported, with a warning).
        class_names: Names of the classes for the recall keys; ``None`` takes the data module's or the
            model's ``class_names``, else the indices.
        class_scalars: Log each class's recall to the loggers too (one scalar per class: turn it off
            for many thousands of classes); :attr:`results` always holds them.

    Example:
        >>> LongTailReport(many_shot=100, few_shot=20)
        LongTailReport(many_shot=100, few_shot=20, bins=15)
    """

    prediction_stages = ("validate", "test")

    def __init__(
        self,
        many_shot: int = 100,
        few_shot: int = 20,
        bins: int = 15,
        class_counts: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        class_scalars: bool = True,
    ) -> None:
        self.many_shot = check_positive_int("many_shot", many_shot, minimum=0)
        self.few_shot = check_positive_int("few_shot", few_shot, minimum=0)
        if self.few_shot > self.many_shot:
            raise ValueError(
                f"Expected argument `few_shot` to be at most many_shot={self.many_shot}, but got {few_shot}."
            )
        self.bins = check_positive_int("bins", bins)
        self.class_counts = None if class_counts is None else check_class_counts(class_counts)
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.class_scalars = check_bool("class_scalars", class_scalars)
        self.results: dict[str, dict[str, float]] = {}
        """The last epoch's values of each stage (``"validate"``, ``"test"``), per-class recall included."""
        self._pending: list[tuple[Tensor, Tensor, Tensor | None]] = []  # (scores, targets, valid) not yet added
        self._pending_values = 0
        self._metrics: MetricCollection | None = None
        self._stepped_aside = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(many_shot={self.many_shot}, few_shot={self.few_shot}, bins={self.bins})"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate", "test"):
            return
        if not isinstance(pl_module, LossMixin):
            raise TypeError(
                f"{type(self).__name__} reads the predictions of a lossplug model, but {type(pl_module).__name__} does "
                "not use LossMixin."
            )
        self._stepped_aside = not isinstance(getattr(pl_module, "loss", None), BaseLoss)
        if self._stepped_aside:
            rank_zero_warn(
                f"{type(self).__name__} is off for this run: it reads what a lossplug loss records, and the model's "
                f"loss is {type(pl_module.loss).__module__}.{type(pl_module.loss).__name__}. Use a lossplug loss "
                "(lossplug.losses.CrossEntropyLoss gives torch's values) for the report."
            )
            return
        pl_module.add_loss_observer(self)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(pl_module, LossMixin):
            pl_module.remove_loss_observer(self)

    def observe_loss(self, output: LossOutput, stage: str, predictions: Tensor | None) -> None:
        """Keep an evaluation step's class scores and targets: a list append, added in batches."""
        if predictions is None or stage not in _PREFIX or (output.task == "binary" and output.target.ndim < 2):
            return  # a plain yes/no target has no classes to report
        self._pending.append((predictions, output.target, None if output.task == "binary" else output.valid))
        self._pending_values += predictions.numel()
        if self._pending_values >= _FLUSH_VALUES:
            self._flush()

    def _flush(self) -> None:
        """Add the kept steps to the metrics: the targets' classes, less ignored ones, against the scores."""
        if not self._pending:
            return
        scores = torch.cat([predictions.movedim(1, -1).reshape(-1, predictions.shape[1]) for predictions, _, _ in self._pending])
        # class indices (ignored ones left out), or a binary loss's one-hot target: its one positive
        # class, and rows without exactly one positive (multi-label, or none) left out
        targets, keeps = [], []
        for _, target, valid in self._pending:
            if valid is None:
                positive = target > 0.5
                targets.append(positive.float().argmax(dim=1).reshape(-1))
                keeps.append((positive.sum(dim=1) == 1).reshape(-1))
            else:
                targets.append(target.reshape(-1))
                keeps.append(valid.reshape(-1))
        self._pending, self._pending_values = [], 0
        keep = torch.cat(keeps)
        scores, target = scores[keep], torch.cat(targets)[keep]
        if self._metrics is None:
            self._metrics = self._make_metrics(scores.shape[1]).to(scores.device)
        self._metrics.update(scores.float().softmax(dim=1), target.long())

    def _make_metrics(self, num_classes: int) -> MetricCollection:
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "macro_f1": MulticlassF1Score(num_classes, average="macro"),
                "recall": MulticlassRecall(num_classes, average="none"),
                "ece": MulticlassCalibrationError(num_classes, n_bins=self.bins, norm="l1"),
            }
        )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._pending, self._pending_values = [], 0
            if self._metrics is not None:
                self._metrics.reset()
            return
        self._report(trainer, pl_module, "validate")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Sum over processes, and log the epoch's values from every process (they are the same on each)."""
        if self._stepped_aside:
            return
        self._flush()
        if self._metrics is None:
            return
        computed = self._metrics.compute()  # a collective under DDP
        self._metrics.reset()
        recall = computed["recall"].tolist()
        prefix = _PREFIX[stage]
        values = {f"{prefix}/acc": float(computed["acc"]), f"{prefix}/macro_f1": float(computed["macro_f1"])}
        counts = self._counts(trainer, len(recall))
        if counts is not None:
            groups = group_recall(recall, shot_groups(counts, self.many_shot, self.few_shot))
            values.update({f"{prefix}/recall_{group}": value for group, value in groups.items()})
        values[f"{prefix}/ece"] = float(computed["ece"])
        # Lightning's `log` costs grow with the number of keys: the headline values go through it (what
        # callbacks monitor and `trainer.test` returns), the per-class recall straight to the loggers
        pl_module.log_dict(values, sync_dist=False)
        names = self._names(trainer, pl_module, len(recall))
        per_class = {f"{prefix}/recall/{name}": value for name, value in zip(names, recall, strict=True)}
        if self.class_scalars:
            for logger in trainer.loggers:
                logger.log_metrics({"epoch": trainer.current_epoch, **per_class}, step=trainer.global_step)
        self.results[stage] = {**values, **per_class}

    def _names(self, trainer: pl.Trainer, pl_module: pl.LightningModule, num_classes: int) -> list[str]:
        datamodule = getattr(trainer, "datamodule", None)
        for names in (self.class_names, getattr(datamodule, "class_names", None), getattr(pl_module, "class_names", None)):
            if names is not None and len(names) == num_classes:
                return [str(name) for name in names]
        return [str(index) for index in range(num_classes)]

    def _counts(self, trainer: pl.Trainer, num_classes: int) -> Tensor | None:
        counts = self.class_counts
        if counts is None:
            given = getattr(getattr(trainer, "datamodule", None), "class_counts", None)
            counts = None if given is None else check_class_counts(given)
        if counts is None or len(counts) != num_classes:
            rank_zero_warn(
                f"{type(self).__name__}: no training class counts for the {num_classes} classes (the data module's "
                "`class_counts` or the argument `class_counts`): the many/medium/few-shot recalls are not reported."
            )
            return None
        return counts

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pending": [], "_pending_values": 0, "_metrics": None}
