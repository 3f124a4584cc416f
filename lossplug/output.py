"""The record every lossplug loss returns before reduction."""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

Task = Literal["multiclass", "binary"]


class LossOutput(NamedTuple):
    """A loss value together with the per-sample terms it was reduced from.

    Every loss in :mod:`lossplug.losses` returns this from ``evaluate``; ``forward`` returns only
    ``loss``. The diagnostics read the other fields, so the loss is never computed twice.

    Attributes:
        loss: The reduced loss (a scalar, or per-element for ``reduction="none"``).
        per_sample: Loss of each sample (each element for binary and multi-label losses) before
            reduction, class weights included; zero where ``valid`` is False. Shape ``(N, ...)``.
        p_t: Probability of the true class, detached, same shape as ``per_sample``; element-wise
            ``p t + (1 - p)(1 - t)`` for binary losses. ``None`` for losses without class
            probabilities (center loss).
        valid: Boolean mask of the samples that count (not ``ignore_index``).
        target: Class indices ``(N, ...)`` (multiclass) or the float targets (binary).
        task: ``"multiclass"`` (one class per sample) or ``"binary"`` (each element is a yes/no
            decision: binary and multi-label losses, whose classes are the target columns).
        num_classes: Number of classes; for binary losses, the size of the class dimension (1 for a
            plain binary target of shape ``(N,)``).
        terms: For :class:`~lossplug.losses.WeightedSum`, each term's own output with its weight
            already applied (its contribution to the total); empty otherwise.
    """

    loss: Tensor
    per_sample: Tensor
    p_t: Tensor | None
    valid: Tensor
    target: Tensor
    task: Task
    num_classes: int
    terms: dict[str, LossOutput] = {}  # noqa: RUF012 - NamedTuple defaults are shared, never mutated
