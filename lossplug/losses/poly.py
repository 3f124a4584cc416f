"""The Poly-1 loss module."""

from __future__ import annotations

from torch import Tensor

from lossplug import shared_checks as checks
from lossplug.functional.poly import _check_poly_args, _poly_output
from lossplug.losses.base import BaseLoss
from lossplug.output import LossOutput
from lossplug.shared_checks import Reduction


class PolyLoss(BaseLoss):
    r"""Poly-1 loss :math:`-\log p_t + \epsilon (1 - p_t)` (Leng et al., ICLR 2022); see
    :func:`lossplug.functional.poly_loss_output`.

    ``p_t`` is the model's own probability (before label smoothing).

    Args:
        epsilon: Coefficient of :math:`1 - p_t`, finite and ``>= -1`` (below -1 the loss would rise
            again as :math:`p_t \to 1`); 0 gives cross-entropy.
        ignore_index: Targets equal to this do not count.
        label_smoothing: In ``[0, 1]``; smooths both terms, as the paper's code does.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).

    Example:
        >>> PolyLoss(epsilon=1.0)(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2]))
        tensor(1.3328)
    """

    def __init__(
        self,
        epsilon: float = 1.0,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.epsilon, self.label_smoothing = _check_poly_args(epsilon, label_smoothing)
        self.ignore_index = checks.check_int("ignore_index", ignore_index)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        return _poly_output(
            input, target, self.epsilon, self.ignore_index, self.label_smoothing, self.reduction, self.validate_args
        )
