"""Loss (de)serialization: a loss module to its ``class_path``/``init_args`` config and back.

This is how :class:`~lossplug.mixin.LossMixin` stores a loss in ``hparams.yaml`` and checkpoints,
and how a config names one: ``load_from_checkpoint`` rebuilds exactly the configured loss.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lossplug.losses.base import BaseLoss


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
        FocalLoss(gamma=1.0, alpha=None, beta=None, ignore_index=-100, reduction='mean', validate_args=True)
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


__all__ = ["build_loss", "loss_config"]
