"""The LDAM loss module, with deferred re-weighting (DRW) scheduled by epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from lossplug import shared_checks as checks
from lossplug.functional.ldam import _check_max_margin, _check_scale, _ldam_output, drw_class_weights, ldam_margins
from lossplug.losses.base import ClassCountsLoss, ModelOutput, select_input
from lossplug.output import LossOutput
from lossplug.shared_checks import ClassCounts, Reduction


class LDAMLoss(ClassCountsLoss):
    r"""LDAM loss, cross-entropy on :math:`s (z - \Delta_y \mathbb{1}_y)` with margins
    :math:`\Delta_c \propto n_c^{-1/4}` (Cao et al., NeurIPS 2019), with optional deferred
    re-weighting; see :func:`lossplug.functional.ldam_loss_output`.

    **Deferred re-weighting (DRW).** From training epoch ``drw_epoch`` on (0-based, as
    ``trainer.current_epoch``), each sample's loss is weighted by its class's effective-number weight
    (:func:`lossplug.functional.drw_class_weights` with ``drw_beta``, summing to the number of
    classes), and ``"mean"`` divides by the sum of the weights of the counted samples; before it
    every weight is 1. The loss learns the epoch from :meth:`set_epoch`, which
    :class:`~lossplug.mixin.LossMixin` calls at every training step. Outside training (validation,
    test, predict) the weights of the last epoch set apply, so the validation loss of an epoch is the
    loss that epoch trained; until an epoch is set it is 0. The last epoch set is saved in the
    ``state_dict``, so a loaded checkpoint evaluates as the run did. ``drw_epoch=None`` never
    re-weights; ``drw_epoch=0`` weights from the start.

    The margins (and DRW weights) are computed once from the counts and kept as float32 buffers
    ``margins`` (and ``drw_weight``). ``p_t`` is the probability of the scaled logits before the margin,
    :math:`\mathrm{softmax}(s z)_y`, and predictions rank classes by :math:`s z` (:meth:`scores`).

    Args:
        max_margin: The margin of the rarest class, finite and ``>= 0``.
        scale: :math:`s`, finite and ``> 0``; the paper's 30 goes with cosine logits in ``[-1, 1]``.
        class_counts: Training samples per class, each a whole number ``>= 1``; ``None`` to take them
            from the data module when training starts (:meth:`set_class_counts`).
        drw_epoch: The first training epoch with DRW weights, an integer ``>= 0``, or ``None``.
        drw_beta: The effective-number parameter of the DRW weights, in ``[0, 1)``.
        ignore_index: Targets equal to this do not count.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).

    Example:
        >>> loss = LDAMLoss(class_counts=[100, 20, 5], drw_epoch=1, drw_beta=0.99)
        >>> x, y = torch.tensor([[0.5, 0.1, -0.2], [0.0, 0.2, 0.1]]), torch.tensor([0, 2])
        >>> loss(x, y)
        tensor(9.0049)
        >>> loss.set_epoch(1)
        >>> loss(x, y)
        tensor(16.7112)
    """

    _count_buffers = ("margins", "drw_weight")
    margins: Tensor | None
    drw_weight: Tensor | None

    def __init__(
        self,
        max_margin: float = 0.5,
        scale: float = 30.0,
        class_counts: Sequence[int] | None = None,
        drw_epoch: int | None = None,
        drw_beta: float = 0.9999,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.max_margin = _check_max_margin(max_margin)
        self.scale = _check_scale(scale)
        self.drw_epoch = None if drw_epoch is None else checks.check_positive_int("drw_epoch", drw_epoch, minimum=0)
        self.drw_beta = checks.check_number("drw_beta", drw_beta, 0.0, 1.0, high_closed=False)
        self.ignore_index = checks.check_int("ignore_index", ignore_index)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)
        self._epoch = 0
        self._drw_active = self.drw_epoch == 0
        self._init_class_counts(class_counts)

    def _buffers_from_counts(self, class_counts: ClassCounts) -> dict[str, Tensor]:
        buffers = {"margins": ldam_margins(class_counts, self.max_margin)}
        if self.drw_epoch is not None:
            buffers["drw_weight"] = drw_class_weights(class_counts, self.drw_beta)
        return buffers

    def set_epoch(self, epoch: int) -> None:
        """Set the running training epoch (0-based); the DRW weights apply from ``drw_epoch`` on."""
        self._epoch = checks.check_positive_int("epoch", epoch, minimum=0)
        self._drw_active = self.drw_epoch is not None and epoch >= self.drw_epoch

    @property
    def epoch(self) -> int:
        """The last epoch passed to :meth:`set_epoch` (or loaded with the state); 0 until then."""
        return self._epoch

    @property
    def drw_active(self) -> bool:
        """Whether the DRW weights apply now, i.e. the last epoch set is ``>= drw_epoch``."""
        return self._drw_active

    def get_extra_state(self) -> dict[str, Any]:
        # saved with the buffers, so that a loaded checkpoint evaluates with the weights it trained with
        return {"epoch": self._epoch}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        self.set_epoch(state["epoch"])

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        # the loss alone: no p_t
        return self._output(input, target, with_p_t=False).loss

    def scores(self, output: ModelOutput) -> Tensor:
        """The scaled logits :math:`s z`: the probabilities the loss trains (its margin left out)."""
        return self.scale * select_input(output, "logits", type(self).__name__)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        return self._output(input, target, with_p_t=True)

    def _output(self, input: Tensor, target: Tensor, with_p_t: bool) -> LossOutput:
        margins = self._resolved("margins")
        weight = self._resolved("drw_weight") if self._drw_active else None
        return _ldam_output(
            input, target, margins, self.scale, weight, self.ignore_index, self.reduction, self.validate_args, with_p_t
        )
