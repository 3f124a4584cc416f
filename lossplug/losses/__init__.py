"""Loss modules: thin wrappers over :mod:`lossplug.functional` with weights kept as buffers and
learnable weights as parameters."""

from lossplug.losses.arcface import ArcFaceLoss
from lossplug.losses.base import BaseLoss, ClassCountsLoss, ClassWeightedLoss, select_input
from lossplug.losses.center import CenterLoss
from lossplug.losses.cross_entropy import BalancedCrossEntropyLoss, BinaryCrossEntropyLoss, CrossEntropyLoss
from lossplug.losses.focal import BinaryFocalLoss, FocalLoss
from lossplug.losses.ldam import LDAMLoss
from lossplug.losses.logit_adjusted import BalancedSoftmaxLoss, LogitAdjustedLoss
from lossplug.losses.poly import PolyLoss
from lossplug.losses.weighted_sum import WeightedSum

__all__ = [
    "ArcFaceLoss",
    "BalancedCrossEntropyLoss",
    "BalancedSoftmaxLoss",
    "BaseLoss",
    "BinaryCrossEntropyLoss",
    "BinaryFocalLoss",
    "CenterLoss",
    "ClassCountsLoss",
    "ClassWeightedLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "PolyLoss",
    "WeightedSum",
    "select_input",
]
