"""LossMixin: give an existing LightningModule a configurable lossplug loss and its diagnostics."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import RunningStage
from torch import Tensor, nn

from lossplug.losses.base import BaseLoss, ModelOutput, select_input
from lossplug.output import LossOutput

LossLike: TypeAlias = BaseLoss | nn.Module
"""What a model accepts as its loss: any lossplug loss, or a plain torch loss on logits."""


_STAGE_NAMES = {stage: str(stage.value) for stage in RunningStage}


class LossObserver(Protocol):
    """Receives every loss a :class:`LossMixin` model computes (the diagnostics callbacks)."""

    def observe_loss(self, output: LossOutput, stage: str) -> None:
        """Take one call's detached :class:`LossOutput`; ``stage`` is ``"train"``, ``"validate"``, ..."""


def loss_config(loss: nn.Module) -> dict[str, Any]:
    """The ``class_path``/``init_args`` of a loss, as a LightningCLI config would give it.

    lossplug losses record their constructor arguments. For other modules (a torch loss), the
    arguments are read back from attributes of the same name, as torch's losses keep them.

    Example:
        >>> from lossplug.losses import FocalLoss
        >>> loss_config(FocalLoss(gamma=1.0))["init_args"]["gamma"]
        1.0
        >>> loss_config(nn.CrossEntropyLoss(label_smoothing=0.1))["init_args"]["label_smoothing"]
        0.1
    """
    if not isinstance(loss, nn.Module):
        raise TypeError(f"Expected a loss module, but got {type(loss).__name__}.")
    if isinstance(loss, BaseLoss):
        init_args = loss.init_args
    else:
        parameters = inspect.signature(type(loss)).parameters.values()
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        init_args = {p.name: getattr(loss, p.name) for p in parameters if p.kind in keyword and hasattr(loss, p.name)}
    return {"class_path": f"{type(loss).__module__}.{type(loss).__qualname__}", "init_args": _plain(init_args)}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseLoss):
        return loss_config(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def build_loss(config: Mapping[str, Any] | nn.Module) -> nn.Module:
    """Instantiate a loss from ``{"class_path": ..., "init_args": ...}`` (nested for WeightedSum terms).

    A module is returned as it is. A short class name (``"FocalLoss"``) is looked up in
    :mod:`lossplug.losses`.

    Example:
        >>> build_loss({"class_path": "FocalLoss", "init_args": {"gamma": 1.0}})
        FocalLoss(gamma=1.0, alpha=None, beta=0.999, ignore_index=-100, reduction='mean', validate_args=True)
    """
    if isinstance(config, nn.Module):
        return config
    if not isinstance(config, Mapping) or "class_path" not in config:
        raise ValueError(f"Expected a loss module or a mapping with 'class_path' and 'init_args', but got {config!r}.")
    class_path = str(config["class_path"])
    module_name, _, class_name = class_path.rpartition(".")
    module = importlib.import_module(module_name or "lossplug.losses")
    loss_class = getattr(module, class_name, None)
    if not (isinstance(loss_class, type) and issubclass(loss_class, nn.Module)):
        raise ValueError(f"Expected `class_path` to name a loss module, but got {class_path!r}.")
    init_args = {key: _built(value) for key, value in dict(config.get("init_args") or {}).items()}
    if not issubclass(loss_class, BaseLoss):
        init_args = _tensor_arguments(loss_class, init_args)
    return loss_class(**init_args)


def _tensor_arguments(loss_class: type, init_args: dict[str, Any]) -> dict[str, Any]:
    """Lists back to tensors where a torch loss takes a tensor (``weight``, ``pos_weight``)."""
    try:
        hints = typing.get_type_hints(loss_class.__init__)  # type: ignore[misc]
    except (NameError, TypeError):
        return init_args
    takes_tensor = {name for name, hint in hints.items() if hint is Tensor or Tensor in typing.get_args(hint)}
    return {
        name: torch.tensor(value) if name in takes_tensor and isinstance(value, list) else value
        for name, value in init_args.items()
    }


def _built(value: Any) -> Any:
    if isinstance(value, Mapping) and "class_path" in value:
        return build_loss(value)
    if isinstance(value, Mapping):
        return {key: _built(item) for key, item in value.items()}
    return value


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


__all__ = ["LossLike", "LossMixin", "LossObserver", "build_loss", "loss_config"]
