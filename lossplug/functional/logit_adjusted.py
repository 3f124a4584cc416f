r"""Logit-adjusted cross-entropy and balanced softmax: cross-entropy on logits shifted by the log class prior.

Both take the training class counts :math:`n_c`; the prior is :math:`\pi_c = n_c / \sum_j n_j`. The
shift only enters the loss: predictions are the argmax of the model's own logits, and ``p_t`` (what
the diagnostics bin by) is the model's own probability, before the adjustment.

The class-count checks and :func:`model_p_t` are shared with :mod:`lossplug.functional.ldam`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lossplug.functional._reduction import reduce_loss
from lossplug.functional.cross_entropy import _class_dim, class_log_probs, model_p_t, upcast
from lossplug.output import LossOutput
from lossplug.shared_checks import (
    ClassCounts,
    Reduction,
    check_bool,
    check_class_vector,
    check_index_target,
    check_int,
    check_logits,
    check_number,
    check_reduction,
    checked_class_counts,
)


def log_class_prior(class_counts: ClassCounts) -> Tensor:
    r"""The log class prior :math:`\log \pi_c = \log (n_c / \sum_j n_j)` from training class counts, in float64.

    Args:
        class_counts: Training samples per class ``(C,)``, each a whole number ``>= 1``.

    Example:
        >>> log_class_prior([3, 1]).exp()
        tensor([0.7500, 0.2500], dtype=torch.float64)
    """
    counts = checked_class_counts(class_counts, "the log prior of a class without samples is -inf")
    return counts.log() - counts.sum().log()


def _check_tau(tau: float) -> float:
    return check_number("tau", tau)


def _log_prior_for(input: Tensor, class_counts: ClassCounts) -> Tensor:
    """The checked counts' log prior on ``input``'s device (after checking ``input``, whose device it takes)."""
    log_prior = log_class_prior(class_counts)
    check_logits(input)
    return log_prior.to(input.device)


def _logit_adjusted_output(
    input: Tensor,
    target: Tensor,
    log_prior: Tensor,
    tau: float,
    ignore_index: int,
    reduction: Reduction,
    validate_args: bool,
    with_p_t: bool = True,
) -> LossOutput:
    """The loss from a log prior already computed (the modules keep it as a buffer); see
    :func:`logit_adjusted_loss_output`. Without ``with_p_t`` the output's ``p_t`` is ``None``."""
    check_logits(input)
    ignore_index = check_int("ignore_index", ignore_index)
    check_reduction(reduction)
    check_bool("validate_args", validate_args)
    check_class_vector("log_prior", log_prior, input)
    check_index_target(input, target, ignore_index, validate_args)
    compute_input = upcast(input)
    adjusted = compute_input
    if tau != 0:
        adjusted = compute_input + _class_dim(tau * log_prior.to(compute_input.dtype), input.ndim)
    _, log_q_t, valid, safe_target = class_log_probs(adjusted, target, ignore_index)
    per_sample = torch.where(valid, -log_q_t, torch.zeros_like(log_q_t))
    loss = reduce_loss(per_sample, reduction, valid.sum())
    p_t = model_p_t(compute_input, safe_target) if with_p_t else None
    return LossOutput(loss, per_sample, p_t, valid, target, "multiclass", input.shape[1])


def logit_adjusted_loss_output(
    input: Tensor,
    target: Tensor,
    class_counts: ClassCounts,
    tau: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021)
    with its per-sample losses and p_t.

    .. math::
        \ell_i = -\log \frac{e^{z_{i,y_i} + \tau \log \pi_{y_i}}}{\sum_j e^{z_{i,j} + \tau \log \pi_j}},
        \qquad \pi_c = \frac{n_c}{\sum_j n_j}

    Cross-entropy on the logits shifted by :math:`\tau` times the log prior, computed in log space, so
    it is finite for saturated logits. ``tau=0`` is plain cross-entropy, and so are equal counts (a
    shift common to every class cancels); ``tau=1`` is the balanced softmax
    (:func:`balanced_softmax_loss_output`). ``"mean"`` divides by the number of counted samples; an
    empty batch, or one where every target is ignored, gives 0 with a zero gradient.

    ``p_t`` is the model's own probability, before the prior/margin adjustment:
    :math:`\mathrm{softmax}(z_i)_{y_i}`, what the model predicts with.

    Args:
        input: Logits ``(N, C)`` or ``(N, C, d1, ...)``; half precision is computed in float32.
        target: Class indices ``(N, d1, ...)``.
        class_counts: Training samples per class ``(C,)``, each a whole number ``>= 1``.
        tau: Scale of the adjustment, a finite number (1 in the paper; 0 gives cross-entropy).
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, zero where ignored).
        validate_args: Check target values (one host-device sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> out = logit_adjusted_loss_output(logits, torch.tensor([0, 2]), [80, 15, 5], reduction="none")
        >>> [round(v, 4) for v in out.per_sample.tolist()], [round(p, 4) for p in out.p_t.tolist()]
        ([0.0281, 3.2251], [0.8438, 0.2119])
    """
    tau = _check_tau(tau)
    log_prior = _log_prior_for(input, class_counts)
    return _logit_adjusted_output(input, target, log_prior, tau, ignore_index, reduction, validate_args)


def logit_adjusted_loss(
    input: Tensor,
    target: Tensor,
    class_counts: ClassCounts,
    tau: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Logit-adjusted cross-entropy, as :func:`logit_adjusted_loss_output` but returning only the loss.

    Example:
        >>> logit_adjusted_loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), [80, 15, 5], tau=0.0)
        tensor(0.1698)
    """
    tau = _check_tau(tau)
    log_prior = _log_prior_for(input, class_counts)
    return _logit_adjusted_output(input, target, log_prior, tau, ignore_index, reduction, validate_args, False).loss


def balanced_softmax_loss_output(
    input: Tensor,
    target: Tensor,
    class_counts: ClassCounts,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""Balanced softmax cross-entropy (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual
    Recognition", NeurIPS 2020) with its per-sample losses and p_t.

    .. math::
        \ell_i = -\log \frac{n_{y_i} e^{z_{i,y_i}}}{\sum_j n_j e^{z_{i,j}}}

    The same as :func:`logit_adjusted_loss_output` with ``tau=1``; with equal counts it is plain
    cross-entropy. ``p_t`` is the model's own probability, before the prior/margin adjustment.

    Args:
        input: Logits ``(N, C)`` or ``(N, C, d1, ...)``; half precision is computed in float32.
        target: Class indices ``(N, d1, ...)``.
        class_counts: Training samples per class ``(C,)``, each a whole number ``>= 1``.
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, zero where ignored).
        validate_args: Check target values (one host-device sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> balanced_softmax_loss_output(logits, torch.tensor([0, 1]), [90, 10]).loss
        tensor(0.7380)
    """
    return logit_adjusted_loss_output(input, target, class_counts, 1.0, ignore_index, reduction, validate_args)


def balanced_softmax_loss(
    input: Tensor,
    target: Tensor,
    class_counts: ClassCounts,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Balanced softmax cross-entropy, as :func:`balanced_softmax_loss_output` but returning only the loss.

    Example:
        >>> balanced_softmax_loss(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), [90, 10])
        tensor(0.7380)
    """
    return logit_adjusted_loss(input, target, class_counts, 1.0, ignore_index, reduction, validate_args)
