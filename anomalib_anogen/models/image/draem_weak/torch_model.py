"""DRAEM network with configurable widths.

anomalib's ``DraemModel`` fixes the sub-network widths (128 and 64). ``DraemWeakModel`` keeps
its forward pass and sub-networks and only lets the widths shrink, so tests and CPU demos can
train a real DRAEM in seconds, and scores an image as DRAEM's paper code does: the maximum of the
anomaly map averaged over 21 x 21 pixels (``score_pool``), not anomalib's maximum of single pixels.
With the default widths and ``score_pool=1`` it is exactly ``DraemModel``.
"""

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.image.draem.torch_model import (
    DiscriminativeSubNetwork,
    DraemModel,
    ReconstructiveSubNetwork,
)
from torch import nn

from anomalib_anogen.arguments import check_argument
from anomalib_anogen.core.checks import POSITIVE_INT

DEFAULT_RECONSTRUCTIVE_WIDTH = 128
DEFAULT_DISCRIMINATIVE_WIDTH = 64
# DRAEM's test code and AnoGen's test_DRAEM.py: avg_pool2d(map, 21, stride 1, padding 10). Computed here as a
# convolution with a constant 1/441 kernel (the same up to float rounding, ~1e-6): OpenVINO's CPU plugin fails to
# compile an INT8 export whose map goes through AvgPool ("could not append an elementwise post-op", AVX-512 CPU).
DEFAULT_SCORE_POOL = 21


class DraemWeakModel(DraemModel):
    """``DraemModel`` with the reconstructive and discriminative base widths as arguments.

    Args:
        reconstructive_width: Base width of the reconstructive auto-encoder (DRAEM: 128).
        discriminative_width: Base width of the discriminative U-Net (DRAEM: 64).
        score_pool: Image score = maximum of the anomaly map average-pooled over ``score_pool`` x
            ``score_pool`` pixels (stride 1, zero padding, as DRAEM's evaluation); 1 gives anomalib's
            maximum of single pixels. The anomaly map itself is not pooled.
    """

    def __init__(
        self,
        reconstructive_width: int = DEFAULT_RECONSTRUCTIVE_WIDTH,
        discriminative_width: int = DEFAULT_DISCRIMINATIVE_WIDTH,
        score_pool: int = DEFAULT_SCORE_POOL,
    ) -> None:
        reconstructive_width = check_argument("reconstructive_width", reconstructive_width, POSITIVE_INT, "DRAEM: 128.")
        discriminative_width = check_argument("discriminative_width", discriminative_width, POSITIVE_INT, "DRAEM: 64.")
        score_pool = check_argument(
            "score_pool", score_pool, POSITIVE_INT, "DRAEM: 21; 1 for the single-pixel maximum."
        )
        # Skip DraemModel.__init__ so the full-width networks are not built and thrown away.
        nn.Module.__init__(self)
        self.reconstructive_subnetwork = ReconstructiveSubNetwork(base_width=reconstructive_width)
        self.discriminative_subnetwork = DiscriminativeSubNetwork(
            in_channels=6,
            out_channels=2,
            base_width=discriminative_width,
        )
        self.score_pool = score_pool

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | InferenceBatch:
        """Training: reconstruction and mask logits. Inference: the anomaly map and its pooled-maximum score."""
        output = super().forward(batch)
        if self.training or self.score_pool == 1:
            return output
        score = pooled_max(output.anomaly_map, self.score_pool)
        return InferenceBatch(pred_score=score, anomaly_map=output.anomaly_map)


def pooled_max(anomaly_map: torch.Tensor, size: int) -> torch.Tensor:
    """Image scores ``(B,)``: the maximum of each map averaged over ``size`` x ``size`` pixels (1: the raw maximum).

    Average pooling with stride 1 and zero padding, as DRAEM's evaluation, written as a convolution with a
    constant kernel: OpenVINO's INT8 compilation of an ``AvgPool`` failed on an AVX-512 CPU, a convolution's does not.
    """
    maps = anomaly_map.reshape(-1, 1, *anomaly_map.shape[-2:])
    if size > 1:
        box = torch.full((1, 1, size, size), 1.0 / (size * size), dtype=maps.dtype, device=maps.device)
        maps = F.conv2d(maps, box, padding=size // 2)
    return torch.amax(maps, dim=(-3, -2, -1))
