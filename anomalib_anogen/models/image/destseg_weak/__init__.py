"""DestsegWeak: DeSTSeg with AnoGen's weakly-supervised segmentation loss."""

from .lightning_model import DestsegWeak
from .loss import DestsegWeakLoss
from .torch_model import DestsegModel

__all__ = ["DestsegModel", "DestsegWeak", "DestsegWeakLoss"]
