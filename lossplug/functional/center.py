r"""Center loss (Wen et al. 2016) and its moving-average center update.

Eager calls use the closed-form :class:`_CenterDistance`; while ``torch.compile`` traces and under
``torch.func`` transforms, the plain formula (which the compiler fuses and ``grad``/``vmap``
transform) gives the same values and gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lossplug.functional._reduction import reduce_loss
from lossplug.functional.cross_entropy import upcast
from lossplug.output import LossOutput
from lossplug.shared_checks import Reduction, check_bool, check_embeddings, check_number, check_reduction, is_traced


def _check_centers(centers: Tensor) -> None:
    if not isinstance(centers, Tensor) or centers.ndim != 2:
        shape = tuple(centers.shape) if isinstance(centers, Tensor) else type(centers).__name__
        raise ValueError(f"Expected `centers` of shape (num_classes, feature_dim), but got {shape}.")


class _CenterDistance(torch.autograd.Function):
    r"""Per-sample :math:`\tfrac12 \lVert x_i - c_{y_i} \rVert^2` with its closed-form gradient.

    Forward gathers :math:`c_{y_i}` and turns that buffer into :math:`x_i - c_{y_i}` in place (the one
    full-size tensor it keeps); the squared norms are batched dot products, with no squared
    temporary. Backward scales the saved difference once (:math:`g_i (x_i - c_{y_i})`, the feature
    gradient) and scatter-adds its negative into the centers' gradient. Eager-only (``out=`` and
    in-place operations, which ``vmap`` does not batch): traced and transformed calls take the plain
    formula.
    """

    @staticmethod
    def forward(ctx: Any, features: Tensor, target: Tensor, centers: Tensor) -> Tensor:
        difference = centers.index_select(0, target).to(features.dtype)
        torch.sub(features, difference, out=difference)
        per_sample = torch.bmm(difference.unsqueeze(1), difference.unsqueeze(2)).view(-1).mul_(0.5)
        ctx.save_for_backward(difference, target, features, centers if ctx.needs_input_grad[2] else None)
        ctx.num_centers = centers.shape[0]
        return per_sample

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        difference, target, features, centers = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: recompute the difference differentiably
            gathered = centers.index_select(0, target) if centers is not None else (features - difference).detach()
            difference = features - gathered.to(features.dtype)
        grad_features = difference * grad_output.unsqueeze(1)
        grad_centers = None
        if ctx.needs_input_grad[2]:
            zeros = torch.zeros(ctx.num_centers, difference.shape[1], dtype=difference.dtype, device=difference.device)
            if torch.is_grad_enabled():
                grad_centers = zeros.index_add(0, target, grad_features, alpha=-1)
            else:
                grad_centers = zeros.index_add_(0, target, grad_features, alpha=-1)
        return (grad_features if ctx.needs_input_grad[0] else None), None, grad_centers


def center_loss_output(
    features: Tensor,
    target: Tensor,
    centers: Tensor,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> LossOutput:
    r"""Center loss with its per-sample losses.

    .. math::
        \ell_i = \tfrac{1}{2} \lVert x_i - c_{y_i} \rVert^2

    Gathers :math:`c_{y_i}` (never an ``N x C`` distance matrix), so the cost does not grow with the
    number of classes. Center loss has no class probabilities: ``p_t`` is ``None``.

    Args:
        features: ``(N, D)``.
        target: Class indices ``(N,)``.
        centers: ``(C, D)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values (one host-device sync per call).

    Example:
        >>> centers = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> center_loss_output(torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([0, 1]), centers).loss
        tensor(6.2500)
    """
    check_reduction(reduction)
    check_bool("validate_args", validate_args)
    _check_centers(centers)
    check_embeddings("features", features, target, centers.shape[1], centers.shape[0], validate_args)
    if is_traced():  # compiled or transformed: the plain formula, which the compiler fuses
        difference = upcast(features) - centers.index_select(0, target.long()).to(upcast(features).dtype)
        per_sample = 0.5 * difference.pow(2).sum(dim=1)
    else:
        per_sample = _CenterDistance.apply(upcast(features), target.long(), centers)
    valid = torch.ones_like(per_sample, dtype=torch.bool)
    loss = reduce_loss(per_sample, reduction)
    return LossOutput(loss, per_sample, None, valid, target, "multiclass", centers.shape[0])


def center_loss(
    features: Tensor,
    target: Tensor,
    centers: Tensor,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Center loss, as :func:`center_loss_output` but returning only the loss."""
    return center_loss_output(features, target, centers, reduction, validate_args).loss


@torch.no_grad()
def update_centers_(centers: Tensor, features: Tensor, target: Tensor, center_lr: float) -> Tensor:
    r"""The paper's center update, in place:
    :math:`c_j \leftarrow c_j - \alpha \sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)`.

    When ``torch.distributed`` is initialized, the per-class sums and counts are summed across
    processes first, so every process applies the same update and the centers stay identical.

    Args:
        centers: ``(C, D)``, updated in place and returned.
        features: ``(N, D)``; not differentiated.
        target: Class indices ``(N,)``.
        center_lr: :math:`\alpha` in ``[0, 1]``.

    Example:
        >>> centers = torch.zeros(2, 1)
        >>> update_centers_(centers, torch.tensor([[2.0], [4.0]]), torch.tensor([0, 0]), center_lr=0.5)
        tensor([[1.],
                [0.]])
    """
    center_lr = check_number("center_lr", center_lr, 0.0, 1.0)
    target = target.long()
    counts = torch.zeros(centers.shape[0], dtype=centers.dtype, device=centers.device)
    counts.index_add_(0, target, torch.ones_like(target, dtype=centers.dtype))
    feature_sums = torch.zeros_like(centers).index_add_(0, target, features.detach().to(centers.dtype))
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
        dist.all_reduce(feature_sums)
    step = (counts.unsqueeze(1) * centers - feature_sums) / (1 + counts).unsqueeze(1)
    return centers.sub_(center_lr * step)
