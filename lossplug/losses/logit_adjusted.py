"""Logit-adjusted cross-entropy and balanced softmax modules."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lossplug import shared_checks as checks
from lossplug.functional.logit_adjusted import _check_tau, _logit_adjusted_output, log_class_prior
from lossplug.losses.base import ClassCountsLoss
from lossplug.output import LossOutput
from lossplug.shared_checks import ClassCounts, Reduction


class LogitAdjustedLoss(ClassCountsLoss):
    r"""Logit-adjusted cross-entropy, cross-entropy on :math:`z + \tau \log \pi` with the training class
    prior :math:`\pi_c = n_c / \sum_j n_j` (Menon et al., ICLR 2021); see
    :func:`lossplug.functional.logit_adjusted_loss_output`.

    The log prior is computed once from the counts and kept as the float32 buffer ``log_prior``. The
    adjustment is part of the training objective only: the model predicts with its own logits, and
    ``p_t`` is the model's own probability, before the prior/margin adjustment.

    Args:
        tau: Scale of the adjustment, a finite number (1 in the paper; 0 gives cross-entropy).
        class_counts: Training samples per class, each a whole number ``>= 1``; ``None`` to take them
            from the data module when training starts (:meth:`set_class_counts`).
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).

    Example:
        >>> loss = LogitAdjustedLoss(tau=1.0, class_counts=[80, 15, 5])
        >>> loss(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2]))
        tensor(1.6266)
    """

    _count_buffers = ("log_prior",)
    log_prior: Tensor | None

    def __init__(
        self,
        tau: float = 1.0,
        class_counts: Sequence[int] | None = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.tau = _check_tau(tau)
        self.ignore_index = checks.check_int("ignore_index", ignore_index)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)
        self._init_class_counts(class_counts)

    def _buffers_from_counts(self, class_counts: ClassCounts) -> dict[str, Tensor]:
        return {"log_prior": log_class_prior(class_counts)}

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        # the loss alone: no p_t
        return self._output(input, target, with_p_t=False).loss

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        return self._output(input, target, with_p_t=True)

    def _output(self, input: Tensor, target: Tensor, with_p_t: bool) -> LossOutput:
        return _logit_adjusted_output(
            input,
            target,
            self._resolved("log_prior"),
            self.tau,
            self.ignore_index,
            self.reduction,
            self.validate_args,
            with_p_t,
        )


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    r"""Balanced softmax cross-entropy :math:`-\log (n_y e^{z_y} / \sum_j n_j e^{z_j})` (Ren et al.,
    NeurIPS 2020): :class:`LogitAdjustedLoss` with ``tau=1``; see
    :func:`lossplug.functional.balanced_softmax_loss_output`.

    ``p_t`` is the model's own probability, before the prior/margin adjustment.

    Args:
        class_counts: Training samples per class, each a whole number ``>= 1``; ``None`` to take them
            from the data module when training starts (:meth:`set_class_counts`).
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).

    Example:
        >>> BalancedSoftmaxLoss([90, 10])(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        tensor(0.7380)
    """

    def __init__(
        self,
        class_counts: Sequence[int] | None = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__(1.0, class_counts, ignore_index, reduction, validate_args)
