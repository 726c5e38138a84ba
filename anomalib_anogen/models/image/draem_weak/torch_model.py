"""DRAEM network with configurable widths.

anomalib's ``DraemModel`` fixes the sub-network widths (128 and 64). ``DraemWeakModel`` keeps
its forward pass and sub-networks and only lets the widths shrink, so tests and CPU demos can
train a real DRAEM in seconds. With the default widths it is exactly ``DraemModel``.
"""

from anomalib.models.image.draem.torch_model import (
    DiscriminativeSubNetwork,
    DraemModel,
    ReconstructiveSubNetwork,
)
from torch import nn

DEFAULT_RECONSTRUCTIVE_WIDTH = 128
DEFAULT_DISCRIMINATIVE_WIDTH = 64


class DraemWeakModel(DraemModel):
    """``DraemModel`` with the reconstructive and discriminative base widths as arguments.

    Args:
        reconstructive_width: Base width of the reconstructive auto-encoder (DRAEM: 128).
        discriminative_width: Base width of the discriminative U-Net (DRAEM: 64).
    """

    def __init__(
        self,
        reconstructive_width: int = DEFAULT_RECONSTRUCTIVE_WIDTH,
        discriminative_width: int = DEFAULT_DISCRIMINATIVE_WIDTH,
    ) -> None:
        for name, value in {
            "reconstructive_width": reconstructive_width,
            "discriminative_width": discriminative_width,
        }.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be a positive integer, got {value!r}."
                raise ValueError(msg)
        # Skip DraemModel.__init__ so the full-width networks are not built and thrown away.
        nn.Module.__init__(self)
        self.reconstructive_subnetwork = ReconstructiveSubNetwork(base_width=reconstructive_width)
        self.discriminative_subnetwork = DiscriminativeSubNetwork(
            in_channels=6,
            out_channels=2,
            base_width=discriminative_width,
        )
