r"""Focal loss: the softmax (multi-class) form and the sigmoid (binary, multi-label) form.

Both are written in log space with closed-form gradients. Differentiating
:math:`(1 - p_t)^\gamma` through autograd multiplies :math:`\gamma (1 - p_t)^{\gamma - 1}`, infinite
at :math:`p_t = 1` when :math:`\gamma < 1`, by a zero, and gives NaN for saturated logits; the
gradients below are the same derivative rearranged so that every factor is finite.

While ``torch.compile`` traces and under ``torch.func`` transforms, the softmax form takes autograd
through ``log_softmax`` and :class:`_FocalTerm` (a ``setup_context`` Function with a generated vmap
rule), and the sigmoid form :class:`~lossplug.functional._kernels.BinaryFocal`; eager calls take the
in-place closed form (:class:`_SoftmaxFocal`) and the chunked CPU kernels, which work on the
tensors' storage and so cannot run under a transform.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor

from lossplug.functional._kernels import (
    BinaryFocal,
    BinaryFocalElementwise,
    BinaryFocalSum,
    binary_probability_of_target,
    use_chunked_kernel,
)
from lossplug.functional._reduction import reduce_loss
from lossplug.functional.cross_entropy import (
    binary_num_classes,
    class_log_probs,
    counted_targets,
    sample_weights,
    upcast,
)
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
    check_option,
    check_probability_target,
    check_reduction,
    is_traced,
)

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
    """-(1 - p_t)^gamma log p_t as a function of u = log p_t, with a finite gradient at p_t = 1.

    In the ``setup_context`` form with a generated vmap rule: ``torch.func.grad`` and ``vmap`` use
    its closed-form gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(log_p_t: Tensor, gamma: float) -> Tensor:
        return -_modulation(log_p_t, gamma) * log_p_t

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        log_p_t, gamma = inputs
        ctx.save_for_backward(log_p_t)
        ctx.gamma = gamma

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (log_p_t,) = ctx.saved_tensors
        return grad_output * _focal_term_grad(log_p_t, ctx.gamma), None


class _SoftmaxFocal(torch.autograd.Function):
    r"""Per-sample softmax focal loss from the logits, with the closed-form gradient.

    With :math:`u = \log p_t` and :math:`f(u) = -(1 - e^u)^\gamma u`, the gradient with respect to the
    logits of a sample is :math:`c\,(\mathbb{1}_{y} - p)` with :math:`c = g\, w\, f'(u)`: one
    exponential of the saved log-probabilities, scaled in place, plus :math:`c` at the target class.
    So backward allocates nothing full-size (cross-entropy's backward fills a zero tensor, scatters
    into it and runs the log-softmax backward on top). The log-probabilities are owned by this
    function and turned into the gradient in place, once; a second backward (``retain_graph``)
    recomputes them, and a double backward (``create_graph``) takes a differentiable path. Keeping
    that buffer on ``ctx`` needs the ``forward(ctx, ...)`` form, so this Function is eager-only:
    traced and transformed calls take :class:`_FocalTerm` instead.

    Returns ``(per_sample, log_p_t)``: ``w f(u)`` (zero where not valid) and the detached ``log p_t``.
    """

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, safe_target: Tensor, weight: Tensor | None, valid: Tensor, gamma: float
    ) -> tuple[Tensor, Tensor]:
        log_probs = input.log_softmax(dim=1)
        index = safe_target.unsqueeze(1)
        log_p_t = log_probs.gather(1, index).squeeze(1)
        focal = -_modulation(log_p_t, gamma) * log_p_t
        weighted = focal if weight is None else focal * weight
        per_sample = torch.where(valid, weighted, torch.zeros_like(weighted))
        ctx.save_for_backward(input, safe_target, weight, valid, log_p_t, focal)
        ctx.gamma = gamma
        ctx.log_probs = log_probs  # not an output: owned here, consumed by the first backward
        ctx.mark_non_differentiable(log_p_t)
        ctx.set_materialize_grads(False)
        return per_sample, log_p_t

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor | None, _grad_log_p_t: Tensor | None
    ) -> tuple[Tensor | None, None, Tensor | None, None, None]:
        input, safe_target, weight, valid, log_p_t, focal = ctx.saved_tensors
        if grad_output is None:
            return None, None, None, None, None
        grad_weight = None
        if weight is not None and ctx.needs_input_grad[2]:
            grad_weight = torch.where(valid, grad_output * focal, torch.zeros_like(focal))
        if not ctx.needs_input_grad[0]:
            return None, None, grad_weight, None, None
        index = safe_target.unsqueeze(1)
        if torch.is_grad_enabled():  # double backward: the same formula, differentiable in the input
            log_probs = input.log_softmax(dim=1)
            coefficient = _focal_coefficient(
                grad_output, log_probs.gather(1, index).squeeze(1), weight, valid, ctx.gamma
            )
            return (-coefficient * log_probs.exp()).scatter_add(1, index, coefficient), None, grad_weight, None, None
        coefficient = _focal_coefficient(grad_output, log_p_t, weight, valid, ctx.gamma)
        log_probs, ctx.log_probs = ctx.log_probs, None
        if log_probs is None:  # a second backward of a retained graph
            log_probs = input.log_softmax(dim=1)
        grad = log_probs.exp_().mul_(-coefficient)
        return grad.scatter_add_(1, index, coefficient), None, grad_weight, None, None


def _focal_coefficient(
    grad_output: Tensor, log_p_t: Tensor, weight: Tensor | None, valid: Tensor, gamma: float
) -> Tensor:
    """c = g w f'(log p_t) per sample, zero where not valid, with a class dimension for broadcasting."""
    coefficient = grad_output * _focal_term_grad(log_p_t, gamma)
    if weight is not None:
        coefficient = coefficient * weight
    return torch.where(valid, coefficient, torch.zeros_like(coefficient)).unsqueeze(1)


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
        alpha: Class weights ``(C,)``, finite and ``>= 0`` (like ``torch.nn.CrossEntropyLoss``'s
            ``weight``; they need not sum to 1 nor stay below it), or ``None``.
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, zero where ignored).
        validate_args: Check target values, and the values of a tensor ``alpha`` (one host-device
            sync per call).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> out = focal_loss_output(logits, torch.tensor([0, 2]), gamma=2.0, reduction="none")
        >>> [round(v, 4) for v in out.per_sample.tolist()]
        [0.0041, 0.9635]
    """
    return checked_focal_loss_output(
        input, target, gamma, alpha, ignore_index, reduction, validate_args, alpha_checked=False
    )


def checked_focal_loss_output(
    input: Tensor,
    target: Tensor,
    gamma: float,
    alpha: Tensor | ClassWeight | None,
    ignore_index: int,
    reduction: Reduction,
    validate_args: bool,
    alpha_checked: bool,
) -> LossOutput:
    """:func:`focal_loss_output`; with ``alpha_checked``, the values of a tensor ``alpha`` are trusted (a
    module's buffer, checked when it was made: checking it on every call would cost a host-device sync)."""
    check_logits(input)
    gamma = _check_gamma(gamma)
    ignore_index = check_int("ignore_index", ignore_index)
    check_reduction(reduction)
    check_bool("validate_args", validate_args)
    alpha_tensor = None if alpha is None else alpha_vector(alpha, input, validate_args and not alpha_checked)
    check_index_target(input, target, ignore_index, validate_args)
    if is_traced():  # compiled or transformed: autograd through log_softmax, which the compiler fuses
        _, log_p_t, valid, safe_target = class_log_probs(input, target, ignore_index)
        sample_weight = sample_weights(alpha_tensor, safe_target, valid)
        focal = _FocalTerm.apply(log_p_t, gamma)
        if alpha_tensor is not None:
            focal = focal * sample_weight
        per_sample = torch.where(valid, focal, torch.zeros_like(focal))
    else:  # eager: the closed-form gradient, computed in place (see _SoftmaxFocal)
        valid, safe_target = counted_targets(target, ignore_index)
        sample_weight = sample_weights(alpha_tensor, safe_target, valid)
        weight = None if alpha_tensor is None else sample_weight
        per_sample, log_p_t = _SoftmaxFocal.apply(upcast(input), safe_target, weight, valid, gamma)
    loss = reduce_loss(per_sample, reduction, sample_weight.sum())
    return LossOutput(loss, per_sample, log_p_t.detach().exp(), valid, target, "multiclass", input.shape[1])


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


def _check_binary_focal_args(
    gamma: float, alpha: float | None, normalization: str, reduction: str
) -> tuple[float, float | None]:
    gamma = _check_gamma(gamma)
    if alpha is not None:
        if isinstance(alpha, list | tuple | Tensor):
            raise ValueError(
                f"Expected argument `alpha` to be a single number in [0, 1] (the weight of positives) or "
                f"None, but got {alpha!r}."
            )
        alpha = check_number("alpha", alpha, 0.0, 1.0)
    check_option("normalization", normalization, ("elements", "positives"))
    check_reduction(reduction)
    if normalization == "positives" and reduction != "mean":
        raise ValueError(
            f"Expected argument `normalization` to be 'elements' with reduction={reduction!r}, but got "
            f"'positives', which divides the mean by the number of positives; with reduction={reduction!r} it "
            "has no effect: use reduction='mean'."
        )
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
    RetinaNet does; ``"positives"`` with another reduction is an error, since it would change nothing.
    No gradient flows to ``target``.

    Args:
        input: Logits of any shape, e.g. ``(N,)`` binary or ``(N, C)`` multi-label.
        target: Floats in ``[0, 1]`` of the same shape.
        gamma: Focusing parameter, ``>= 0``.
        alpha: Weight of positives in ``[0, 1]``, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        normalization: Denominator of ``"mean"``: ``"elements"`` or ``"positives"`` (``"mean"`` only).
        validate_args: Check that target values are in [0, 1] (one host-device sync per call).

    Example:
        >>> out = binary_focal_loss_output(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0]), reduction="none")
        >>> [round(v, 5) for v in out.per_sample.tolist()]
        [0.04332, 3e-05]
    """
    gamma, alpha = _check_binary_focal_inputs(input, target, gamma, alpha, reduction, normalization, validate_args)
    per_sample, p_t = _binary_focal_elementwise(input, target, gamma, alpha, validate_args, with_p_t=True)
    loss = reduce_loss(per_sample, reduction, _binary_focal_denominator(target, normalization, per_sample.dtype))
    valid = torch.ones_like(per_sample, dtype=torch.bool)
    return LossOutput(loss, per_sample, p_t, valid, target, "binary", binary_num_classes(input))


def _check_binary_focal_inputs(
    input: Tensor,
    target: Tensor,
    gamma: float,
    alpha: float | None,
    reduction: str,
    normalization: str,
    validate_args: bool,
) -> tuple[float, float | None]:
    """Argument and tensor checks; target *values* are checked where the loss is computed."""
    gamma, alpha = _check_binary_focal_args(gamma, alpha, normalization, reduction)
    check_bool("validate_args", validate_args)
    check_floating("input", input)
    check_probability_target(input, target, validate_args=False)
    if target.requires_grad:
        raise ValueError(
            "Expected `target` not to require grad: the focal loss is not differentiated with respect to "
            "its targets. Pass `target.detach()`."
        )
    return gamma, alpha


def _binary_focal_elementwise(
    input: Tensor, target: Tensor, gamma: float, alpha: float | None, validate_args: bool, with_p_t: bool
) -> tuple[Tensor, Tensor | None]:
    """Element-wise losses (and p_t, detached) in at least float32; checks target values if asked."""
    if use_chunked_kernel(input):
        # validates chunk by chunk, at no extra pass (see BinaryFocalSum)
        per_sample, p_t = BinaryFocalElementwise.apply(input, target, gamma, alpha, validate_args, with_p_t)
        return per_sample, p_t if with_p_t else None
    check_probability_target(input, target, validate_args)
    compute_input, compute_target = upcast(input), upcast(target)
    per_sample = BinaryFocal.apply(compute_input, compute_target, gamma, alpha)
    p_t = binary_probability_of_target(compute_input, compute_target) if with_p_t else None
    return per_sample, p_t


def _binary_focal_denominator(target: Tensor, normalization: str, dtype: torch.dtype) -> Tensor | None:
    """Denominator of ``"mean"``: the number of positives (at least 1), or ``None`` for every element."""
    return target.sum(dtype=dtype).clamp_min(1.0) if normalization == "positives" else None


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
    gamma, alpha = _check_binary_focal_inputs(input, target, gamma, alpha, reduction, normalization, validate_args)
    if reduction != "none" and use_chunked_kernel(input):
        # the sum, chunk by chunk: no per-element losses and no p_t are materialized
        total = BinaryFocalSum.apply(input, target, gamma, alpha, validate_args, torch.is_grad_enabled())
        if reduction == "sum":
            return total
        denominator = _binary_focal_denominator(target, normalization, total.dtype)
        if denominator is None:
            denominator = torch.tensor(float(input.numel()), dtype=total.dtype)
        return reduce_loss(total, "mean", denominator)
    per_sample, _ = _binary_focal_elementwise(input, target, gamma, alpha, validate_args, with_p_t=False)
    return reduce_loss(per_sample, reduction, _binary_focal_denominator(target, normalization, per_sample.dtype))
