"""ArcFace module: learnable class weights and the additive angular margin."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lossplug import shared_checks as checks
from lossplug.functional.arcface import arcface_loss_output, check_arcface_args, cosine_logits
from lossplug.losses.base import BaseLoss, ModelOutput, select_input
from lossplug.output import LossOutput
from lossplug.shared_checks import Reduction


class ArcFaceLoss(BaseLoss):
    r"""ArcFace (additive angular margin) loss over learnable class weights; see
    :func:`lossplug.functional.arcface_loss_output`.

    Consumes embeddings. ``weight`` ``(num_classes, embedding_dim)`` is a parameter, normalized
    inside, so the optimizer trains it and checkpoints keep it.

    Args:
        num_classes: Number of classes ``C``; the ``lossplug`` command fills it in from the data module
            (``None`` is an error anywhere else).
        embedding_dim: Embedding size ``D``; filled in from the model by the ``lossplug`` command.
        scale: :math:`s > 0`.
        margin: :math:`m` in ``[0, pi/2)``.
        easy_margin: Apply the margin only where the cosine is positive.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: Check target values on every call (one host-device sync).
        lr: Learning rate of ``weight``: :meth:`~lossplug.mixin.LossMixin.parameter_groups` gives it a
            group of its own with this rate; ``None`` uses the model's.

    Example:
        >>> loss = ArcFaceLoss(num_classes=10, embedding_dim=4)
        >>> loss.weight.shape
        torch.Size([10, 4])
    """

    input_kind = "embeddings"

    def __init__(
        self,
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        reduction: Reduction = "mean",
        validate_args: bool = True,
        lr: float | None = None,
    ) -> None:
        super().__init__()
        self.lr = None if lr is None else checks.check_number("lr", lr, 0.0, low_closed=False)
        self.num_classes = checks.check_positive_int("num_classes", num_classes, minimum=2)
        self.embedding_dim = checks.check_positive_int("embedding_dim", embedding_dim)
        self.scale, self.margin, self.easy_margin = check_arcface_args(scale, margin, easy_margin)
        checks.check_reduction(reduction)
        self.reduction: Reduction = reduction
        self.validate_args = checks.check_bool("validate_args", validate_args)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine_logits(self, embeddings: Tensor) -> Tensor:
        r"""Class scores :math:`s \cos\theta_j` without the margin ``(N, C)``: what to rank classes by at test time.

        Computed in the promoted dtype of the embeddings and the weights, at least float32, as the loss is.
        """
        return cosine_logits(embeddings, self.weight, self.scale)

    def scores(self, output: ModelOutput) -> Tensor:
        """The margin-free cosine logits of the embeddings: the class weights are the classifier."""
        return self.cosine_logits(select_input(output, "embeddings", type(self).__name__))

    def evaluate(self, input: Tensor, target: Tensor) -> LossOutput:
        return arcface_loss_output(
            input, target, self.weight, self.scale, self.margin, self.easy_margin, self.reduction, self.validate_args
        )
