"""Focal loss modules: softmax (multi-class) and sigmoid (binary, multi-label)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lossplug import shared_checks as checks
from lossplug.functional.focal import (
    Normalization,
    _check_binary_focal_args,
    binary_focal_loss,
    binary_focal_loss_output,
    checked_focal_loss_output,
)
from lossplug.losses.base import BaseLoss, ClassWeightedLoss
from lossplug.output import LossOutput
from lossplug.shared_checks import AlphaStrategy, Reduction


class FocalLoss(ClassWeightedLoss):
    r"""Softmax focal loss :math:`-\alpha_{y_i} (1 - p_t)^\gamma \log p_t`; see
    :func:`lossplug.functional.focal_loss_output`.

    Args:
        gamma: Focusing parameter, >= 0 (0 is cross-entropy).
        alpha: One weight per class (finite, >= 0, like ``torch.nn.CrossEntropyLoss``'s ``weight``),
            ``None``, or ``"inverse_frequency"`` / ``"effective_number"`` (resolved from the training
            class counts). A single number is an error: in the multi-class form it would only rescale
            the loss.
        beta: The ``"effective_number"`` parameter, in ``[0, 1)``; ``None`` means 0.999. Only for
            ``alpha="effective_number"``: with any other alpha it is an error.
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"`` (divides by the sum of alpha over counted samples), ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).

    Example:
        >>> FocalLoss(gamma=2.0)(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]))
        tensor(0.0041)
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | AlphaStrategy | None = None,
        beta: float | None = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.gamma = checks.check_number("gamma", gamma, 0.0)
        self._register_alpha(alpha, beta, required=False)
        self.ignore_index = checks.check_int("ignore_index", ignore_index)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        # the alpha buffer was checked when it was made: no host-device sync to check it again
        return checked_focal_loss_output(
            input,
            target,
            self.gamma,
            self._resolved_alpha(),
            self.ignore_index,
            self.reduction,
            self.validate_args,
            alpha_checked=True,
        )


class BinaryFocalLoss(BaseLoss):
    r"""Sigmoid focal loss :math:`\alpha_t (1 - p_t)^\gamma \mathrm{BCE}(x, t)`, element-wise, for binary
    and multi-label targets; see :func:`lossplug.functional.binary_focal_loss_output`.

    Args:
        gamma: Focusing parameter, >= 0.
        alpha: Weight of positives in ``[0, 1]``, or ``None`` for no alpha term.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        normalization: Denominator of ``"mean"``: ``"elements"``, or ``"positives"`` (RetinaNet; with
            another reduction it would change nothing, so that is an error).
        validate_args: Check that target values are in [0, 1] on every call (one host-device sync).

    Example:
        >>> BinaryFocalLoss(alpha=None)(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.0]))
        tensor(1.4698)
    """

    target_kind = "probability"

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        reduction: Reduction = "mean",
        normalization: Normalization = "elements",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.gamma, self.alpha = _check_binary_focal_args(gamma, alpha, normalization, reduction)
        self.reduction: Reduction = reduction
        self.normalization: Normalization = normalization
        self.validate_args = checks.check_bool("validate_args", validate_args)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        # the loss alone: for "mean" and "sum" no per-element losses or p_t are built
        return binary_focal_loss(input, target, self.gamma, self.alpha, self.reduction, self.normalization, self.validate_args)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        return binary_focal_loss_output(
            input, target, self.gamma, self.alpha, self.reduction, self.normalization, self.validate_args
        )

