"""LossMixin: give an existing LightningModule a configurable lossplug loss and its diagnostics."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.loss import _Loss

from lossplug.functional.logit_adjusted import log_class_prior
from lossplug.losses.base import BaseLoss, ModelOutput, select_input
from lossplug.output import LossOutput
from lossplug.serialization import build_loss, loss_config
from lossplug.shared_checks import check_class_weight_length, check_number

# torch's losses have no public base class: `_Loss` is the one they all derive from. Typing the loss
# with it lets a config pick any lossplug or torch loss, and keeps other modules out of the choices.
LossLike: TypeAlias = BaseLoss | _Loss
"""What a model accepts as its loss: any lossplug loss, or a torch loss on logits (``torch.nn.CrossEntropyLoss``)."""


_TORCH_BINARY_LOSSES = (nn.BCEWithLogitsLoss, nn.MultiLabelSoftMarginLoss)  # torch's losses on one-vs-rest targets


class LossObserver(Protocol):
    """Receives every loss a :class:`LossMixin` model computes (the diagnostics callbacks)."""

    @property
    def prediction_stages(self) -> Collection[str]:
        """The stages in which the observer reads the model's predictions (empty: none)."""

    def observe_loss(self, output: LossOutput, stage: str, predictions: Tensor | None) -> None:
        """Take one call's detached :class:`LossOutput`.

        Args:
            output: The loss's record, detached.
            stage: ``"train"``, ``"validate"``, ``"test"`` or ``"predict"``.
            predictions: The detached class scores the model predicts with
                (:meth:`LossMixin.prediction_logits`, ``(N, C, ...)``) when ``stage`` is in the
                ``prediction_stages`` of one of the model's observers, else ``None``.
        """


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
    device: torch.device  # the LightningModule's

    def __init__(self, *args: Any, loss: LossLike | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loss_observers: list[LossObserver] = []
        self._learning_rates_checked = False
        self._logit_adjustment: float | None = None
        self._log_prior: Tensor | None = None  # of the training class counts, for the logit adjustment
        if loss is not None:
            self.loss = _trainable(build_loss(loss))

    # -- the loss ----------------------------------------------------------------------------------
    def compute_loss(self, output: ModelOutput, target: Tensor) -> Tensor:
        """The scalar to optimize, from a logits tensor or a mapping with ``"logits"``/``"embeddings"``.

        Records, for the diagnostics, the per-sample losses, p_t and targets of this call.
        """
        loss = self._configured_loss()
        if not isinstance(loss, BaseLoss):
            return loss(select_input(output, "logits", type(loss).__name__), target)
        stage = self._stage()
        trainer = getattr(self, "_trainer", None)
        if stage == "train" and trainer is not None:
            loss.set_epoch(int(trainer.current_epoch))
            if not self._learning_rates_checked:
                self._check_loss_learning_rates()
                self._learning_rates_checked = True
        if loss.needs_class_counts:
            remedy = "call `model.loss.set_class_counts(counts)` before training, or give the loss its class weights or `class_counts`"
            loss.set_class_counts(self._training_class_counts(f"{type(loss).__name__} computes its weights from", remedy))
            loss.to(self.device)  # what the counts resolved follows the model to its device
        observers = self._loss_observers
        if not observers:
            # nobody reads the per-sample record: the loss-only path (faster for some losses)
            return loss.forward_output(output, target)
        result = loss.evaluate_output(output, target)
        detached = _detached(result)
        predictions = None
        if any(stage in observer.prediction_stages for observer in observers):
            predictions = self.prediction_logits(output).detach()
        for observer in observers:
            observer.observe_loss(detached, stage, predictions)
        return result.loss

    def _configured_loss(self) -> nn.Module:
        loss = self.__dict__.get("_modules", {}).get("loss")
        if loss is None:
            raise RuntimeError(
                f"{type(self).__name__} has no loss: pass it to the mixin with `super().__init__(loss=loss)` "
                "in `__init__`."
            )
        return loss

    def _training_class_counts(self, needed_by: str, remedy: str) -> Sequence[int] | Tensor:
        trainer = getattr(self, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        counts = getattr(datamodule, "class_counts", None)
        if counts is None:
            missing = "no data module is attached" if datamodule is None else f"{type(datamodule).__name__} has no `class_counts`"
            raise RuntimeError(
                f"{needed_by} the training class counts, but {missing}. Give the data module a `class_counts` "
                f"attribute (training samples per class), {remedy}."
            )
        return counts

    def _stage(self) -> str:
        trainer = getattr(self, "_trainer", None)
        stage = trainer.state.stage if trainer is not None else None
        return "train" if stage is None else str(stage.value)

    def loss_target(self, target: Tensor, num_classes: int) -> Tensor:
        """The target in the form the loss takes: class indices become one-hot floats for binary and
        multi-label losses (one-vs-rest), and are passed as they are otherwise."""
        loss = self._configured_loss()
        binary = getattr(loss, "target_kind", "index") == "probability" or isinstance(loss, _TORCH_BINARY_LOSSES)
        if binary and not target.is_floating_point():
            return F.one_hot(target.long(), num_classes).to(torch.float32)
        return target

    def prediction_logits(self, output: ModelOutput) -> Tensor:
        r"""Class scores to rank predictions by: the loss's :meth:`~lossplug.losses.BaseLoss.scores` (the
        margin-free cosine logits of ArcFace, whose class weights are the classifier; LDAM's scaled
        logits), else the model's logits; with a post-hoc logit adjustment (:meth:`set_logit_adjustment`),
        :math:`z_c - \tau \log \pi_c`."""
        loss = self._configured_loss()
        scores = loss.scores(output) if isinstance(loss, BaseLoss) else None
        if scores is None:
            scores = select_input(output, "logits", "prediction")
        if not self._logit_adjustment:
            return scores
        if self._log_prior is None:
            counts = self._training_class_counts("Post-hoc logit adjustment divides by", "or set no logit adjustment")
            self._log_prior = log_class_prior(counts).float()
        check_class_weight_length("class_counts", self._log_prior, scores.shape[1])
        log_prior = self._log_prior.to(scores.device).view(1, -1, *([1] * (scores.ndim - 2)))
        return scores - self._logit_adjustment * log_prior

    def set_logit_adjustment(self, tau: float | None) -> None:
        r"""Predict with post-hoc logit adjustment (Menon et al. 2021): :math:`\arg\max_c\, z_c - \tau \log \pi_c`,
        where :math:`\pi` is the training class frequency (the data module's ``class_counts``).

        A model trained with plain cross-entropy learns the long-tailed prior; subtracting it predicts as if
        the classes were balanced. ``None`` (or 0) predicts with the scores as they are.

        Args:
            tau: The adjustment's strength :math:`\tau` (1 in the paper), a finite number; or ``None``.
        """
        self._logit_adjustment = None if tau is None else check_number("tau", tau)
        self._log_prior = None

    def parameter_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the model's own parameters with ``lr`` and ``weight_decay``, and
        each loss's own parameters (ArcFace's class weights, centers) in a group of their own, with that
        loss's ``lr`` where it sets one (else ``lr``) and no weight decay, which would pull centers
        towards the origin.

        Example:
            >>> import lightning as L
            >>> from lossplug.losses import ArcFaceLoss
            >>> class Model(LossMixin, L.LightningModule):
            ...     def __init__(self):
            ...         super().__init__(loss=ArcFaceLoss(num_classes=3, embedding_dim=4, lr=0.1))
            ...         self.net = torch.nn.Linear(8, 4)
            >>> [(len(group["params"]), group["lr"]) for group in Model().parameter_groups(1e-3)]
            [(2, 0.001), (1, 0.1)]
        """
        loss = self._configured_loss()
        loss_ids = {id(parameter) for parameter in loss.parameters()}
        own = [p for p in self._all_parameters() if id(p) not in loss_ids and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": own, "lr": lr, "weight_decay": weight_decay}]
        for module in loss.modules():
            parameters = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if parameters:
                module_lr = getattr(module, "lr", None)
                groups.append({"params": parameters, "lr": lr if module_lr is None else module_lr, "weight_decay": 0.0})
        return groups

    def _check_loss_learning_rates(self) -> None:
        """Raise when a loss sets ``lr`` for its parameters and the optimizer does not give it to them.

        Run once, at the first training step: a learning rate in the config must never be silently
        without effect (it is when ``configure_optimizers`` does not use :meth:`parameter_groups`).
        """
        trainer = getattr(self, "_trainer", None)
        optimizers = list(trainer.optimizers) if trainer is not None else []
        given = {
            id(parameter): group.get("initial_lr", group["lr"])
            for optimizer in optimizers
            for group in optimizer.param_groups
            for parameter in group["params"]
        }
        for module in self._configured_loss().modules():
            module_lr = getattr(module, "lr", None)
            if module_lr is None:
                continue
            for parameter in module.parameters(recurse=False):
                if id(parameter) in given and given[id(parameter)] != module_lr:
                    raise ValueError(
                        f"Expected the optimizer to train the parameters of {type(module).__name__}(lr={module_lr:g}) with "
                        f"lr={module_lr:g}, but it uses lr={given[id(parameter)]:g}: build its parameter groups with "
                        f"`self.parameter_groups(lr, weight_decay)` in `{type(self).__name__}.configure_optimizers`, "
                        "or leave the loss's `lr` unset."
                    )

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose loss differs from this model's, in class or in shapes, naming both.

        Without this, a state dict loads into another loss where the names agree (ArcFace's class
        weights into cross-entropy's class-weight buffer) and fails only at the first call, or not at all.
        """
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        check_checkpoint_loss(self._configured_loss(), checkpoint)

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


def _trainable(loss: nn.Module) -> nn.Module:
    """``loss``, unless it (or a WeightedSum term) reduces to per-sample values, which cannot be trained on."""
    for name, module in loss.named_modules():
        if getattr(module, "reduction", None) == "none":
            where = f"term {name.rsplit('.', 1)[-1]!r} ({type(module).__name__})" if name else type(module).__name__
            raise ValueError(
                f"Expected the loss to reduce to the scalar a model trains on, but {where} has reduction='none'. "
                "Use reduction='mean' or 'sum'; the diagnostics callbacks record the per-sample losses."
            )
    return loss


def _class_paths(config: Any) -> list[str]:
    """The class names in a loss config, the loss's and its terms', in order."""
    if isinstance(config, nn.Module):  # a term that loading already built
        config = loss_config(config)
    if callable(getattr(config, "as_dict", None)):  # a jsonargparse Namespace, which loading leaves in place
        config = config.as_dict()
    if isinstance(config, Mapping):
        own = [str(config["class_path"]).rsplit(".", 1)[-1]] if "class_path" in config else []
        return own + [name for value in config.values() for name in _class_paths(value)]
    if isinstance(config, list | tuple):
        return [name for value in config for name in _class_paths(value)]
    return []


def check_checkpoint_loss(loss: nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Raise unless ``checkpoint`` holds the same loss as ``loss``: the same classes (WeightedSum terms
    included) and the same shapes of its parameters and buffers (the model's ``loss.`` entries)."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("loss")
    saved_classes, own_classes = _class_paths(saved), _class_paths(loss_config(loss))
    if saved_classes and saved_classes != own_classes:
        raise ValueError(
            f"Expected the checkpoint to hold this model's loss {' + '.join(own_classes)}, but it holds "
            f"{' + '.join(saved_classes)}: configure the loss it was trained with, or load it without "
            "`loss=` to rebuild the checkpoint's own."
        )
    own = {f"loss.{key}": tensor for key, tensor in loss.state_dict().items()}
    for key, tensor in (checkpoint.get("state_dict") or {}).items():
        mine = own.get(key)
        if mine is not None and isinstance(tensor, Tensor) and tuple(mine.shape) != tuple(tensor.shape):
            raise ValueError(
                f"Expected the checkpoint's `{key}` to have this model's shape {tuple(mine.shape)}, but it has "
                f"{tuple(tensor.shape)}: the checkpoint's {' + '.join(saved_classes or ['loss'])} was configured "
                "differently (another number of classes or embedding size)."
            )


def _detached(output: LossOutput) -> LossOutput:
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


__all__ = ["LossLike", "LossMixin", "LossObserver", "check_checkpoint_loss"]
