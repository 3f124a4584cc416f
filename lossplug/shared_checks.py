"""Argument and tensor checks shared across lossplug: by the losses, the models, the data and the callbacks.

Each check raises with the argument's name, what was expected and what was received. Checks of
argument values run once (at construction for modules); checks of tensor *values* (target range)
need one host-device synchronization and can be turned off with ``validate_args=False``. They are
skipped while ``torch.compile`` traces, so compiled code has no graph break.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeAlias, get_args

import torch
from torch import Tensor

Reduction: TypeAlias = Literal["mean", "sum", "none"]
AlphaStrategy: TypeAlias = Literal["inverse_frequency", "effective_number"]
ClassWeight: TypeAlias = Sequence[float] | Tensor


def check_option(name: str, value: object, options: tuple[object, ...]) -> None:
    """Raise unless ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"Expected argument `{name}` to be one of {list(options)}, but got {value!r}.")


def check_reduction(reduction: object) -> None:
    """Raise unless ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``."""
    check_option("reduction", reduction, get_args(Reduction))


def _interval(low: float, high: float, low_closed: bool, high_closed: bool) -> str:
    if math.isinf(high):
        return f"{'>=' if low_closed else '>'} {low:g}"
    return f"in {'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"


def check_number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_closed: bool = True,
    high_closed: bool = True,
    high_text: str | None = None,
) -> float:
    """Return ``value`` as a float, or raise unless it is a real number in the given interval."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Expected argument `{name}` to be a number, but got {type(value).__name__} {value!r}.")
    number = float(value)
    too_low = number < low or (number == low and not low_closed)
    too_high = number > high or (number == high and not high_closed)
    if math.isnan(number) or too_low or too_high:
        interval = _interval(low, high, low_closed, high_closed)
        if high_text is not None:
            interval = interval.replace(f"{high:g}", high_text)
        raise ValueError(f"Expected argument `{name}` to be a number {interval}, but got {value!r}.")
    return number


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value``, or raise unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an integer >= {minimum}, but got {value!r}.")
    return value


def as_class_weight(name: str, value: ClassWeight | None, *, at_most_one: bool) -> Tensor | None:
    """Turn a per-class weight list into a float32 vector, checking it is finite and non-negative.

    Args:
        name: Argument name used in messages (``"weight"``, ``"alpha"``).
        value: ``None``, a sequence of numbers or a 1-d tensor.
        at_most_one: Also require every entry to be at most 1 (alpha weights are in [0, 1]).
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        raise ValueError(
            f"Expected argument `{name}` to be one weight per class (a sequence or a 1-d tensor), "
            f"but got the scalar {value!r}. The multi-class form takes one weight per class: a single "
            f"number would only rescale the loss. For the binary form use `BinaryFocalLoss(alpha=...)`."
        )
    if isinstance(value, str):
        raise ValueError(f"Expected argument `{name}` to be a sequence of per-class weights, but got {value!r}.")
    try:
        weight = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError) as error:
        raise ValueError(f"Expected argument `{name}` to be a sequence of numbers, but got {value!r}.") from error
    if weight.ndim != 1 or weight.numel() == 0:
        raise ValueError(
            f"Expected argument `{name}` to be a non-empty 1-d sequence (one weight per class), "
            f"but got shape {tuple(weight.shape)}."
        )
    high = 1.0 if at_most_one else math.inf
    bad = ~torch.isfinite(weight) | (weight < 0) | (weight > high)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        interval = "in [0, 1]" if at_most_one else "finite and >= 0"
        raise ValueError(
            f"Expected every entry of `{name}` to be {interval}, but got {weight[index].item()!r} at index {index}."
        )
    return weight


def alpha_vector(alpha: Tensor | ClassWeight, input: Tensor) -> Tensor:
    """A user's ``alpha`` (one weight per class, in [0, 1]) as a float32 vector on ``input``'s device.

    A tensor must already be on ``input``'s device. Its values are checked (one host-device sync),
    except while ``torch.compile`` traces, where that would break the graph.
    """
    if isinstance(alpha, Tensor):
        check_same_device(input=input, alpha=alpha)
    if isinstance(alpha, Tensor) and alpha.dtype == torch.float32 and torch.compiler.is_compiling():
        checked: Tensor | None = alpha
    else:
        checked = as_class_weight("alpha", alpha, at_most_one=True)
    if checked is None:
        raise ValueError("Expected argument `alpha` to be one weight per class, but got None.")
    if input.ndim >= 2:
        check_class_weight_length("alpha", checked, input.shape[1])
    return checked.to(input.device)


def check_class_weight_length(name: str, weight: Tensor | None, num_classes: int) -> None:
    """Raise unless ``weight`` is ``None`` or has one entry per class."""
    if weight is not None and weight.numel() != num_classes:
        raise ValueError(
            f"Expected `{name}` to have one entry per class ({num_classes} classes in `input`), "
            f"but got {weight.numel()} entries."
        )


def check_floating(name: str, tensor: Tensor) -> None:
    """Raise ``TypeError`` unless ``tensor`` is a floating-point tensor."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {tensor.dtype}.")


def check_logits(input: Tensor) -> None:
    """Raise unless ``input`` is floating point of shape ``(N, C, d1, ...)`` with ``C >= 1``."""
    check_floating("input", input)
    if input.ndim < 2:
        raise ValueError(
            f"Expected `input` of shape (N, C) or (N, C, d1, ...), but got shape {tuple(input.shape)}."
        )


def _checks_values(validate_args: bool) -> bool:
    return validate_args and not torch.compiler.is_compiling()


def _check_class_indices(target: Tensor, num_classes: int, ignore_index: int | None, validate_args: bool) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"Expected `target` to be a torch.Tensor, but got {type(target).__name__}.")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"Expected `target` to hold integer class indices (int64), but got dtype {target.dtype}. "
            "Use the class index of each sample; losses that take class probabilities are "
            "`CrossEntropyLoss` (multi-class) and the binary losses."
        )
    if _checks_values(validate_args):
        bad = (target < 0) | (target >= num_classes)
        if ignore_index is not None:
            bad &= target != ignore_index
        if bool(bad.any()):
            value = int(target[bad][0])
            allowed = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
            raise ValueError(
                f"Expected every `target` class index to be in [0, {num_classes - 1}]{allowed}, but got {value}."
            )


def check_index_target(input: Tensor, target: Tensor, ignore_index: int | None, validate_args: bool) -> None:
    """Raise unless ``target`` holds class indices matching ``input`` of shape ``(N, C, d1, ...)``.

    Args:
        input: Logits ``(N, C, d1, ...)``.
        target: Integer class indices ``(N, d1, ...)``.
        ignore_index: Index whose samples are ignored (allowed outside ``[0, C)``), or ``None``.
        validate_args: Also check that every index is in ``[0, C)`` (one host-device sync).
    """
    _check_class_indices(target, input.shape[1], ignore_index, validate_args=False)
    expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"Expected `target` of shape {expected} to match `input` of shape {tuple(input.shape)} "
            f"(N, C, d1, ...), but got shape {tuple(target.shape)}."
        )
    _check_class_indices(target, input.shape[1], ignore_index, validate_args)


def check_probability_target(input: Tensor, target: Tensor, validate_args: bool) -> None:
    """Raise unless ``target`` is a float tensor of ``input``'s shape with values in ``[0, 1]``."""
    if not isinstance(target, Tensor):
        raise TypeError(f"Expected `target` to be a torch.Tensor, but got {type(target).__name__}.")
    if not target.is_floating_point():
        raise TypeError(
            f"Expected `target` to be a floating-point tensor of values in [0, 1], but got dtype "
            f"{target.dtype}. Binary and multi-label targets are floats: use `target.float()`."
        )
    if target.shape != input.shape:
        raise ValueError(
            f"Expected `target` to have the same shape as `input` {tuple(input.shape)}, "
            f"but got shape {tuple(target.shape)}."
        )
    if _checks_values(validate_args):
        bad = (target < 0) | (target > 1)
        if bool(bad.any()):
            raise ValueError(f"Expected every `target` value to be in [0, 1], but got {target[bad][0].item()!r}.")


def check_embeddings(
    name: str, embeddings: Tensor, target: Tensor, dim: int, num_classes: int, validate_args: bool
) -> None:
    """Raise unless ``embeddings`` is ``(N, dim)`` floating point and ``target`` holds ``N`` class indices."""
    check_floating(name, embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise ValueError(f"Expected `{name}` of shape (N, {dim}), but got shape {tuple(embeddings.shape)}.")
    _check_class_indices(target, num_classes, None, validate_args=False)
    if tuple(target.shape) != (embeddings.shape[0],):
        raise ValueError(
            f"Expected `target` of shape ({embeddings.shape[0]},) to match `{name}` of shape "
            f"{tuple(embeddings.shape)}, but got shape {tuple(target.shape)}."
        )
    _check_class_indices(target, num_classes, None, validate_args)


def check_same_device(**tensors: Tensor) -> None:
    """Raise unless every tensor lives on the same device."""
    devices = {name: tensor.device for name, tensor in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"`{name}` on {device}" for name, device in devices.items())
        raise ValueError(f"Expected all tensors on one device, but got {listed}.")
