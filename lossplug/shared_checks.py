"""Argument and tensor checks shared across lossplug: by the losses, the models, the data and the callbacks.

Each check raises with the argument's name, what was expected and what was received. Checks of
argument values run once (at construction for modules); checks of tensor *values* (target range)
need one host-device synchronization and can be turned off with ``validate_args=False``. They are
skipped while ``torch.compile`` traces, so compiled code has no graph break, and under ``torch.func``
transforms (``grad``, ``vmap``), whose tensors have no value to look at (see :func:`is_traced`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Literal, TypeAlias, get_args

import torch
from torch import Tensor

Reduction: TypeAlias = Literal["mean", "sum", "none"]
AlphaStrategy: TypeAlias = Literal["inverse_frequency", "effective_number"]
ClassWeight: TypeAlias = Sequence[float] | Tensor
ClassCounts: TypeAlias = Sequence[int] | Tensor


def check_option(name: str, value: object, options: tuple[object, ...]) -> None:
    """Raise unless ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"Expected argument `{name}` to be one of {list(options)}, but got {value!r}.")


def check_reduction(reduction: object) -> None:
    """Raise unless ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``."""
    check_option("reduction", reduction, get_args(Reduction))


def _interval(low: float, high: float, low_closed: bool, high_closed: bool) -> str:
    if math.isinf(low) and math.isinf(high):
        return ""
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
    """Return ``value`` as a float, or raise unless it is a finite real number in the given interval.

    Infinity and NaN are refused whatever the interval: no argument of a loss means anything at inf
    (``1e400`` is inf to Python), and the loss they give is inf or NaN.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Expected argument `{name}` to be a number, but got {type(value).__name__} {value!r}.")
    number = float(value)
    too_low = number < low or (number == low and not low_closed)
    too_high = number > high or (number == high and not high_closed)
    finite = math.isfinite(number)
    if not finite or too_low or too_high:
        interval = _interval(low, high, low_closed, high_closed)
        if high_text is not None:
            interval = interval.replace(f"{high:g}", high_text)
        kind = "number" if finite else "finite number"
        raise ValueError(f"Expected argument `{name}` to be a {kind}{' ' + interval if interval else ''}, but got {value!r}.")
    return number


def check_bool(name: str, value: object) -> bool:
    """Return ``value``, or raise unless it is ``True`` or ``False``.

    Truthiness is not enough: ``validate_args="no"`` is a non-empty string, hence true.
    """
    if not isinstance(value, bool):
        raise TypeError(f"Expected argument `{name}` to be True or False, but got {type(value).__name__} {value!r}.")
    return value


def check_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise unless it is an integer (not a bool, not a float such as 1.5 or 1.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected argument `{name}` to be an integer, but got {type(value).__name__} {value!r}.")
    return int(value)


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value``, or raise unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an integer >= {minimum}, but got {value!r}.")
    return value


def as_class_weight(name: str, value: ClassWeight | None, *, at_most_one: bool = False) -> Tensor | None:
    """Turn a per-class weight list into a float32 vector, checking it is finite and non-negative.

    Args:
        name: Argument name used in messages (``"weight"``, ``"alpha"``, ``"pos_weight"``).
        value: ``None``, a sequence of numbers or a 1-d tensor.
        at_most_one: Also require every entry to be at most 1. Per-class weights are not probabilities
            (like ``torch.nn.CrossEntropyLoss``'s ``weight``), so no lossplug loss asks for this.
    """
    if value is None:
        return None
    if isinstance(value, bool | int | float):
        raise ValueError(
            f"Expected argument `{name}` to be one weight per class (a sequence or a 1-d tensor), "
            f"but got the scalar {value!r}. The multi-class form takes one weight per class: a single "
            f"number would only rescale the loss. For the binary form use `BinaryFocalLoss(alpha=...)`."
        )
    if isinstance(value, str):
        raise ValueError(f"Expected argument `{name}` to be a sequence of per-class weights, but got {value!r}.")
    try:
        weight = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"Expected argument `{name}` to be a sequence of numbers, but got {value!r}.") from error
    if weight.ndim != 1 or weight.numel() == 0:
        raise ValueError(
            f"Expected argument `{name}` to be a non-empty 1-d sequence (one weight per class), "
            f"but got shape {tuple(weight.shape)}."
        )
    check_weight_values(name, weight, at_most_one=at_most_one)
    return weight


def check_weight_values(name: str, weight: Tensor, *, at_most_one: bool = False) -> None:
    """Raise unless every entry of ``weight`` is finite and >= 0 (and <= 1 with ``at_most_one``).

    One host-device synchronization for a tensor on an accelerator. A negative weight turns the loss
    into a reward (a loss of -19 for a confident wrong answer); a NaN one makes every mean NaN.
    """
    flat = weight.detach().reshape(-1)
    high = 1.0 if at_most_one else math.inf
    bad = ~torch.isfinite(flat) | (flat < 0) | (flat > high)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        interval = "in [0, 1]" if at_most_one else "finite and >= 0"
        raise ValueError(
            f"Expected every entry of `{name}` to be {interval}, but got {flat[index].item()!r} at index {index}."
        )


def class_weight_tensor(name: str, weight: Tensor | ClassWeight, input: Tensor, validate_args: bool) -> Tensor:
    """A per-class weight given to a loss function, checked and on ``input``'s device.

    A sequence is checked (it is on the host: no synchronization) and becomes a float32 vector. A
    tensor keeps its dtype; it must be on ``input``'s device and 1-d with one entry per class, and its
    values are checked when ``validate_args`` is true (one host-device sync), except while traced
    (:func:`is_traced`).

    Args:
        name: Argument name used in messages.
        weight: One weight per class: a sequence of numbers or a 1-d tensor.
        input: Logits ``(N, C, ...)``; ``C`` is the number of classes.
        validate_args: Check a tensor's values.
    """
    if isinstance(weight, Tensor):
        check_same_device(input=input, **{name: weight})
        if weight.ndim != 1:
            raise ValueError(
                f"Expected `{name}` to be a 1-d tensor (one weight per class), but got shape {tuple(weight.shape)}."
            )
        if checks_values(validate_args):
            check_weight_values(name, weight)
        checked = weight
    else:
        converted = as_class_weight(name, weight)
        if converted is None:
            raise ValueError(f"Expected argument `{name}` to be one weight per class, but got None.")
        checked = converted.to(input.device)
    if input.ndim >= 2:
        check_class_weight_length(name, checked, input.shape[1])
    return checked


def alpha_vector(alpha: Tensor | ClassWeight, input: Tensor, validate_args: bool = True) -> Tensor:
    """A user's ``alpha`` (one finite, non-negative weight per class) as a float32 vector on ``input``'s device.

    A tensor must already be on ``input``'s device; see :func:`class_weight_tensor` for when its
    values are checked. A tensor alpha is detached: no gradient flows to it.
    """
    if alpha is None:
        raise ValueError("Expected argument `alpha` to be one weight per class, but got None.")
    return class_weight_tensor("alpha", alpha, input, validate_args).detach().to(torch.float32)


def check_class_counts(class_counts: object) -> Tensor:
    """Return ``class_counts`` (training samples per class) as a float64 vector, or raise unless it is a
    non-empty 1-d sequence of non-negative whole numbers.

    Zero counts pass (whether a class may be empty is the caller's decision). Every check runs on the
    host, on a copy: counts are small.
    """
    if isinstance(class_counts, str | bytes | Mapping) or not hasattr(class_counts, "__len__"):
        raise TypeError(
            f"Expected argument `class_counts` to be a sequence or 1-d tensor of sample counts, but got "
            f"{type(class_counts).__name__} {class_counts!r}."
        )
    try:  # sequences, tensors and numpy arrays
        counts = torch.as_tensor(
            class_counts.detach().cpu() if isinstance(class_counts, Tensor) else class_counts, dtype=torch.float64
        )
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"Expected argument `class_counts` to be a sequence of sample counts, but got {class_counts!r}."
        ) from error
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(
            f"Expected `class_counts` to be a non-empty 1-d sequence, but got shape {tuple(counts.shape)}."
        )
    bad = ~torch.isfinite(counts) | (counts < 0) | (counts != counts.round())
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"Expected every entry of `class_counts` to be a whole number >= 0 (training samples of the class), "
            f"but got {counts[index].item()!r} at index {index}."
        )
    return counts


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


def functorch_transform_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ...) is running.

    torch has no public API for this. ``torch._C._are_functorch_transforms_active`` is the binding
    torch itself asks, in ``torch.autograd.Function.apply`` (to route a custom Function through
    functorch) and in ``torch.autograd.backward`` (to refuse ``.backward()`` inside a transform), so
    it is the least private way; it is a cheap read of a thread-local stack. If it moves, this is the
    one place to change.
    """
    return bool(torch._C._are_functorch_transforms_active())


def is_traced() -> bool:
    """Whether this call runs under ``torch.compile`` tracing or a ``torch.func`` transform.

    Either way tensors have no values to branch on (``bool(t.any())`` and ``.item()`` break the
    compiled graph, and fail under ``vmap``), and code that works on raw storage (the chunked CPU
    kernels, the in-place fast paths) cannot run: value checks step aside and the losses take their
    plain whole-tensor path. ``is_compiling`` comes first, so that ``torch.compile`` never traces the
    functorch query.
    """
    return torch.compiler.is_compiling() or functorch_transform_active()


def checks_values(validate_args: bool) -> bool:
    """Whether to check tensor values: when asked (``validate_args``) and the call is not traced."""
    return validate_args and not is_traced()


def _check_class_indices(target: Tensor, num_classes: int, ignore_index: int | None, validate_args: bool) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"Expected `target` to be a torch.Tensor, but got {type(target).__name__}.")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"Expected `target` to hold integer class indices (int64), but got dtype {target.dtype}. "
            "Use the class index of each sample; losses that take class probabilities are "
            "`CrossEntropyLoss` (multi-class) and the binary losses."
        )
    if checks_values(validate_args):
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
    """Raise unless ``target`` is a float tensor of ``input``'s shape with values in ``[0, 1]`` (NaN is not)."""
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
    if checks_values(validate_args):
        bad = ~((target >= 0) & (target <= 1))  # NaN compares false both ways
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


def checked_class_counts(class_counts: ClassCounts, why_nonzero: str) -> Tensor:
    """Training samples per class as a float64 CPU vector (:func:`~lossplug.shared_checks.check_class_counts`),
    with every class at least one sample.

    Args:
        class_counts: Samples per class ``(C,)``: a sequence or a tensor (one host-device sync).
        why_nonzero: Why a class without samples is an error, for the message.
    """
    counts = check_class_counts(class_counts)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"Expected every entry of `class_counts` to be >= 1 ({why_nonzero}), but got 0 for classes {empty}."
        )
    return counts


def check_class_vector(name: str, vector: Tensor, input: Tensor) -> None:
    """A per-class vector derived from the class counts: one entry per class, on ``input``'s device."""
    check_class_weight_length("class_counts", vector, input.shape[1])
    check_same_device(input=input, **{name: vector})
