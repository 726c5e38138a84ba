"""Image anomaly models of anomalib-anogen."""

from .destseg import Destseg
from .destseg_weak import DestsegWeak
from .draem_weak import DraemWeak

__all__ = ["Destseg", "DestsegWeak", "DraemWeak"]
