r"""Cross-entropy, class-balanced cross-entropy and binary cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lossplug.functional._kernels import binary_probability_of_target
from lossplug.functional._reduction import reduce_loss
from lossplug.output import LossOutput
from lossplug.shared_checks import (
    ClassWeight,
    Reduction,
    alpha_vector,
    check_bool,
    check_floating,
    check_index_target,
    check_int,
    check_logits,
    check_number,
    check_probability_target,
    check_reduction,
    check_same_device,
    check_weight_values,
    checks_values,
    class_weight_tensor,
)

#: The default ``ignore_index`` (torch's): with class-probability targets, the only accepted value.
DEFAULT_IGNORE_INDEX = -100


def upcast(tensor: Tensor) -> Tensor:
    """Half-precision tensors are computed in float32; float32 and float64 stay as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def class_log_probs(input: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Log-softmax over the class dimension and the log-probability of each sample's class.

    Args:
        input: Logits ``(N, C, d1, ...)``.
        target: Class indices ``(N, d1, ...)``; ``ignore_index`` marks samples that do not count.
        ignore_index: The index of ignored samples.

    Returns:
        ``(log_probs, log_p_t, valid, safe_target)``: log-probabilities ``(N, C, d1, ...)`` in at least
        float32, ``log p_t`` and the validity mask ``(N, d1, ...)``, and the target with ignored
        entries replaced by class 0 (safe to gather with; ``log_p_t`` there is meaningless).
    """
    log_probs = upcast(input).log_softmax(dim=1)
    valid, safe_target = counted_targets(target, ignore_index)
    log_p_t = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    return log_probs, log_p_t, valid, safe_target


def model_p_t(input: Tensor, safe_target: Tensor) -> Tensor:
    """The model's own softmax probability of each sample's class, detached, without a full softmax.

    Args:
        input: Logits ``(N, C, d1, ...)`` (already in at least float32).
        safe_target: Class indices ``(N, d1, ...)`` with ignored entries set to a valid class.
    """
    logits = input.detach()
    return (logits.gather(1, safe_target.unsqueeze(1)).squeeze(1) - logits.logsumexp(dim=1)).exp()


def counted_targets(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """The mask of samples that count, and the target with ignored entries set to class 0 (safe to gather with)."""
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target)).long()


def sample_weights(weight: Tensor | None, safe_target: Tensor, valid: Tensor) -> Tensor:
    """Per-sample class weights ``weight[y_i]`` (ones without weights), zero where not valid."""
    if weight is None:
        return valid.to(torch.float32)
    return torch.where(valid, weight[safe_target], torch.zeros((), dtype=weight.dtype, device=weight.device))


def cross_entropy_output(
    input: Tensor,
    target: Tensor,
    weight: Tensor | ClassWeight | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""Cross-entropy with its per-sample losses and p_t; same semantics as ``torch.nn.CrossEntropyLoss``.

    For class indices, with smoothing :math:`\varepsilon` and class weights :math:`w` (ones if not given):

    .. math::
        \ell_i = -(1 - \varepsilon)\, w_{y_i} \log p_{i, y_i} - \frac{\varepsilon}{C} \sum_c w_c \log p_{i, c}

    ``"mean"`` divides :math:`\sum_i \ell_i` by :math:`\sum_i w_{y_i}` over non-ignored samples. For
    class-probability targets :math:`t` (a float tensor shaped like ``input``),
    :math:`\ell_i = -\sum_c w_c t'_{i,c} \log p_{i,c}` with :math:`t' = (1-\varepsilon) t + \varepsilon / C`,
    ``"mean"`` divides by the number of samples, ``p_t`` is :math:`\sum_c t_{i,c} p_{i,c}` and the
    recorded ``target`` is the most probable class. An empty batch, or one where every target is
    ignored, gives 0 for ``"mean"`` (torch gives NaN).

    Args:
        input: Logits of shape ``(N, C)`` or ``(N, C, d1, ...)``.
        target: Class indices ``(N, d1, ...)``, or class probabilities shaped like ``input``.
        weight: Class weights ``(C,)``, finite and ``>= 0``: a tensor on ``input``'s device, or a sequence.
        ignore_index: Targets equal to this do not count. Class-index targets only: with
            class-probability targets, anything but the default ``-100`` is an error.
        label_smoothing: :math:`\varepsilon` in ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, zero where ignored).
        validate_args: Check target values, and the values of a tensor ``weight`` (one host-device
            sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> out = cross_entropy_output(logits, torch.tensor([0, 2]))
        >>> round(out.loss.item(), 4), [round(p, 4) for p in out.p_t.tolist()]
        (0.8606, [0.8438, 0.2119])
    """
    return checked_cross_entropy_output(
        input, target, weight, ignore_index, label_smoothing, reduction, validate_args, weight_checked=False
    )


def checked_cross_entropy_output(
    input: Tensor,
    target: Tensor,
    weight: Tensor | ClassWeight | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: Reduction,
    validate_args: bool,
    weight_checked: bool,
) -> LossOutput:
    """:func:`cross_entropy_output`; with ``weight_checked``, the values of a tensor ``weight`` are trusted.

    For the modules, whose weight buffers were checked when they were made: checking them again on
    every call would cost a host-device sync each time.
    """
    check_logits(input)
    ignore_index = check_int("ignore_index", ignore_index)
    check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    check_reduction(reduction)
    check_bool("validate_args", validate_args)
    if weight is not None:
        weight = class_weight_tensor("weight", weight, input, validate_args and not weight_checked)
    num_classes = input.shape[1]
    if isinstance(target, Tensor) and target.is_floating_point():
        if ignore_index != DEFAULT_IGNORE_INDEX:
            raise ValueError(
                f"Expected argument `ignore_index` to be left at {DEFAULT_IGNORE_INDEX} with class-probability "
                f"targets (a float `target` has no class index to ignore), but got {ignore_index}: drop "
                "`ignore_index`, or pass class indices (int64) as `target`."
            )
        return _soft_cross_entropy(input, target, weight, label_smoothing, reduction, validate_args)
    check_index_target(input, target, ignore_index, validate_args)
    log_probs, log_p_t, valid, safe_target = class_log_probs(input, target, ignore_index)
    sample_weight = sample_weights(weight, safe_target, valid)
    nll = -log_p_t if weight is None else -log_p_t * sample_weight
    if label_smoothing > 0:
        weighted_log_probs = log_probs if weight is None else log_probs * _class_dim(weight, input.ndim)
        smooth = -weighted_log_probs.sum(dim=1)
        nll = (1 - label_smoothing) * nll + (label_smoothing / num_classes) * smooth
    per_sample = torch.where(valid, nll, torch.zeros_like(nll))
    loss = reduce_loss(per_sample, reduction, sample_weight.sum())
    return LossOutput(loss, per_sample, log_p_t.detach().exp(), valid, target, "multiclass", num_classes)


def _class_dim(weight: Tensor, ndim: int) -> Tensor:
    """View a ``(C,)`` vector so it broadcasts along dim 1 of an ``ndim``-d tensor."""
    return weight.view(1, -1, *([1] * (ndim - 2)))


def _soft_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    label_smoothing: float,
    reduction: Reduction,
    validate_args: bool,
) -> LossOutput:
    check_probability_target(input, target, validate_args)
    num_classes = input.shape[1]
    log_probs = upcast(input).log_softmax(dim=1)
    target = upcast(target)
    smoothed = target * (1 - label_smoothing) + label_smoothing / num_classes if label_smoothing > 0 else target
    if weight is not None:
        smoothed = smoothed * _class_dim(weight, input.ndim)
    per_sample = -(smoothed * log_probs).sum(dim=1)
    with torch.no_grad():
        p_t = (target * log_probs.exp()).sum(dim=1)
    valid = torch.ones_like(per_sample, dtype=torch.bool)
    loss = reduce_loss(per_sample, reduction)
    return LossOutput(loss, per_sample, p_t, valid, target.argmax(dim=1), "multiclass", num_classes)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Cross-entropy, as :func:`cross_entropy_output` but returning only the loss.

    Example:
        >>> cross_entropy(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]))
        tensor(0.1698)
    """
    return cross_entropy_output(input, target, weight, ignore_index, label_smoothing, reduction, validate_args).loss


def balanced_cross_entropy_output(
    input: Tensor,
    target: Tensor,
    alpha: Tensor | ClassWeight,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""Alpha-balanced cross-entropy with its per-sample losses and p_t.

    .. math::
        \ell_i = -\alpha_{y_i} \log p_{i, y_i}, \qquad
        \text{mean} = \frac{\sum_i \ell_i}{\sum_{i \text{ not ignored}} \alpha_{y_i}}

    Equal to ``F.cross_entropy(input, target, weight=alpha)``.

    Args:
        input: Logits ``(N, C, d1, ...)``.
        target: Class indices ``(N, d1, ...)``.
        alpha: One weight per class, each finite and ``>= 0`` (like ``F.cross_entropy``'s ``weight``).
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values, and the values of a tensor ``alpha`` (one host-device
            sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> balanced_cross_entropy_output(logits, torch.tensor([0, 1]), alpha=[0.25, 0.75]).loss
        tensor(0.2667)
    """
    check_floating("input", input)
    check_bool("validate_args", validate_args)
    alpha_tensor = alpha_vector(alpha, input, validate_args)
    if isinstance(target, Tensor) and target.is_floating_point():
        raise TypeError(
            f"Expected `target` to hold integer class indices (int64), but got dtype {target.dtype}. "
            "Class-probability targets are taken by `cross_entropy`."
        )
    return checked_cross_entropy_output(
        input, target, alpha_tensor, ignore_index, 0.0, reduction, validate_args, weight_checked=True
    )


def balanced_cross_entropy(
    input: Tensor,
    target: Tensor,
    alpha: Tensor | ClassWeight,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Alpha-balanced cross-entropy, as :func:`balanced_cross_entropy_output` but returning only the loss."""
    return balanced_cross_entropy_output(input, target, alpha, ignore_index, reduction, validate_args).loss


def binary_cross_entropy_output(
    input: Tensor,
    target: Tensor,
    pos_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""Binary cross-entropy on logits with its element-wise losses and p_t.

    .. math::
        \ell = -\left[w_+\, t \log \sigma(x) + (1 - t) \log (1 - \sigma(x))\right]

    Same as ``F.binary_cross_entropy_with_logits``; ``p_t = p t + (1-p)(1-t)`` element-wise.

    Args:
        input: Logits of any shape.
        target: Floats in ``[0, 1]`` of the same shape.
        pos_weight: Weight of positives, finite and ``>= 0``, broadcast along the last dimension.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check that target values are in [0, 1], and the values of ``pos_weight`` (one
            host-device sync per call).

    Example:
        >>> binary_cross_entropy_output(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])).loss
        tensor(1.4100)
    """
    return checked_binary_cross_entropy_output(
        input, target, pos_weight, reduction, validate_args, pos_weight_checked=False
    )


def checked_binary_cross_entropy_output(
    input: Tensor,
    target: Tensor,
    pos_weight: Tensor | None,
    reduction: Reduction,
    validate_args: bool,
    pos_weight_checked: bool,
) -> LossOutput:
    """:func:`binary_cross_entropy_output`; with ``pos_weight_checked``, the values of ``pos_weight`` are trusted
    (a module's buffer, checked when the module was made)."""
    check_floating("input", input)
    check_reduction(reduction)
    check_bool("validate_args", validate_args)
    check_probability_target(input, target, validate_args)
    if pos_weight is not None:
        if not isinstance(pos_weight, Tensor):
            raise TypeError(
                f"Expected `pos_weight` to be a tensor (one weight, or one per class), but got "
                f"{type(pos_weight).__name__}. `BinaryCrossEntropyLoss(pos_weight=...)` also takes numbers."
            )
        check_same_device(input=input, pos_weight=pos_weight)
        if checks_values(validate_args) and not pos_weight_checked:
            check_weight_values("pos_weight", pos_weight)
    compute_input, compute_target = upcast(input), upcast(target)
    per_sample = F.binary_cross_entropy_with_logits(
        compute_input, compute_target, pos_weight=pos_weight, reduction="none"
    )
    p_t = binary_probability_of_target(compute_input, compute_target)
    valid = torch.ones_like(per_sample, dtype=torch.bool)
    loss = reduce_loss(per_sample, reduction)
    return LossOutput(loss, per_sample, p_t, valid, target, "binary", binary_num_classes(input))


def binary_num_classes(input: Tensor) -> int:
    """Classes of a binary or multi-label input: its dim 1 (the target columns), or 1 for ``(N,)``."""
    return input.shape[1] if input.ndim >= 2 else 1


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    pos_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Binary cross-entropy, as :func:`binary_cross_entropy_output` but returning only the loss."""
    return binary_cross_entropy_output(input, target, pos_weight, reduction, validate_args).loss
