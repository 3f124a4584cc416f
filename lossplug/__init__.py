"""lossplug: classification losses for Lightning, picked from YAML, with diagnostics of where the loss comes from."""

import warnings

from lossplug.mixin import LossLike, LossMixin
from lossplug.output import LossOutput
from lossplug.serialization import build_loss, loss_config

# Lightning rebuilds LightningCLI checkpoints with a jsonargparse call that jsonargparse deprecates;
# the warning reaches users of `load_from_checkpoint`, who can do nothing about it
warnings.filterwarnings("ignore", message=r"(?s).*``instantiate_classes`` was deprecated")

__version__ = "0.1.0"

__all__ = ["LossLike", "LossMixin", "LossOutput", "__version__", "build_loss", "loss_config"]
