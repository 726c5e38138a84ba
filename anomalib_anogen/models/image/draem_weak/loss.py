"""AnoGen's weakly-supervised DRAEM loss.

A generated anomaly comes with a box, not a pixel mask: the box holds the defect but also
normal pixels. AnoGen therefore drops the segmentation loss on in-box pixels that the model
already scores as normal (anomaly probability below ``p_cutoff``, detached), and treats every
pixel outside the box as normal. Exact (Perlin/DTD) masks keep DRAEM's plain loss.
"""

import torch
from anomalib.models.image.draem.loss import DraemLoss
from kornia.losses import FocalLoss, focal_loss

from anomalib_anogen.models.components.weak import WeakScope, validate_p_cutoff, validate_weak_scope, weak_pixel_weights


class DraemWeakLoss(DraemLoss):
    """DRAEM's L2 + 2·SSIM + focal loss, with AnoGen's weak rule on the focal term.

    Reuses ``DraemLoss``'s L2 and SSIM terms and its focal gamma; the focal term is computed
    per pixel so that dropped pixels can be left out, and averaged over the pixels that count
    (as an ``ignore_index`` averages), so a batch of exact masks gives DRAEM's plain loss.
    One deliberate difference from anomalib's ``DraemLoss``: the focal loss weights the normal
    class too (see ``__init__``), as DRAEM's original code does.
    """

    def __init__(self, p_cutoff: float = 0.1, weak_scope: WeakScope = "box") -> None:
        super().__init__()
        # anomalib's DraemLoss passes alpha=1, which kornia reads as class weights [1 - alpha, alpha] = [0, 1]:
        # normal pixels would get no loss at all, and "outside the box is normal" could never be learned.
        # DRAEM's original focal loss weights both classes equally, which is alpha=None in kornia.
        self.focal_loss = FocalLoss(alpha=None, gamma=self.focal_loss.gamma, reduction="mean")
        self.p_cutoff = validate_p_cutoff(p_cutoff)
        self.weak_scope = validate_weak_scope(weak_scope)

    def segmentation_loss(
        self,
        prediction: torch.Tensor,
        anomaly_mask: torch.Tensor,
        is_box: torch.Tensor,
    ) -> torch.Tensor:
        """Focal loss averaged over the pixels the weak rule keeps."""
        target = anomaly_mask.reshape(prediction.shape[0], *prediction.shape[-2:]).round().long()
        # kornia returns a (B, C, H, W) map that is zero off the target class, and its "mean" divides by
        # B*C*H*W; summing over C and dividing by C keeps exactly DraemLoss's scale.
        per_pixel = focal_loss(
            prediction,
            target,
            alpha=self.focal_loss.alpha,
            gamma=self.focal_loss.gamma,
            reduction="none",
        ).sum(dim=1)
        weights = weak_pixel_weights(prediction, anomaly_mask, is_box, self.p_cutoff, self.weak_scope)
        num_classes = prediction.shape[1]
        return (per_pixel * weights).sum() / (weights.sum().clamp_min(1.0) * num_classes)

    def forward(  # type: ignore[override]
        self,
        target_image: torch.Tensor,
        reconstruction: torch.Tensor,
        anomaly_mask: torch.Tensor,
        prediction: torch.Tensor,
        is_box: torch.Tensor,
    ) -> torch.Tensor:
        """Total loss.

        Args:
            target_image: What the reconstruction should be: the anomaly-free image ``(B, 3, H, W)``.
            reconstruction: Reconstructive sub-network output ``(B, 3, H, W)``.
            anomaly_mask: ``(B, 1, H, W)`` exact mask or box, 1 = anomalous.
            prediction: Discriminative sub-network logits ``(B, 2, H, W)``.
            is_box: ``(B,)`` bool, True for box (weak) masks.
        """
        l2_loss_val = self.l2_loss(reconstruction, target_image)
        ssim_loss_val = self.ssim_loss(reconstruction, target_image) * 2
        return l2_loss_val + ssim_loss_val + self.segmentation_loss(prediction, anomaly_mask, is_box)
