"""Destseg: DeSTSeg (Zhang et al., CVPR 2023) as an anomalib model."""

from .lightning_model import Destseg
from .loss import DestsegLoss
from .torch_model import RANDOM_WEIGHTS, DestsegModel

__all__ = ["RANDOM_WEIGHTS", "Destseg", "DestsegLoss", "DestsegModel"]
