r"""ArcFace: additive angular margin loss (Deng et al. 2019).

Eager calls build the margin logits in place (:class:`_MarginLogits`); while ``torch.compile`` traces
and under ``torch.func`` transforms, the plain composition with :class:`_AngularMargin` (a
``setup_context`` Function with a generated vmap rule) gives the same values and gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lossplug.functional._reduction import reduce_loss
from lossplug.functional.cross_entropy import upcast
from lossplug.output import LossOutput
from lossplug.shared_checks import Reduction, check_bool, check_embeddings, check_number, check_reduction, is_traced


def _margin_target_cosine(cosine: Tensor, margin: float, easy_margin: bool) -> tuple[Tensor, Tensor]:
    """psi(theta) and d psi / d cos(theta) for cosines of the target class."""
    sin_theta = (1 - cosine * cosine).clamp_min(0).sqrt()  # |cos| may exceed 1 by a rounding error
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    shifted = cosine * cos_m - sin_theta * sin_m  # cos(theta + m)
    # d cos(theta + m) / d cos(theta) = cos m + sin m * cos(theta) / sin(theta); at sin(theta) = 0 the
    # derivative diverges but d cos(theta) / d embedding vanishes, so any finite value gives the limit 0
    positive = sin_theta > 0
    safe_sin = torch.where(positive, sin_theta, torch.ones_like(sin_theta))
    shifted_grad = cos_m + sin_m * torch.where(positive, cosine / safe_sin, torch.zeros_like(cosine))
    if easy_margin:
        use_shift = cosine > 0
        fallback, fallback_grad = cosine, torch.ones_like(cosine)
    else:
        use_shift = cosine >= -cos_m  # theta + m <= pi
        fallback, fallback_grad = cosine - margin * sin_m, torch.ones_like(cosine)
    return torch.where(use_shift, shifted, fallback), torch.where(use_shift, shifted_grad, fallback_grad)


class _AngularMargin(torch.autograd.Function):
    """psi(cos theta) with a derivative that is finite at cos theta = +-1 (no acos, no bare sqrt).

    In the ``setup_context`` form with a generated vmap rule, for ``torch.func.grad`` and ``vmap``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(cosine: Tensor, margin: float, easy_margin: bool) -> Tensor:
        return _margin_target_cosine(cosine, margin, easy_margin)[0]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        cosine, margin, easy_margin = inputs
        ctx.save_for_backward(cosine)
        ctx.margin, ctx.easy_margin = margin, easy_margin

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (cosine,) = ctx.saved_tensors  # recomputed so that double backward sees a differentiable graph
        return grad_output * _margin_target_cosine(cosine, ctx.margin, ctx.easy_margin)[1], None, None


class _MarginLogits(torch.autograd.Function):
    r"""Logits :math:`s \cos\theta_j`, and :math:`s\,\psi(\theta_y)` at the target, from normalized embeddings
    and class weights, with the exact gradient.

    The cosine matrix is this function's own, so it is scaled and given the target margin in place:
    one full-size tensor in forward, where the composition ``(linear(e, w) * s).scatter(...)`` makes
    three, and nothing full-size is kept for backward but what the matrix products need (the two
    normalized inputs) and the target cosines. Backward scales the incoming gradient once, puts
    :math:`g_{iy}\, s\, \psi'(\cos\theta_y)` in the target column, and multiplies back. A double
    backward (``create_graph=True``) takes the same formula written differentiably. Eager-only (it
    keeps an intermediate, the target cosines, which the ``setup_context`` form would have to return):
    traced and transformed calls take the composition with :class:`_AngularMargin`.
    """

    @staticmethod
    def forward(
        ctx: Any, embeddings: Tensor, weight: Tensor, index: Tensor, scale: float, margin: float, easy_margin: bool
    ) -> Tensor:
        logits = F.linear(embeddings, weight).to(embeddings.dtype)  # under autocast: back to float32
        target_cosine = logits.gather(1, index)
        psi = _margin_target_cosine(target_cosine, margin, easy_margin)[0]
        ctx.save_for_backward(embeddings, weight, index, target_cosine)
        ctx.scale, ctx.margin, ctx.easy_margin = scale, margin, easy_margin
        return logits.mul_(scale).scatter_(1, index, psi.mul_(scale))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        embeddings, weight, index, target_cosine = ctx.saved_tensors
        scale = ctx.scale
        if torch.is_grad_enabled():  # double backward: differentiable in grad_output and both inputs
            target_cosine = (embeddings * weight.index_select(0, index.squeeze(1))).sum(dim=1, keepdim=True)
        slope = _margin_target_cosine(target_cosine, ctx.margin, ctx.easy_margin)[1]
        target_grad = grad_output.gather(1, index) * slope * scale
        if torch.is_grad_enabled():
            grad_cosine = (grad_output * scale).scatter(1, index, target_grad)
        else:
            grad_cosine = torch.mul(grad_output, scale).scatter_(1, index, target_grad)
        grad_embeddings = grad_cosine @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_cosine.t() @ embeddings if ctx.needs_input_grad[1] else None
        return grad_embeddings, grad_weight, None, None, None, None


def check_arcface_args(scale: float, margin: float, easy_margin: bool = False) -> tuple[float, float, bool]:
    """Check ``scale > 0``, ``margin`` in ``[0, pi/2)`` (both finite) and that ``easy_margin`` is a bool."""
    scale = check_number("scale", scale, 0.0, low_closed=False)
    margin = check_number("margin", margin, 0.0, math.pi / 2, high_closed=False, high_text="pi/2")
    return scale, margin, check_bool("easy_margin", easy_margin)


def _normalized(embeddings: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Unit-norm embeddings and class weights, in their promoted dtype and at least float32."""
    dtype = torch.promote_types(upcast(embeddings).dtype, upcast(weight).dtype)  # half is computed in float32
    return F.normalize(embeddings.to(dtype), dim=1), F.normalize(weight.to(dtype), dim=1)


def cosine_logits(embeddings: Tensor, weight: Tensor, scale: float) -> Tensor:
    r"""Class scores :math:`s \cos\theta_j` without the margin ``(N, C)``, in at least float32.

    Embeddings and weights of different dtypes (float16 embeddings, float32 weights) are computed in
    their promoted dtype, as :func:`arcface_logits` computes them.
    """
    normalized_embeddings, normalized_weight = _normalized(embeddings, weight)
    # under autocast, linear gives half precision: the scores come back in the computed dtype
    return F.linear(normalized_embeddings, normalized_weight).to(normalized_embeddings.dtype) * scale


def arcface_logits(
    embeddings: Tensor, target: Tensor, weight: Tensor, scale: float, margin: float, easy_margin: bool = False
) -> Tensor:
    r"""Margin-adjusted logits :math:`s \cos\theta_j` (:math:`j \ne y_i`) and :math:`s\,\psi(\theta_{y_i})`.

    Shapes: ``embeddings`` ``(N, D)``, ``target`` ``(N,)``, ``weight`` ``(C, D)``; returns ``(N, C)``
    in at least float32.
    """
    check_bool("easy_margin", easy_margin)
    normalized_embeddings, normalized_weight = _normalized(embeddings, weight)
    index = target.long().unsqueeze(1)
    if not is_traced():  # eager: no extra full-size copies (see _MarginLogits)
        return _MarginLogits.apply(normalized_embeddings, normalized_weight, index, scale, margin, easy_margin)
    cosine = F.linear(normalized_embeddings, normalized_weight)
    target_cosine = cosine.gather(1, index).squeeze(1)
    psi = _AngularMargin.apply(target_cosine, margin, easy_margin)
    return (cosine * scale).scatter(1, index, (psi * scale).unsqueeze(1))


def arcface_loss_output(
    embeddings: Tensor,
    target: Tensor,
    weight: Tensor,
    scale: float = 64.0,
    margin: float = 0.5,
    easy_margin: bool = False,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""ArcFace loss with its per-sample losses and p_t under the margin-adjusted softmax.

    .. math::
        \ell_i = -\log \frac{e^{s \psi(\theta_{y_i})}}{e^{s \psi(\theta_{y_i})} + \sum_{j \ne y_i} e^{s \cos\theta_j}},
        \quad \psi(\theta) = \begin{cases} \cos(\theta + m) & \theta + m \le \pi \\
        \cos\theta - m \sin m & \text{otherwise} \end{cases}

    where :math:`\cos\theta_j` is the cosine between the embedding and class weight :math:`W_j`. The
    extension past :math:`\pi - m` keeps the target logit non-increasing in :math:`\theta`.
    ``easy_margin=True`` applies the margin only where :math:`\cos\theta > 0` (and is not monotonic
    at :math:`\theta = \pi/2`). ``margin=0`` is cross-entropy over :math:`s \cos\theta`.

    Args:
        embeddings: ``(N, D)``.
        target: Class indices ``(N,)``.
        weight: Class weights ``(C, D)``, normalized inside.
        scale: :math:`s > 0`.
        margin: :math:`m` in ``[0, pi/2)``.
        easy_margin: Apply the margin only where the cosine is positive.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values (one host-device sync per call).

    Example:
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> out = arcface_loss_output(torch.tensor([[1.0, 1.0]]), torch.tensor([0]), weight, scale=4.0)
        >>> round(out.loss.item(), 4), round(out.p_t.item(), 4)
        (1.8697, 0.1542)
    """
    scale, margin, easy_margin = check_arcface_args(scale, margin, easy_margin)
    check_reduction(reduction)
    check_bool("validate_args", validate_args)
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise ValueError(f"Expected `weight` of shape (num_classes, embedding_dim), but got {_shape(weight)}.")
    check_embeddings("embeddings", embeddings, target, weight.shape[1], weight.shape[0], validate_args)
    logits = arcface_logits(embeddings, target, weight, scale, margin, easy_margin)
    per_sample = F.cross_entropy(logits, target.long(), reduction="none")
    valid = torch.ones_like(per_sample, dtype=torch.bool)
    loss = reduce_loss(per_sample, reduction)
    return LossOutput(loss, per_sample, (-per_sample.detach()).exp(), valid, target, "multiclass", weight.shape[0])


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def arcface_loss(
    embeddings: Tensor,
    target: Tensor,
    weight: Tensor,
    scale: float = 64.0,
    margin: float = 0.5,
    easy_margin: bool = False,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """ArcFace loss, as :func:`arcface_loss_output` but returning only the loss."""
    return arcface_loss_output(embeddings, target, weight, scale, margin, easy_margin, reduction, validate_args).loss
