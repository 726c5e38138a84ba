"""Image anomaly models of anomalib-anogen."""

from .draem_weak import DraemWeak

__all__ = ["DraemWeak"]
