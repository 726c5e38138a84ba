"""DestsegWeak: DeSTSeg with AnoGen's weakly-supervised segmentation loss."""

from .lightning_model import DestsegWeak
from .loss import DestsegWeakLoss

__all__ = ["DestsegWeak", "DestsegWeakLoss"]
