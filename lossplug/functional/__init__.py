"""Loss functions: each returns the reduced loss, and its ``*_output`` twin returns a
:class:`~lossplug.output.LossOutput` with the per-sample losses and p_t as well."""

from lossplug.functional.arcface import arcface_logits, arcface_loss, arcface_loss_output
from lossplug.functional.center import center_loss, center_loss_output, update_centers_
from lossplug.functional.class_weights import class_weights_from_counts
from lossplug.functional.cross_entropy import (
    balanced_cross_entropy,
    balanced_cross_entropy_output,
    binary_cross_entropy,
    binary_cross_entropy_output,
    cross_entropy,
    cross_entropy_output,
)
from lossplug.functional.focal import binary_focal_loss, binary_focal_loss_output, focal_loss, focal_loss_output
from lossplug.functional.ldam import drw_class_weights, ldam_loss, ldam_loss_output, ldam_margins
from lossplug.functional.logit_adjusted import (
    balanced_softmax_loss,
    balanced_softmax_loss_output,
    log_class_prior,
    logit_adjusted_loss,
    logit_adjusted_loss_output,
)
from lossplug.functional.poly import poly_loss, poly_loss_output

__all__ = [
    "arcface_logits",
    "arcface_loss",
    "arcface_loss_output",
    "balanced_cross_entropy",
    "balanced_cross_entropy_output",
    "balanced_softmax_loss",
    "balanced_softmax_loss_output",
    "binary_cross_entropy",
    "binary_cross_entropy_output",
    "binary_focal_loss",
    "binary_focal_loss_output",
    "center_loss",
    "center_loss_output",
    "class_weights_from_counts",
    "cross_entropy",
    "cross_entropy_output",
    "drw_class_weights",
    "focal_loss",
    "focal_loss_output",
    "ldam_loss",
    "ldam_loss_output",
    "ldam_margins",
    "log_class_prior",
    "logit_adjusted_loss",
    "logit_adjusted_loss_output",
    "poly_loss",
    "poly_loss_output",
    "update_centers_",
]
