"""anomalib-anogen models. Importing this module registers them with anomalib's CLI by short name."""

from .image import Destseg, DestsegWeak, DraemWeak

__all__ = ["Destseg", "DestsegWeak", "DraemWeak"]
