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
            when ``torch.distributed`` is initialized.
        center_lr: :math:`\alpha` in ``[0, 1]`` for ``"moving_average"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).

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
        center_lr: float = 0.5,
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = checks.check_positive_int("num_classes", num_classes, minimum=2)
        self.feature_dim = checks.check_positive_int("feature_dim", feature_dim)
        checks.check_option("update", update, ("optimizer", "moving_average"))
        self.update = update
        self.center_lr = checks.check_number("center_lr", center_lr, 0.0, 1.0)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = validate_args
        centers = torch.randn(self.num_classes, self.feature_dim)
        if update == "optimizer":
            self.centers = nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        output = center_loss_output(input, target, self.centers, self.reduction, self.validate_args)
        if self.update == "moving_average" and self.training:
            update_centers_(self.centers, input, target, self.center_lr)
        return output
