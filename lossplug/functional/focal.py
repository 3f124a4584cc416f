r"""Focal loss: the softmax (multi-class) form and the sigmoid (binary, multi-label) form.

Both are written in log space with closed-form gradients. Differentiating
:math:`(1 - p_t)^\gamma` through autograd multiplies :math:`\gamma (1 - p_t)^{\gamma - 1}`, infinite
at :math:`p_t = 1` when :math:`\gamma < 1`, by a zero, and gives NaN for saturated logits; the
gradients below are the same derivative rearranged so that every factor is finite.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from lossplug.functional._reduction import reduce_loss
from lossplug.functional._validation import (
    ClassWeight,
    Reduction,
    as_class_weight,
    check_class_weight_length,
    check_floating,
    check_index_target,
    check_logits,
    check_number,
    check_option,
    check_probability_target,
    check_reduction,
    check_same_device,
)
from lossplug.functional.cross_entropy import (
    binary_num_classes,
    binary_probability_of_target,
    class_log_probs,
    sample_weights,
    upcast,
)
from lossplug.output import LossOutput

Normalization: TypeAlias = Literal["elements", "positives"]


def _modulation(log_p_t: Tensor, gamma: float) -> Tensor:
    """(1 - p_t)^gamma from log p_t; ``-expm1`` keeps 1 - p_t exact for p_t near 1."""
    return (-torch.expm1(log_p_t)).pow(gamma)


def _focal_term_grad(log_p_t: Tensor, gamma: float) -> Tensor:
    r"""d/du of :math:`-(1 - e^u)^\gamma u`, which is :math:`-(1-p)^\gamma (1 + \gamma\, p\, u / (e^u - 1))`.

    :math:`u / (e^u - 1) \to 1` as :math:`u \to 0`, so the derivative is finite for every gamma.
    """
    if gamma == 0:
        return torch.full_like(log_p_t, -1.0)
    expm1 = torch.expm1(log_p_t)
    nonzero = expm1 != 0
    ratio = torch.where(nonzero, log_p_t / torch.where(nonzero, expm1, torch.ones_like(expm1)), 1.0)
    return -_modulation(log_p_t, gamma) * (1 + gamma * log_p_t.exp() * ratio)


class _FocalTerm(torch.autograd.Function):
    """-(1 - p_t)^gamma log p_t as a function of u = log p_t, with a finite gradient at p_t = 1."""

    @staticmethod
    def forward(ctx: Any, log_p_t: Tensor, gamma: float) -> Tensor:
        ctx.save_for_backward(log_p_t)
        ctx.gamma = gamma
        return -_modulation(log_p_t, gamma) * log_p_t

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (log_p_t,) = ctx.saved_tensors
        return grad_output * _focal_term_grad(log_p_t, ctx.gamma), None


def _check_gamma(gamma: float) -> float:
    return check_number("gamma", gamma, 0.0)


def focal_loss_output(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | ClassWeight | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""Softmax focal loss (Lin et al. 2017) with its per-sample losses and p_t.

    .. math::
        \ell_i = -\alpha_{y_i} (1 - p_{i,y_i})^\gamma \log p_{i,y_i}, \qquad
        \text{mean} = \frac{\sum_i \ell_i}{\sum_{i \text{ not ignored}} \alpha_{y_i}}

    With ``gamma=0`` this equals ``F.cross_entropy(input, target, weight=alpha)``. ``alpha`` is one
    weight per class; a scalar is an error, since in the multi-class form it would only rescale the
    loss. An empty batch, or one where every target is ignored, gives 0 for ``"mean"``.

    Args:
        input: Logits ``(N, C)`` or ``(N, C, d1, ...)``.
        target: Class indices ``(N, d1, ...)``.
        gamma: Focusing parameter, ``>= 0``.
        alpha: Class weights ``(C,)`` in ``[0, 1]``, or ``None``.
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, zero where ignored).
        validate_args: Check target values (one host-device sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> out = focal_loss_output(logits, torch.tensor([0, 2]), gamma=2.0, reduction="none")
        >>> [round(v, 4) for v in out.per_sample.tolist()]
        [0.0041, 0.9635]
    """
    check_logits(input)
    gamma = _check_gamma(gamma)
    check_reduction(reduction)
    alpha_tensor = None if alpha is None else _alpha_vector(alpha, input)
    check_index_target(input, target, ignore_index, validate_args)
    _, log_p_t, valid, safe_target = class_log_probs(input, target, ignore_index)
    sample_weight = sample_weights(alpha_tensor, safe_target, valid)
    focal = _FocalTerm.apply(log_p_t, gamma)
    if alpha_tensor is not None:
        focal = focal * sample_weight
    per_sample = torch.where(valid, focal, torch.zeros_like(focal))
    loss = reduce_loss(per_sample, reduction, sample_weight.sum())
    return LossOutput(loss, per_sample, log_p_t.detach().exp(), valid, target, "multiclass", input.shape[1])


def _alpha_vector(alpha: Tensor | ClassWeight, input: Tensor) -> Tensor:
    if not (isinstance(alpha, Tensor) and alpha.dtype == torch.float32):
        checked = as_class_weight("alpha", alpha, at_most_one=True)
        if checked is None:
            raise ValueError("Expected argument `alpha` to be one weight per class, but got None.")
        alpha = checked.to(input.device)
    check_class_weight_length("alpha", alpha, input.shape[1])
    check_same_device(input=input, alpha=alpha)
    return alpha


def focal_loss(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | ClassWeight | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Softmax focal loss, as :func:`focal_loss_output` but returning only the loss.

    Example:
        >>> focal_loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), gamma=2.0)
        tensor(0.0041)
    """
    return focal_loss_output(input, target, gamma, alpha, ignore_index, reduction, validate_args).loss


def _binary_focal_forward(input: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
    one_minus_p_t = target * torch.sigmoid(-input) + (1 - target) * torch.sigmoid(input)
    loss = one_minus_p_t.pow(gamma) * F.binary_cross_entropy_with_logits(input, target, reduction="none")
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def _binary_focal_grad(input: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""d/dx of :math:`\alpha_t (1-p_t)^\gamma \mathrm{BCE}(x, t)`.

    With :math:`q = 1 - p_t = t\,\sigma(-x) + (1-t)\,\sigma(x)`, :math:`dq/dx = (1-2t)\,\sigma(x)\sigma(-x)`
    and :math:`d(q^\gamma)/dx = \gamma q^\gamma (1-2t)\, \sigma(x)\sigma(-x)/q`, whose last factor is
    in [0, 1] for targets in [0, 1]; written that way it is finite where q underflows to 0.
    """
    sig, sig_neg = torch.sigmoid(input), torch.sigmoid(-input)
    one_minus_p_t = target * sig_neg + (1 - target) * sig
    modulation = one_minus_p_t.pow(gamma)
    grad = modulation * (sig - target)
    if gamma != 0:
        positive = one_minus_p_t > 0
        safe = torch.where(positive, one_minus_p_t, torch.ones_like(one_minus_p_t))
        ratio = torch.where(positive, sig * sig_neg / safe, torch.zeros_like(safe))
        bce = F.binary_cross_entropy_with_logits(input, target, reduction="none")
        grad = grad + gamma * modulation * (1 - 2 * target) * ratio * bce
    if alpha is not None:
        grad = grad * (alpha * target + (1 - alpha) * (1 - target))
    return grad


class _BinaryFocal(torch.autograd.Function):
    """Element-wise sigmoid focal loss; saves only its inputs and recomputes the rest in backward."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
        ctx.save_for_backward(input, target)
        ctx.gamma, ctx.alpha = gamma, alpha
        return _binary_focal_forward(input, target, gamma, alpha)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:
        input, target = ctx.saved_tensors
        return grad_output * _binary_focal_grad(input, target, ctx.gamma, ctx.alpha), None, None, None


def _check_binary_focal_args(gamma: float, alpha: float | None, normalization: str) -> tuple[float, float | None]:
    gamma = _check_gamma(gamma)
    if alpha is not None:
        if isinstance(alpha, list | tuple | Tensor):
            raise ValueError(
                f"Expected argument `alpha` to be a single number in [0, 1] (the weight of positives) or "
                f"None, but got {alpha!r}."
            )
        alpha = check_number("alpha", alpha, 0.0, 1.0)
    check_option("normalization", normalization, ("elements", "positives"))
    return gamma, alpha


def binary_focal_loss_output(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    reduction: Reduction = "mean",
    normalization: Normalization = "elements",
    validate_args: bool = True,
) -> LossOutput:
    r"""Sigmoid focal loss for binary and multi-label targets, element-wise, with p_t.

    .. math::
        \ell = \alpha_t (1 - p_t)^\gamma\, \mathrm{BCE}(x, t), \quad
        p_t = p t + (1 - p)(1 - t), \quad \alpha_t = \alpha t + (1 - \alpha)(1 - t)

    with :math:`p = \sigma(x)`; soft targets in [0, 1] are allowed. ``alpha=None`` drops
    :math:`\alpha_t`, and then ``gamma=0`` equals ``F.binary_cross_entropy_with_logits``. For
    ``reduction="mean"``, ``normalization="elements"`` divides the sum by the number of elements and
    ``"positives"`` by :math:`\max(1, \sum t)` (the number of positive targets for 0/1 targets), as
    RetinaNet does. No gradient flows to ``target``.

    Args:
        input: Logits of any shape, e.g. ``(N,)`` binary or ``(N, C)`` multi-label.
        target: Floats in ``[0, 1]`` of the same shape.
        gamma: Focusing parameter, ``>= 0``.
        alpha: Weight of positives in ``[0, 1]``, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        normalization: Denominator of ``"mean"``: ``"elements"`` or ``"positives"``.
        validate_args: Check that target values are in [0, 1] (one host-device sync per call).

    Example:
        >>> out = binary_focal_loss_output(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0]), reduction="none")
        >>> [round(v, 5) for v in out.per_sample.tolist()]
        [0.04332, 3e-05]
    """
    gamma, alpha = _check_binary_focal_args(gamma, alpha, normalization)
    check_reduction(reduction)
    check_floating("input", input)
    check_probability_target(input, target, validate_args)
    if target.requires_grad:
        raise ValueError(
            "Expected `target` not to require grad: the focal loss is not differentiated with respect to "
            "its targets. Pass `target.detach()`."
        )
    compute_input, compute_target = upcast(input), upcast(target)
    per_sample = _BinaryFocal.apply(compute_input, compute_target, gamma, alpha)
    denominator = compute_target.sum().clamp_min(1.0) if normalization == "positives" else None
    loss = reduce_loss(per_sample, reduction, denominator)
    p_t = binary_probability_of_target(compute_input, compute_target)
    valid = torch.ones_like(per_sample, dtype=torch.bool)
    return LossOutput(loss, per_sample, p_t, valid, target, "binary", binary_num_classes(input))


def binary_focal_loss(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    reduction: Reduction = "mean",
    normalization: Normalization = "elements",
    validate_args: bool = True,
) -> Tensor:
    """Sigmoid focal loss, as :func:`binary_focal_loss_output` but returning only the loss.

    Example:
        >>> binary_focal_loss(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.0]), alpha=None)
        tensor(1.4698)
    """
    return binary_focal_loss_output(input, target, gamma, alpha, reduction, normalization, validate_args).loss
