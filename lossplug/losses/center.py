"""Center loss module, with centers trained by the optimizer or by the paper's moving average."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lossplug import shared_checks as checks
from lossplug.functional.center import center_loss_output, update_centers_
from lossplug.losses.base import BaseLoss
from lossplug.output import LossOutput
from lossplug.shared_checks import Reduction

#: The moving-average step when ``center_lr`` is not given (Wen et al. 2016 use 0.5).
DEFAULT_CENTER_LR = 0.5


class CenterLoss(BaseLoss):
    r"""Center loss :math:`\tfrac12 \lVert x_i - c_{y_i} \rVert^2` with learnable ``centers`` ``(C, D)``;
    see :func:`lossplug.functional.center_loss_output`.

    Consumes embeddings (features). Usually added to a classification loss with a small weight,
    e.g. ``WeightedSum({"ce": CrossEntropyLoss(), "center": CenterLoss(10, 64)}, {"ce": 1, "center": 0.01})``.

    Args:
        num_classes: Number of classes ``C``; the ``lossplug`` command fills it in from the data module
            (``None`` is an error anywhere else).
        feature_dim: Feature size ``D``; filled in from the model by the ``lossplug`` command.
        update: ``"optimizer"``: the centers are a parameter trained with the model (give them their
            own learning rate with a parameter group). ``"moving_average"``: the paper's rule
            :math:`c_j \leftarrow c_j - \alpha \sum_{i:y_i=j}(c_j - x_i)/(1+n_j)` applied after each
            call in training mode, with no gradient to the centers (a buffer), summed across processes
            when ``torch.distributed`` is initialized. The loss and its gradient are those of the
            centers before the update, in eager mode and under ``torch.compile`` alike.
        center_lr: :math:`\alpha` in ``[0, 1]`` for ``"moving_average"``; ``None`` means 0.5. Only for
            ``"moving_average"``: with ``"optimizer"`` it is an error (set the centers' learning rate
            with a parameter group instead).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).
        lr: Learning rate of the centers with ``update="optimizer"``:
            :meth:`~lossplug.mixin.LossMixin.parameter_groups` gives them a group of their own with this
            rate; ``None`` uses the model's.

    Example:
        >>> loss = CenterLoss(num_classes=3, feature_dim=2)
        >>> with torch.no_grad():
        ...     _ = loss.centers.zero_()
        >>> loss(torch.tensor([[3.0, 4.0]]), torch.tensor([1]))
        tensor(12.5000, grad_fn=<DivBackward0>)
    """

    input_kind = "embeddings"
    centers: Tensor

    def __init__(
        self,
        num_classes: int | None = None,
        feature_dim: int | None = None,
        update: Literal["optimizer", "moving_average"] = "optimizer",
        center_lr: float | None = None,
        reduction: Reduction = "mean",
        validate_args: bool = True,
        lr: float | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = checks.check_positive_int("num_classes", num_classes, minimum=2)
        self.feature_dim = checks.check_positive_int("feature_dim", feature_dim)
        checks.check_option("update", update, ("optimizer", "moving_average"))
        self.update = update
        checked_lr = None if center_lr is None else checks.check_number("center_lr", center_lr, 0.0, 1.0)
        if checked_lr is not None and update != "moving_average":
            raise ValueError(
                f"Expected argument `center_lr` to be None with update={update!r}, but got {center_lr!r}: it is the "
                "step of update='moving_average', and the optimizer moves these centers. Drop `center_lr`, or give "
                "the centers their own learning rate with `lr`."
            )
        self.lr = None if lr is None else checks.check_number("lr", lr, 0.0, low_closed=False)
        if self.lr is not None and update != "optimizer":
            raise ValueError(
                f"Expected argument `lr` to be None with update={update!r}, but got {lr!r}: it is the learning rate of "
                "centers the optimizer trains, and these move by their moving average. Use `center_lr` instead."
            )
        self.center_lr: float | None = None
        if update == "moving_average":
            self.center_lr = DEFAULT_CENTER_LR if checked_lr is None else checked_lr
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)
        centers = torch.randn(self.num_classes, self.feature_dim)
        if update == "optimizer":
            self.centers = nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        updating = self.update == "moving_average" and self.training
        if updating and checks.functorch_transform_active():
            raise RuntimeError(
                "CenterLoss(update='moving_average') moves its centers in place in training mode, which a "
                "torch.func transform (grad, vmap) cannot do. Use update='optimizer' (the centers are then a "
                "parameter, with per-sample gradients), or call `loss.eval()` (no update) under the transform."
            )
        output = center_loss_output(input, target, self.centers, self.reduction, self.validate_args)
        if updating:
            assert self.center_lr is not None  # set for "moving_average", for mypy
            if torch.compiler.is_compiling():
                # The compiled backward may recompute c_y from the centers it was given rather than keep
                # x - c_y (the partitioner's choice), and an in-place update would change what it reads.
                # Bind the buffer to an updated copy instead: the centers the loss was computed with stay
                # as they were until backward is done with them.
                self.centers = update_centers_(self.centers.clone(), input, target, self.center_lr)
            else:
                # eager backward reads the saved x - c_y, never the centers (a buffer needs no gradient)
                update_centers_(self.centers, input, target, self.center_lr)
        return output
