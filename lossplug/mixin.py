"""LossMixin: give an existing LightningModule a configurable lossplug loss and its diagnostics."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import RunningStage
from torch import Tensor, nn

from lossplug.losses.base import BaseLoss, ModelOutput, select_input
from lossplug.output import LossOutput
from lossplug.serialization import build_loss, loss_config

LossLike: TypeAlias = BaseLoss | nn.Module
"""What a model accepts as its loss: any lossplug loss, or a plain torch loss on logits."""


_STAGE_NAMES = {stage: str(stage.value) for stage in RunningStage}


class LossObserver(Protocol):
    """Receives every loss a :class:`LossMixin` model computes (the diagnostics callbacks)."""

    def observe_loss(self, output: LossOutput, stage: str) -> None:
        """Take one call's detached :class:`LossOutput`; ``stage`` is ``"train"``, ``"validate"``, ..."""


class LossMixin:
    """Add a configurable loss to a LightningModule: ``class MyModel(LossMixin, L.LightningModule)``.

    Pass the loss to ``super().__init__(loss=loss)`` and call :meth:`compute_loss` in the steps. The
    loss becomes the submodule ``self.loss``: ArcFace weights and centers are in
    ``self.parameters()``, so the optimizer trains them and checkpoints keep them. Every call hands
    its per-sample losses and p_t, detached and without a host-device sync, to the attached
    diagnostics (:mod:`lossplug.callbacks`).

    Args:
        loss: A lossplug loss, a plain torch loss on logits (``torch.nn.CrossEntropyLoss``), or its
            ``{"class_path", "init_args"}`` config.

    Example:
        >>> import lightning as L
        >>> from lossplug.losses import FocalLoss
        >>> class Model(LossMixin, L.LightningModule):
        ...     def __init__(self, loss: LossLike = FocalLoss()):
        ...         super().__init__(loss=loss)
        ...         self.net = torch.nn.Linear(4, 3)
        >>> model = Model()
        >>> model.compute_loss(torch.zeros(2, 3), torch.tensor([0, 1]))
        tensor(0.4883)
    """

    loss: nn.Module

    def __init__(self, *args: Any, loss: LossLike | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loss_observers: list[LossObserver] = []
        if loss is not None:
            self.loss = build_loss(loss)

    # -- the loss ----------------------------------------------------------------------------------
    def compute_loss(self, output: ModelOutput, target: Tensor) -> Tensor:
        """The scalar to optimize, from a logits tensor or a mapping with ``"logits"``/``"embeddings"``.

        Records, for the diagnostics, the per-sample losses, p_t and targets of this call.
        """
        loss = self._configured_loss()
        if not isinstance(loss, BaseLoss):
            return loss(select_input(output, "logits", type(loss).__name__), target)
        if loss.needs_class_counts:
            loss.set_class_counts(self._training_class_counts(loss))
        if not self._loss_observers:
            # nobody reads the per-sample record: the loss-only path (faster for some losses)
            return loss.forward_output(output, target)
        result = loss.evaluate_output(output, target)
        stage = self._stage()
        detached = _detached(result)
        for observer in self._loss_observers:
            observer.observe_loss(detached, stage)
        return result.loss

    def _configured_loss(self) -> nn.Module:
        loss = self.__dict__.get("_modules", {}).get("loss")
        if loss is None:
            raise RuntimeError(
                f"{type(self).__name__} has no loss: pass it to the mixin with `super().__init__(loss=loss)` "
                "in `__init__`."
            )
        return loss

    def _training_class_counts(self, loss: BaseLoss) -> Sequence[int] | Tensor:
        trainer = getattr(self, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        counts = getattr(datamodule, "class_counts", None)
        if counts is None:
            raise RuntimeError(
                f"{type(loss).__name__} computes its class weights from the training class counts, but "
                f"{'no data module is attached' if datamodule is None else type(datamodule).__name__ + ' has no `class_counts`'}. "
                "Give the data module a `class_counts` attribute (training samples per class), call "
                "`model.loss.set_class_counts(counts)` before training, or give `alpha` as one weight per class."
            )
        return counts

    def _stage(self) -> str:
        trainer = getattr(self, "_trainer", None)
        stage = trainer.state.stage if trainer is not None else None
        if stage is None:
            return "train"
        # looked up rather than read from the enum's `.value` (a descriptor call) on every step
        return _STAGE_NAMES.get(stage) or str(stage.value)

    def loss_target(self, target: Tensor, num_classes: int) -> Tensor:
        """The target in the form the loss takes: class indices become one-hot floats for binary and
        multi-label losses (one-vs-rest), and are passed as they are otherwise."""
        loss = self._configured_loss()
        if getattr(loss, "target_kind", "index") == "probability" and not target.is_floating_point():
            return F.one_hot(target.long(), num_classes).to(torch.float32)
        return target

    def prediction_logits(self, output: ModelOutput) -> Tensor:
        """Class scores to rank predictions by: the margin-free cosine logits of an ArcFace loss (its
        class weights are the classifier), else the model's logits."""
        for module in self._configured_loss().modules():
            cosine_logits = getattr(module, "cosine_logits", None)
            if callable(cosine_logits):
                return cosine_logits(select_input(output, "embeddings", type(module).__name__))
        return select_input(output, "logits", "prediction")

    def parameter_groups(self, lr: float, loss_lr: float | None = None, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the model's own parameters, and the loss's (ArcFace weights,
        centers) with their own learning rate ``loss_lr`` (default ``lr``) and no weight decay, which
        would pull centers towards the origin."""
        loss_ids = {id(parameter) for parameter in self._configured_loss().parameters()}
        own = [p for p in self._all_parameters() if id(p) not in loss_ids and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": own, "lr": lr, "weight_decay": weight_decay}]
        loss_parameters = [p for p in self._configured_loss().parameters() if p.requires_grad]
        if loss_parameters:
            groups.append({"params": loss_parameters, "lr": lr if loss_lr is None else loss_lr, "weight_decay": 0.0})
        return groups

    def _all_parameters(self) -> Iterator[nn.Parameter]:
        return nn.Module.parameters(self)  # type: ignore[arg-type]

    def save_hyperparameters(self, *args: Any, ignore: Sequence[str] | str | None = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's ``save_hyperparameters``, with a loss module stored as its ``class_path``/``init_args``.

        The loss is then written to ``hparams.yaml`` as configured and ``load_from_checkpoint``
        rebuilds exactly that loss (its parameters come from the state dict), instead of pickling
        the module or warning about it.
        """
        if frame is None:
            frame = inspect.currentframe().f_back  # type: ignore[union-attr]
        loss = frame.f_locals.get("loss") if frame is not None else None
        ignored = [ignore] if isinstance(ignore, str) else list(ignore or [])
        convert = isinstance(loss, nn.Module) and "loss" not in ignored and not args
        super().save_hyperparameters(*args, ignore=[*ignored, "loss"] if convert else ignore, frame=frame, logger=logger)  # type: ignore[misc]
        if convert and isinstance(loss, nn.Module):
            config = loss_config(loss)
            self._hparams["loss"] = config  # type: ignore[attr-defined]
            self._hparams_initial["loss"] = dict(config)  # type: ignore[attr-defined]

    # -- observers (the diagnostics callbacks) -------------------------------------------------------
    def add_loss_observer(self, observer: LossObserver) -> None:
        """Send every computed :class:`LossOutput` to ``observer`` (idempotent)."""
        if observer not in self._loss_observers:
            self._loss_observers.append(observer)

    def remove_loss_observer(self, observer: LossObserver) -> None:
        """Stop sending outputs to ``observer``."""
        if observer in self._loss_observers:
            self._loss_observers.remove(observer)

    @property
    def loss_observers(self) -> tuple[LossObserver, ...]:
        """The observers that receive every computed :class:`LossOutput`, in the order they were added."""
        return tuple(self._loss_observers)


def _detached(output: LossOutput) -> LossOutput:
    # built directly: NamedTuple._replace costs as much as the two detaches
    terms = output.terms
    return LossOutput(
        output.loss.detach(),
        output.per_sample.detach(),
        output.p_t,
        output.valid,
        output.target,
        output.task,
        output.num_classes,
        {name: _detached(term) for name, term in terms.items()} if terms else terms,
    )


__all__ = ["LossLike", "LossMixin", "LossObserver"]
