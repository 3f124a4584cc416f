"""Cross-entropy, class-balanced cross-entropy and binary cross-entropy modules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lossplug import shared_checks as checks
from lossplug.functional.cross_entropy import checked_binary_cross_entropy_output, checked_cross_entropy_output
from lossplug.losses.base import BaseLoss, ClassWeightedLoss
from lossplug.output import LossOutput
from lossplug.shared_checks import AlphaStrategy, Reduction


class CrossEntropyLoss(BaseLoss):
    """Cross-entropy with the semantics of ``torch.nn.CrossEntropyLoss``; see
    :func:`lossplug.functional.cross_entropy_output`.

    Args:
        weight: Class weights ``(C,)``, finite and >= 0; kept as a buffer.
        ignore_index: Targets equal to this do not count (class-index targets only: with class-probability
            targets, anything but the default -100 is an error).
        label_smoothing: In ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).

    Example:
        >>> CrossEntropyLoss()(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]))
        tensor(0.1698)
    """

    weight: Tensor | None

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", checks.as_class_weight("weight", weight))
        self.ignore_index = checks.check_int("ignore_index", ignore_index)
        self.label_smoothing = checks.check_number("label_smoothing", label_smoothing, 0.0, 1.0)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        # the weight buffer was checked when it was made: no host-device sync to check it again
        return checked_cross_entropy_output(
            input,
            target,
            self.weight,
            self.ignore_index,
            self.label_smoothing,
            self.reduction,
            self.validate_args,
            weight_checked=True,
        )


class BalancedCrossEntropyLoss(ClassWeightedLoss):
    r"""Alpha-balanced cross-entropy :math:`-\alpha_{y_i} \log p_t`; see
    :func:`lossplug.functional.balanced_cross_entropy_output`.

    Args:
        alpha: One weight per class (finite, >= 0, like ``torch.nn.CrossEntropyLoss``'s ``weight``), or
            ``"inverse_frequency"`` / ``"effective_number"`` to compute them from the training class
            counts (:meth:`set_class_counts`).
        beta: The ``"effective_number"`` parameter, in ``[0, 1)``; ``None`` means 0.999. Only for
            ``alpha="effective_number"``: with any other alpha it is an error.
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"`` (divides by the sum of alpha over counted samples), ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).

    Example:
        >>> loss = BalancedCrossEntropyLoss(alpha=[0.25, 0.75])
        >>> loss(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        tensor(0.2667)
    """

    def __init__(
        self,
        alpha: Sequence[float] | AlphaStrategy,
        beta: float | None = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self._register_alpha(alpha, beta, required=True)
        self.ignore_index = checks.check_int("ignore_index", ignore_index)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        alpha = self._resolved_alpha()
        if alpha is not None and input.ndim >= 2:
            checks.check_class_weight_length("alpha", alpha, input.shape[1])
        if target.is_floating_point():
            raise TypeError(
                f"Expected `target` to hold integer class indices (int64), but got dtype {target.dtype}. "
                "Class-probability targets are taken by `CrossEntropyLoss`."
            )
        return checked_cross_entropy_output(
            input, target, alpha, self.ignore_index, 0.0, self.reduction, self.validate_args, weight_checked=True
        )


class BinaryCrossEntropyLoss(BaseLoss):
    """Binary cross-entropy on logits, as ``F.binary_cross_entropy_with_logits``; see
    :func:`lossplug.functional.binary_cross_entropy_output`.

    Args:
        pos_weight: Weight of positives: one number, or one per class (the last dimension); >= 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check that target values are in [0, 1] on every call (one host-device sync).

    Example:
        >>> BinaryCrossEntropyLoss()(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
        tensor(1.4100)
    """

    target_kind = "probability"
    pos_weight: Tensor | None

    def __init__(
        self,
        pos_weight: Sequence[float] | float | None = None,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(pos_weight, bool):
            raise TypeError(f"Expected argument `pos_weight` to be a number or one per class, but got {pos_weight!r}.")
        if isinstance(pos_weight, int | float):
            checks.check_number("pos_weight", pos_weight, 0.0)
            buffer: Tensor | None = torch.tensor([float(pos_weight)])
        else:
            buffer = checks.as_class_weight("pos_weight", pos_weight)
        self.register_buffer("pos_weight", buffer)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        if self.pos_weight is not None and self.pos_weight.numel() > 1:
            classes = input.shape[-1] if input.ndim else 0
            if classes != self.pos_weight.numel():
                raise ValueError(
                    f"Expected `pos_weight` to have one entry per class (the last dimension of `input`, "
                    f"{classes}), but got {self.pos_weight.numel()} entries."
                )
        return checked_binary_cross_entropy_output(
            input, target, self.pos_weight, self.reduction, self.validate_args, pos_weight_checked=True
        )
