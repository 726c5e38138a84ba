"""anomalib-anogen models. Importing this module registers them with anomalib's CLI by short name."""

from .image import DraemWeak

__all__ = ["DraemWeak"]
