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
    check_class_weight_length,
    check_floating,
    check_index_target,
    check_logits,
    check_number,
    check_probability_target,
    check_reduction,
    check_same_device,
)


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


def counted_targets(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """The mask of samples that count, and the target with ignored entries set to class 0 (safe to gather with)."""
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target)).long()


def sample_weights(weight: Tensor | None, safe_target: Tensor, valid: Tensor) -> Tensor:
    """Per-sample class weights ``weight[y_i]`` (ones without weights), zero where not valid."""
    if weight is None:
        return valid.to(torch.float32)
    return torch.where(valid, weight[safe_target], torch.zeros((), dtype=weight.dtype, device=weight.device))


def _check_weight_tensor(name: str, weight: Tensor | None, input: Tensor) -> None:
    if weight is not None:
        check_class_weight_length(name, weight, input.shape[1])
        check_same_device(input=input, **{name: weight})


def cross_entropy_output(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
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
        weight: Class weights ``(C,)``.
        ignore_index: Targets equal to this do not count (class-index targets only).
        label_smoothing: :math:`\varepsilon` in ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, zero where ignored).
        validate_args: Check target values (one host-device sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> out = cross_entropy_output(logits, torch.tensor([0, 2]))
        >>> round(out.loss.item(), 4), [round(p, 4) for p in out.p_t.tolist()]
        (0.8606, [0.8438, 0.2119])
    """
    check_logits(input)
    check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    check_reduction(reduction)
    _check_weight_tensor("weight", weight, input)
    num_classes = input.shape[1]
    if isinstance(target, Tensor) and target.is_floating_point():
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
        alpha: One weight per class, each in ``[0, 1]``.
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values (one host-device sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> balanced_cross_entropy_output(logits, torch.tensor([0, 1]), alpha=[0.25, 0.75]).loss
        tensor(0.2667)
    """
    check_floating("input", input)
    alpha_tensor = alpha_vector(alpha, input)
    if isinstance(target, Tensor) and target.is_floating_point():
        raise TypeError(
            f"Expected `target` to hold integer class indices (int64), but got dtype {target.dtype}. "
            "Class-probability targets are taken by `cross_entropy`."
        )
    return cross_entropy_output(input, target, alpha_tensor, ignore_index, 0.0, reduction, validate_args)


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
        pos_weight: Weight of positives, broadcast along the last dimension.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check that target values are in [0, 1] (one host-device sync per call).

    Example:
        >>> binary_cross_entropy_output(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])).loss
        tensor(1.4100)
    """
    check_floating("input", input)
    check_reduction(reduction)
    check_probability_target(input, target, validate_args)
    if pos_weight is not None:
        check_same_device(input=input, pos_weight=pos_weight)
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
