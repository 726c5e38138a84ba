"""AnoGen's weak segmentation rule on hand-made tensors."""

import pytest
import torch
from anomalib.models.image.draem.loss import DraemLoss
from kornia.losses import FocalLoss, focal_loss

from anomalib_anogen.models.components import weak_pixel_weights
from anomalib_anogen.models.image.draem_weak import DraemWeakLoss


def logits_for_probability(probability: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose softmax gives ``probability`` for the anomalous class."""
    anomalous = torch.logit(probability)
    return torch.stack([torch.zeros_like(anomalous), anomalous], dim=1)


@pytest.fixture
def box_case() -> tuple[torch.Tensor, torch.Tensor]:
    """One 4x4 sample: a 2x2 box at the top left.

    Probabilities: box pixels 0.05, 0.05 (below cutoff), 0.5, 0.9 (above); outside the box
    0.8 at (3, 3) (predicted anomalous) and 0.02 elsewhere.
    """
    probability = torch.full((1, 4, 4), 0.02)
    probability[0, 0, 0] = probability[0, 0, 1] = 0.05
    probability[0, 1, 0] = 0.5
    probability[0, 1, 1] = 0.9
    probability[0, 3, 3] = 0.8
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :2] = 1
    return logits_for_probability(probability), mask


def test_in_box_pixels_below_cutoff_get_zero_weight(box_case: tuple[torch.Tensor, torch.Tensor]) -> None:
    prediction, mask = box_case
    weights = weak_pixel_weights(prediction, mask, torch.tensor([True]), p_cutoff=0.1)
    assert weights[0, 0, 0] == 0 and weights[0, 0, 1] == 0
    assert weights[0, 1, 0] == 1 and weights[0, 1, 1] == 1
    assert weights[0, 3, 3] == 1  # outside the box: always counted, as normal
    assert weights.sum() == 14


def test_dropped_pixels_give_no_gradient_and_kept_ones_do(box_case: tuple[torch.Tensor, torch.Tensor]) -> None:
    prediction, mask = box_case
    prediction = prediction.clone().requires_grad_(True)
    loss = DraemWeakLoss(p_cutoff=0.1).segmentation_loss(prediction, mask, torch.tensor([True]))
    loss.backward()
    gradient = prediction.grad.abs().sum(dim=1)[0]
    assert gradient[0, 0] == 0 and gradient[0, 1] == 0  # in box, p < cutoff: no loss
    assert gradient[1, 0] > 0 and gradient[1, 1] > 0  # in box, p >= cutoff: pushed towards anomalous
    assert gradient[3, 3] > 0  # outside the box and predicted anomalous: pushed towards normal
    # Outside-box pixels are targets of class "normal": their gradient lowers the anomalous logit.
    assert prediction.grad[0, 1, 3, 3] > 0


def test_exact_masks_are_untouched_under_box_scope(box_case: tuple[torch.Tensor, torch.Tensor]) -> None:
    prediction, mask = box_case
    weights = weak_pixel_weights(prediction, mask, torch.tensor([False]), p_cutoff=0.1, weak_scope="box")
    assert torch.all(weights == 1)
    weights_all = weak_pixel_weights(prediction, mask, torch.tensor([False]), p_cutoff=0.1, weak_scope="all")
    assert weights_all.sum() == 14


def test_cutoff_zero_keeps_every_pixel(box_case: tuple[torch.Tensor, torch.Tensor]) -> None:
    prediction, mask = box_case
    assert torch.all(weak_pixel_weights(prediction, mask, torch.tensor([True]), p_cutoff=0.0) == 1)


def test_mixed_batch_applies_rule_per_sample() -> None:
    probability = torch.full((2, 8, 8), 0.01)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    prediction = logits_for_probability(probability)
    weights = weak_pixel_weights(prediction, mask, torch.tensor([True, False]), p_cutoff=0.1)
    assert weights[0].sum() == 64 - 16
    assert weights[1].sum() == 64


def test_equals_draem_loss_with_both_classes_weighted_for_exact_masks() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 3, 32, 32, generator=generator)
    reconstruction = torch.rand(3, 3, 32, 32, generator=generator)
    prediction = torch.randn(3, 2, 32, 32, generator=generator)
    mask = (torch.rand(3, 1, 32, 32, generator=generator) > 0.7).float()
    weak = DraemWeakLoss()(image, reconstruction, mask, prediction, torch.zeros(3, dtype=torch.bool))
    plain = DraemLoss()
    plain.focal_loss = FocalLoss(alpha=None, gamma=2.0, reduction="mean")  # DRAEM's original, unweighted focal
    torch.testing.assert_close(weak, plain(image, reconstruction, mask, prediction))


def test_normal_pixels_get_loss_unlike_anomalibs_alpha_one() -> None:
    """Anomalib's DraemLoss (kornia alpha=1) gives normal pixels zero loss; the weak rule needs it."""
    prediction = logits_for_probability(torch.full((1, 4, 4), 0.9))
    mask = torch.zeros(1, 1, 4, 4)
    assert DraemLoss().focal_loss(prediction, mask[:, 0].long()) == 0
    assert DraemWeakLoss().segmentation_loss(prediction, mask, torch.tensor([True])) > 0.1


def test_box_loss_is_mean_over_counted_pixels(box_case: tuple[torch.Tensor, torch.Tensor]) -> None:
    prediction, mask = box_case
    per_pixel = focal_loss(prediction, mask[:, 0].long(), alpha=None, gamma=2.0, reduction="none").sum(dim=1)
    keep = torch.ones_like(per_pixel)
    keep[0, 0, 0] = keep[0, 0, 1] = 0
    expected = (per_pixel * keep).sum() / (keep.sum() * 2)
    loss = DraemWeakLoss(p_cutoff=0.1).segmentation_loss(prediction, mask, torch.tensor([True]))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.1", True, None])
def test_p_cutoff_out_of_range_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"p_cutoff must be a number in \[0, 1\)"):
        DraemWeakLoss(p_cutoff=bad)  # type: ignore[arg-type]


def test_unknown_weak_scope_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="weak_scope must be 'box'"):
        DraemWeakLoss(weak_scope="boxes")  # type: ignore[arg-type]
