"""DraemWeak: DRAEM with AnoGen's weakly-supervised segmentation loss."""

from .lightning_model import DraemWeak
from .loss import DraemWeakLoss
from .torch_model import DraemWeakModel

__all__ = ["DraemWeak", "DraemWeakLoss", "DraemWeakModel"]
