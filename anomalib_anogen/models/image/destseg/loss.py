"""DeSTSeg's losses: cosine distance for the denoising student, focal + L1 for the segmentation network."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from anomalib_anogen.arguments import check_argument
from anomalib_anogen.core.checks import NON_NEGATIVE

__all__ = ["DestsegLoss", "downsample_mask"]


def downsample_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bring a ``(B, 1, H, W)`` mask to the segmentation output size: bilinear, then binarise at 0.5 (DeSTSeg)."""
    resized = F.interpolate(mask.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return (resized >= 0.5).to(resized.dtype)


class DestsegLoss(nn.Module):
    """The two phases' losses.

    Args:
        gamma: Focal-loss focusing parameter (DeSTSeg: 4).
    """

    def __init__(self, gamma: float = 4.0) -> None:
        super().__init__()
        self.gamma = check_argument("gamma", gamma, NON_NEGATIVE, "DeSTSeg: 4.")

    @staticmethod
    def cosine_distance(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over the levels and the batch of the per-image mean of ``1 - cos(teacher, student)``.

        Summing (not averaging) over the batch is DeSTSeg's own normalisation; its student learning
        rate (0.4) is tuned for it.
        """
        loss = teacher[0].new_zeros(())
        for t, s in zip(teacher, student, strict=True):
            loss = loss + (1 - (t * s).sum(dim=1)).mean(dim=(-2, -1)).sum()
        return loss

    def focal_per_pixel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Binary focal loss per pixel, from logits for numerical safety (equal to DeSTSeg's on probabilities).

        torchvision's ``sigmoid_focal_loss`` without class weighting (``alpha=-1``), as DeSTSeg's.
        """
        return sigmoid_focal_loss(logits, target, alpha=-1, gamma=self.gamma, reduction="none")

    def focal(self, logits: torch.Tensor, target: torch.Tensor, is_box: torch.Tensor) -> torch.Tensor:
        """Mean focal loss over all pixels; ``is_box`` is ignored (exact masks only in plain DeSTSeg)."""
        del is_box
        return self.focal_per_pixel(logits, target).mean()

    def segmentation(self, logits: torch.Tensor, mask: torch.Tensor, is_box: torch.Tensor) -> torch.Tensor:
        """Focal + L1 between the predicted anomaly probability and the mask at the logits' size.

        Args:
            logits: Segmentation logits ``(B, 1, h, w)``.
            mask: Anomaly mask (exact or box) ``(B, 1, H, W)``, 1 = anomalous; downsampled here.
            is_box: ``(B,)`` bool, True where the mask is a box (used by the weak variant).
        """
        target = downsample_mask(mask.reshape(logits.shape[0], 1, *mask.shape[-2:]), logits.shape[-2:])
        l1 = F.l1_loss(torch.sigmoid(logits), target)
        return self.focal(logits, target, is_box) + l1
