"""AnoGen's weak rule: which pixels of a box-masked sample count in the segmentation loss.

A generated anomaly comes with a box, not a pixel mask: the box holds the defect but also normal pixels.
In-box pixels that the model already scores as normal (anomaly probability below ``p_cutoff``, detached)
get no segmentation loss; every pixel outside the box is normal. ``DraemWeak`` (two-class softmax head)
and ``DestsegWeak`` (sigmoid head) apply the same rule.
"""

from typing import Literal

import torch

from anomalib_anogen.arguments import check_argument, check_choice
from anomalib_anogen.core.checks import UNIT_INTERVAL_OPEN_RIGHT

WeakScope = Literal["box", "all"]
WEAK_SCOPES = {
    "box": "weak rule on box-masked samples only",
    "all": "every sample, as the authors' released code",
}


def validate_p_cutoff(p_cutoff: float) -> float:
    """Return ``p_cutoff`` as a float, or raise a ``ValueError`` that names the argument and the fix."""
    hint = (
        "It is the anomaly probability below which in-box pixels of a box-masked sample get no segmentation "
        "loss; the paper uses 0.1."
    )
    return check_argument("p_cutoff", p_cutoff, UNIT_INTERVAL_OPEN_RIGHT, hint)


def validate_weak_scope(weak_scope: str) -> WeakScope:
    """Return ``weak_scope`` or raise a ``ValueError`` listing the allowed values."""
    return check_choice("weak_scope", weak_scope, WEAK_SCOPES)  # type: ignore[return-value]


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


__all__ = [
    "WEAK_SCOPES",
    "WeakScope",
    "validate_p_cutoff",
    "validate_weak_scope",
    "weak_pixel_weights",
    "weak_weights_from_probability",
]
