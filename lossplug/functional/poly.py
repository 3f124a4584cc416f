r"""Poly-1 loss: cross-entropy plus a linear term in :math:`1 - p_t`."""

from __future__ import annotations

import torch
from torch import Tensor

from lossplug.functional._reduction import reduce_loss
from lossplug.functional.cross_entropy import class_log_probs
from lossplug.output import LossOutput
from lossplug.shared_checks import (
    Reduction,
    check_bool,
    check_index_target,
    check_int,
    check_logits,
    check_number,
    check_reduction,
)


def _check_poly_args(epsilon: float, label_smoothing: float) -> tuple[float, float]:
    epsilon = check_number("epsilon", epsilon, -1.0)
    label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    return epsilon, label_smoothing


def _poly_output(
    input: Tensor,
    target: Tensor,
    epsilon: float,
    ignore_index: int,
    label_smoothing: float,
    reduction: Reduction,
    validate_args: bool,
) -> LossOutput:
    """The loss from checked arguments; see :func:`poly_loss_output`."""
    check_logits(input)
    ignore_index = check_int("ignore_index", ignore_index)
    check_reduction(reduction)
    check_bool("validate_args", validate_args)
    check_index_target(input, target, ignore_index, validate_args)
    num_classes = input.shape[1]
    log_probs, log_p_t, valid, _ = class_log_probs(input, target, ignore_index)
    nll = -log_p_t
    one_minus_p_t = -torch.expm1(log_p_t)  # exact near p_t = 1, where 1 - exp(log p_t) cancels
    if label_smoothing > 0:
        nll = (1 - label_smoothing) * nll - (label_smoothing / num_classes) * log_probs.sum(dim=1)
        one_minus_p_t = (1 - label_smoothing) * one_minus_p_t + label_smoothing * (num_classes - 1) / num_classes
    poly = nll + epsilon * one_minus_p_t if epsilon != 0 else nll
    per_sample = torch.where(valid, poly, torch.zeros_like(poly))
    loss = reduce_loss(per_sample, reduction, valid.sum())
    return LossOutput(loss, per_sample, log_p_t.detach().exp(), valid, target, "multiclass", num_classes)


def poly_loss_output(
    input: Tensor,
    target: Tensor,
    epsilon: float = 1.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""Poly-1 loss (Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions", ICLR 2022) with its per-sample losses and p_t.

    .. math::
        \ell_i = -\log p_{i,y_i} + \epsilon\, (1 - p_{i,y_i})

    The leading polynomial coefficient of cross-entropy, :math:`1`, becomes :math:`1 + \epsilon`.
    :math:`\epsilon \ge -1` keeps the loss non-negative and decreasing in :math:`p_t` (below -1 it
    rises again as :math:`p_t \to 1`, from :math:`p_t = -1/\epsilon` on); the paper searches
    :math:`\epsilon` from -1 up. ``epsilon=0`` is cross-entropy. :math:`1 - p_t` is computed from
    :math:`\log p_t` without cancellation, so the loss is finite and exact for saturated logits.

    With label smoothing :math:`\alpha`, as in the paper's code, both terms use the smoothed target
    :math:`t = (1 - \alpha)\, \mathbb{1}_{y} + \alpha / C`: the first is ``F.cross_entropy(...,
    label_smoothing=alpha)`` and the second :math:`\epsilon \sum_c t_c (1 - p_c) = \epsilon ((1 -
    \alpha)(1 - p_t) + \alpha (C - 1) / C)`. ``p_t`` is the model's own (unsmoothed) probability.
    ``"mean"`` divides by the number of counted samples; an empty batch, or one where every target is
    ignored, gives 0 with a zero gradient.

    Args:
        input: Logits ``(N, C)`` or ``(N, C, d1, ...)``; half precision is computed in float32.
        target: Class indices ``(N, d1, ...)``.
        epsilon: Coefficient of :math:`1 - p_t`, finite and ``>= -1`` (1 in the paper's default).
        ignore_index: Targets equal to this do not count.
        label_smoothing: :math:`\alpha` in ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, zero where ignored).
        validate_args: Check target values (one host-device sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> out = poly_loss_output(logits, torch.tensor([0, 2]), epsilon=1.0, reduction="none")
        >>> [round(v, 4) for v in out.per_sample.tolist()], [round(p, 4) for p in out.p_t.tolist()]
        ([0.3261, 2.3395], [0.8438, 0.2119])
    """
    epsilon, label_smoothing = _check_poly_args(epsilon, label_smoothing)
    return _poly_output(input, target, epsilon, ignore_index, label_smoothing, reduction, validate_args)


def poly_loss(
    input: Tensor,
    target: Tensor,
    epsilon: float = 1.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Poly-1 loss, as :func:`poly_loss_output` but returning only the loss.

    Example:
        >>> poly_loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), epsilon=0.0)
        tensor(0.1698)
    """
    return poly_loss_output(input, target, epsilon, ignore_index, label_smoothing, reduction, validate_args).loss
