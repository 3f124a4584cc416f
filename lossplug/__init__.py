"""lossplug: classification losses for Lightning, picked from YAML, with diagnostics of where the loss comes from."""

from lossplug.mixin import LossMixin, build_loss, loss_config
from lossplug.output import LossOutput

__version__ = "0.1.0"

__all__ = ["LossMixin", "LossOutput", "__version__", "build_loss", "loss_config"]
