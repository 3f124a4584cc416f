"""Training diagnostics: where the loss comes from, by class and by hardness (p_t), per epoch.

Both callbacks observe a :class:`~lossplug.mixin.LossMixin` model's ``compute_loss`` calls,
accumulate on the device, reduce over processes at the end of each epoch and write a tidy CSV in
the run's log directory.
"""

from lossplug.callbacks._base import Stage
from lossplug.callbacks.hardness import GroupHistogram, HardnessHistogram
from lossplug.callbacks.per_class import PerClassLossMonitor

__all__ = ["GroupHistogram", "HardnessHistogram", "PerClassLossMonitor", "Stage"]
