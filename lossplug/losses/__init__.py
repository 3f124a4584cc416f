"""Loss modules: thin wrappers over :mod:`lossplug.functional` with weights kept as buffers and
learnable weights as parameters."""

from lossplug.losses.arcface import ArcFaceLoss
from lossplug.losses.base import BaseLoss, ClassWeightedLoss, select_input
from lossplug.losses.center import CenterLoss
from lossplug.losses.cross_entropy import BalancedCrossEntropyLoss, BinaryCrossEntropyLoss, CrossEntropyLoss
from lossplug.losses.focal import BinaryFocalLoss, FocalLoss
from lossplug.losses.weighted_sum import WeightedSum

__all__ = [
    "ArcFaceLoss",
    "BalancedCrossEntropyLoss",
    "BaseLoss",
    "BinaryCrossEntropyLoss",
    "BinaryFocalLoss",
    "CenterLoss",
    "ClassWeightedLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "WeightedSum",
    "select_input",
]
