"""The one reduction step every loss shares."""

from __future__ import annotations

import torch
from torch import Tensor

from lossplug.shared_checks import Reduction


def reduce_loss(per_sample: Tensor, reduction: Reduction, denominator: Tensor | None = None) -> Tensor:
    """Reduce per-sample losses.

    ``"mean"`` divides the sum by ``denominator`` (the number of counted samples, or the sum of their
    class weights); when that is 0 (an empty batch, every target ignored) the sum is 0 too, since
    per-sample losses are zero where not counted, and the result is 0 with a zero gradient rather
    than NaN. The division stays on the device: no host-device synchronization.

    Args:
        per_sample: Losses of shape ``(N, ...)``, zero where a sample does not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (returns ``per_sample`` as it is).
        denominator: Scalar tensor for ``"mean"``; defaults to ``per_sample.numel()``.

    Example:
        >>> reduce_loss(torch.tensor([1.0, 3.0, 0.0]), "mean", torch.tensor(2.0))
        tensor(2.)
        >>> reduce_loss(torch.zeros(0), "mean")
        tensor(0.)
    """
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    if denominator is None:
        denominator = torch.tensor(float(per_sample.numel()), device=per_sample.device)
    denominator = denominator.to(total.dtype)
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
