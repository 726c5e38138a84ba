"""AnoGen's weakly-supervised DRAEM loss.

A generated anomaly comes with a box, not a pixel mask: the box holds the defect but also
normal pixels. AnoGen therefore drops the segmentation loss on in-box pixels that the model
already scores as normal (anomaly probability below ``p_cutoff``, detached), and treats every
pixel outside the box as normal. Exact (Perlin/DTD) masks keep DRAEM's plain loss.
"""

from typing import Literal

import torch
from anomalib.models.image.draem.loss import DraemLoss
from kornia.losses import FocalLoss, focal_loss

WeakScope = Literal["box", "all"]


def validate_p_cutoff(p_cutoff: float) -> float:
    """Return ``p_cutoff`` as a float, or raise a ``ValueError`` that names the argument and the fix."""
    if isinstance(p_cutoff, bool) or not isinstance(p_cutoff, int | float) or not 0.0 <= float(p_cutoff) < 1.0:
        msg = (
            f"p_cutoff must be a number in [0, 1), got {p_cutoff!r}. It is the anomaly probability below which "
            "in-box pixels of a box-masked sample get no segmentation loss; the paper uses 0.1."
        )
        raise ValueError(msg)
    return float(p_cutoff)


def validate_weak_scope(weak_scope: str) -> WeakScope:
    """Return ``weak_scope`` or raise a ``ValueError`` listing the allowed values."""
    if weak_scope not in {"box", "all"}:
        msg = (
            f"weak_scope must be 'box' (weak rule on box-masked samples only) or 'all' (every sample, as the "
            f"authors' released code), got {weak_scope!r}."
        )
        raise ValueError(msg)
    return weak_scope  # type: ignore[return-value]


def weak_pixel_weights(
    prediction: torch.Tensor,
    anomaly_mask: torch.Tensor,
    is_box: torch.Tensor,
    p_cutoff: float,
    weak_scope: WeakScope = "box",
) -> torch.Tensor:
    """Per-pixel weights of the segmentation loss: 0 where the weak rule drops a pixel, 1 elsewhere.

    Args:
        prediction: Logits ``(B, 2, H, W)``; channel 1 is "anomalous".
        anomaly_mask: Target mask ``(B, 1, H, W)`` or ``(B, H, W)``, 1 inside the anomaly (or box).
        is_box: ``(B,)`` bool, True where the mask is a box of a generated anomaly.
        p_cutoff: In-box pixels with anomaly probability below this get weight 0.
        weak_scope: ``"box"`` applies the rule to box-masked samples only, ``"all"`` to every sample.

    Returns:
        Weights ``(B, H, W)`` in {0, 1}, without gradient.
    """
    with torch.no_grad():
        anomaly_probability = torch.softmax(prediction.detach().float(), dim=1)[:, 1]
    weights = weak_weights_from_probability(anomaly_probability, anomaly_mask, is_box, p_cutoff, weak_scope)
    return weights.to(prediction.dtype)


def weak_weights_from_probability(
    anomaly_probability: torch.Tensor,
    anomaly_mask: torch.Tensor,
    is_box: torch.Tensor,
    p_cutoff: float,
    weak_scope: WeakScope = "box",
) -> torch.Tensor:
    """The weak rule for models that predict one anomaly probability per pixel (sigmoid heads, e.g. DeSTSeg).

    Args:
        anomaly_probability: ``(B, H, W)`` or ``(B, 1, H, W)`` probabilities in [0, 1]; detached here.
        anomaly_mask: Target mask of the same spatial size, 1 inside the anomaly (or box).
        is_box: ``(B,)`` bool, True where the mask is a box of a generated anomaly.
        p_cutoff: In-box pixels with anomaly probability below this get weight 0.
        weak_scope: ``"box"`` applies the rule to box-masked samples only, ``"all"`` to every sample.

    Returns:
        Weights ``(B, H, W)`` in {0, 1} (dtype of ``anomaly_probability``), without gradient.
    """
    batch_size, height, width = anomaly_probability.shape[0], *anomaly_probability.shape[-2:]
    probability = anomaly_probability.detach().reshape(batch_size, height, width)
    mask = anomaly_mask.reshape(batch_size, height, width) > 0.5
    dropped = mask & (probability < p_cutoff)
    if weak_scope == "box":
        dropped &= is_box.to(device=mask.device, dtype=torch.bool).view(-1, 1, 1)
    return (~dropped).to(probability.dtype)


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
