r"""LDAM: the label-distribution-aware margin loss, and the class weights of its deferred re-weighting (DRW).

The margins and the DRW weights come from the training class counts :math:`n_c`. The margin only
enters the loss: ``p_t`` (what the diagnostics bin by) is the probability of the scaled logits
:math:`s z`, before the margin, which is how the loss's softmax sees the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lossplug.functional._reduction import reduce_loss
from lossplug.functional.cross_entropy import counted_targets, model_p_t, sample_weights, upcast
from lossplug.output import LossOutput
from lossplug.shared_checks import (
    ClassCounts,
    ClassWeight,
    Reduction,
    check_bool,
    check_class_vector,
    check_index_target,
    check_int,
    check_logits,
    check_number,
    check_reduction,
    checked_class_counts,
    class_weight_tensor,
)


def _check_max_margin(max_margin: float) -> float:
    return check_number("max_margin", max_margin, 0.0)


def _check_scale(scale: float) -> float:
    return check_number("scale", scale, 0.0, low_closed=False)


def ldam_margins(class_counts: ClassCounts, max_margin: float = 0.5) -> Tensor:
    r"""LDAM's per-class margins :math:`\Delta_c \propto n_c^{-1/4}`, the largest equal to ``max_margin``, in float64.

    Args:
        class_counts: Training samples per class ``(C,)``, each a whole number ``>= 1``.
        max_margin: The margin of the rarest class, a finite number ``>= 0``.

    Example:
        >>> ldam_margins([160, 10], max_margin=0.5)
        tensor([0.2500, 0.5000], dtype=torch.float64)
    """
    max_margin = _check_max_margin(max_margin)
    counts = checked_class_counts(class_counts, "the margin n^(-1/4) of a class without samples is infinite")
    raw = counts.pow(-0.25)
    return raw * (max_margin / raw.max())


def drw_class_weights(class_counts: ClassCounts, beta: float = 0.9999) -> Tensor:
    r"""The class weights of LDAM's deferred re-weighting, by the effective number of samples (Cui et al.
    2019), normalized to sum to the number of classes :math:`C` as in the LDAM-DRW code; in float64.

    .. math::
        w_c = C \, \frac{(1 - \beta) / (1 - \beta^{n_c})}{\sum_j (1 - \beta) / (1 - \beta^{n_j})}

    The same weights as ``class_weights_from_counts(counts, "effective_number", beta)``, scaled
    differently: the scale matters for ``"sum"`` and ``"none"``, not for ``"mean"``.

    Args:
        class_counts: Training samples per class ``(C,)``, each a whole number ``>= 1``.
        beta: In ``[0, 1)``; 0 gives equal weights, values near 1 approach inverse frequency.

    Example:
        >>> drw_class_weights([100, 10], beta=0.9)
        tensor([0.7889, 1.2111], dtype=torch.float64)
    """
    beta = check_number("beta", beta, 0.0, 1.0, high_closed=False)
    counts = checked_class_counts(class_counts, "the effective number of a class without samples is 0")
    raw = (1.0 - beta) / (1.0 - torch.tensor(beta, dtype=torch.float64).pow(counts))
    return raw * (counts.numel() / raw.sum())


def _ldam_output(
    input: Tensor,
    target: Tensor,
    margins: Tensor,
    scale: float,
    weight: Tensor | None,
    ignore_index: int,
    reduction: Reduction,
    validate_args: bool,
    with_p_t: bool = True,
) -> LossOutput:
    """The loss from margins (and class weights) already computed and checked (the module keeps them as
    buffers); see :func:`ldam_loss_output`. Without ``with_p_t`` the output's ``p_t`` is ``None``."""
    check_logits(input)
    ignore_index = check_int("ignore_index", ignore_index)
    check_reduction(reduction)
    check_bool("validate_args", validate_args)
    check_class_vector("margins", margins, input)
    if weight is not None:
        check_class_vector("weight", weight, input)
    check_index_target(input, target, ignore_index, validate_args)
    compute_input = upcast(input)
    dtype = compute_input.dtype
    valid, safe_target = counted_targets(target, ignore_index)
    index = safe_target.unsqueeze(1)
    scaled = compute_input * scale if scale != 1 else compute_input
    shift = (scale * margins.to(dtype))[index]
    log_q_t = scaled.scatter_add(1, index, -shift).log_softmax(dim=1).gather(1, index).squeeze(1)
    sample_weight = sample_weights(None if weight is None else weight.to(dtype), safe_target, valid)
    nll = -log_q_t if weight is None else -log_q_t * sample_weight
    per_sample = torch.where(valid, nll, torch.zeros_like(nll))
    loss = reduce_loss(per_sample, reduction, sample_weight.sum())
    p_t = model_p_t(scaled, safe_target) if with_p_t else None
    return LossOutput(loss, per_sample, p_t, valid, target, "multiclass", input.shape[1])


def _checked_arguments(
    input: Tensor,
    class_counts: ClassCounts,
    max_margin: float,
    scale: float,
    weight: Tensor | ClassWeight | None,
    validate_args: bool,
) -> tuple[Tensor, Tensor | None]:
    """Checks the arguments, then ``input``; gives the margins and the weight on ``input``'s device."""
    _check_scale(scale)
    margins = ldam_margins(class_counts, max_margin)
    check_logits(input)
    check_bool("validate_args", validate_args)
    if weight is not None:
        weight = class_weight_tensor("weight", weight, input, validate_args)
    return margins.to(input.device), weight


def ldam_loss_output(
    input: Tensor,
    target: Tensor,
    class_counts: ClassCounts,
    max_margin: float = 0.5,
    scale: float = 30.0,
    weight: Tensor | ClassWeight | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""LDAM loss (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
    NeurIPS 2019) with its per-sample losses and p_t.

    .. math::
        \ell_i = -w_{y_i} \log \frac{e^{s (z_{i,y_i} - \Delta_{y_i})}}
            {e^{s (z_{i,y_i} - \Delta_{y_i})} + \sum_{j \ne y_i} e^{s z_{i,j}}}, \qquad
        \Delta_c = \Delta_{\max} \frac{n_c^{-1/4}}{\max_j n_j^{-1/4}}

    Cross-entropy on :math:`s (z_i - \Delta_{y_i} \mathbb{1}_{y_i})`: the true class's logit is lowered
    by a margin that is larger for rarer classes, then every logit is scaled by :math:`s`. Computed in
    log space, so it is finite for saturated logits. With ``max_margin=0`` and ``scale=1`` it is
    cross-entropy. ``weight`` (ones if not given) weighs each sample by its class, as torch's
    cross-entropy does: ``"mean"`` divides by :math:`\sum_i w_{y_i}` over counted samples. For
    deferred re-weighting (DRW) pass :func:`drw_class_weights` from the DRW epoch on
    (:class:`~lossplug.losses.LDAMLoss` does this by epoch). An empty batch, or one where every target
    is ignored, gives 0 with a zero gradient.

    ``p_t`` is :math:`\mathrm{softmax}(s z_i)_{y_i}`: the probability of the scaled logits, before the
    margin. The scale is the temperature of the model's softmax here (the paper's logits are cosines),
    so calibration and the hardness bins read the probabilities the loss trains.

    Args:
        input: Logits ``(N, C)`` or ``(N, C, d1, ...)``; half precision is computed in float32.
        target: Class indices ``(N, d1, ...)``.
        class_counts: Training samples per class ``(C,)``, each a whole number ``>= 1``.
        max_margin: :math:`\Delta_{\max}`, the margin of the rarest class, finite and ``>= 0``.
        scale: :math:`s`, finite and ``> 0`` (30 in the paper, whose logits are cosines).
        weight: Class weights ``(C,)``, finite and ``>= 0`` (e.g. :func:`drw_class_weights`): a tensor on
            ``input``'s device, or a sequence; ``None`` weighs every sample 1.
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, zero where ignored).
        validate_args: Check target values, and the values of a tensor ``weight`` (one host-device sync
            per call).

    Example:
        >>> logits = torch.tensor([[0.5, 0.1, -0.2], [0.0, 0.2, 0.1]])
        >>> out = ldam_loss_output(logits, torch.tensor([0, 2]), [100, 20, 5], reduction="none")
        >>> [round(v, 4) for v in out.per_sample.tolist()], [round(p, 4) for p in out.p_t.tolist()]
        ([0.0074, 18.0025], [1.0, 0.0473])
    """
    margins, weight = _checked_arguments(input, class_counts, max_margin, scale, weight, validate_args)
    return _ldam_output(input, target, margins, scale, weight, ignore_index, reduction, validate_args)


def ldam_loss(
    input: Tensor,
    target: Tensor,
    class_counts: ClassCounts,
    max_margin: float = 0.5,
    scale: float = 30.0,
    weight: Tensor | ClassWeight | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """LDAM loss, as :func:`ldam_loss_output` but returning only the loss.

    Example:
        >>> ldam_loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), [80, 15, 5], max_margin=0.0, scale=1.0)
        tensor(0.1698)
    """
    margins, weight = _checked_arguments(input, class_counts, max_margin, scale, weight, validate_args)
    return _ldam_output(input, target, margins, scale, weight, ignore_index, reduction, validate_args, False).loss
