"""DestsegWeak's network is DeSTSeg's: the weak rule changes only the loss."""

from anomalib_anogen.models.image.destseg.torch_model import DestsegModel

__all__ = ["DestsegModel"]
