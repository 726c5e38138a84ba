"""DeSTSeg's segmentation loss with AnoGen's weak rule on the focal term.

A box holds the defect and normal pixels around it. In-box pixels of a box-masked sample that
the segmentation network already scores as normal (sigmoid probability, detached, below
``p_cutoff``) get no focal loss; pixels outside the box are normal. The L1 term stays unmasked,
as in the paper's code. Exact (Perlin/DTD) masks give DeSTSeg's plain loss.
"""

import torch

from anomalib_anogen.models.components.weak import (
    WeakScope,
    validate_p_cutoff,
    validate_weak_scope,
    weak_weights_from_probability,
)
from anomalib_anogen.models.image.destseg.loss import DestsegLoss

__all__ = ["DestsegWeakLoss"]


class DestsegWeakLoss(DestsegLoss):
    """``DestsegLoss`` whose focal term is averaged over the pixels the weak rule keeps.

    Averaging over the kept pixels (as an ``ignore_index`` averages) makes a batch without
    dropped pixels give exactly ``DestsegLoss``.

    Args:
        p_cutoff: In-box pixels with predicted anomaly probability below this get no focal loss; in [0, 1).
        weak_scope: ``"box"``: the rule applies to box-masked samples only; ``"all"``: to every sample.
        gamma: Focal-loss focusing parameter (DeSTSeg: 4).
    """

    def __init__(self, p_cutoff: float = 0.1, weak_scope: WeakScope = "box", gamma: float = 4.0) -> None:
        super().__init__(gamma=gamma)
        self.p_cutoff = validate_p_cutoff(p_cutoff)
        self.weak_scope = validate_weak_scope(weak_scope)

    def focal(self, logits: torch.Tensor, target: torch.Tensor, is_box: torch.Tensor) -> torch.Tensor:
        """Focal loss averaged over the pixels the weak rule keeps."""
        per_pixel = self.focal_per_pixel(logits, target)[:, 0]
        weights = weak_weights_from_probability(torch.sigmoid(logits), target, is_box, self.p_cutoff, self.weak_scope)
        return (per_pixel * weights).sum() / weights.sum().clamp_min(1.0)
