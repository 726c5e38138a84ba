"""The foreground rules of ``anogen generate --foreground``: where the default ``border`` rule works and Otsu fails."""

import numpy as np
import pytest
from PIL import Image

from anomalib_anogen.data.toy import dark_part, darken_background, disc_reference
from anomalib_anogen.generate.foreground import foreground_mask, resolve_rule

from .helpers.data import BOTTLE, needs_shared_bottle


def iou(mask: np.ndarray, reference: np.ndarray) -> float:
    return float((mask & reference).sum() / max(1, (mask | reference).sum()))


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_border_rule_finds_a_dark_part_on_dark_noise_where_otsu_fails(size: int, seed: int) -> None:
    image, reference = dark_part(size, seed)
    assert iou(foreground_mask(image, "border"), reference) >= 0.85
    assert iou(foreground_mask(image, "otsu"), reference) < 0.5


def test_border_rule_keeps_the_image_size_of_a_large_non_square_image() -> None:
    image, reference = dark_part(1200, 0, height=1000)
    mask = foreground_mask(image, "border")
    assert mask.shape == (1000, 1200) and mask.dtype == bool
    assert iou(mask, reference) >= 0.8


@pytest.mark.parametrize("rule", ["border", "otsu", "all"])
def test_a_flat_image_is_all_foreground(rule: str) -> None:
    assert foreground_mask(np.full((32, 40, 3), 90, np.uint8), rule).all()


def test_auto_is_all_for_textures_and_border_for_objects() -> None:
    assert resolve_rule("auto", "carpet") == "all"
    assert resolve_rule("auto", "bottle") == "border"
    assert resolve_rule("auto", None) == "border"
    assert resolve_rule("otsu", "carpet") == "otsu"
    with pytest.raises(ValueError, match="border, otsu, all"):
        foreground_mask(np.zeros((8, 8, 3), np.uint8), "grabcut")


@needs_shared_bottle()
def test_border_rule_is_as_good_as_otsu_on_the_bottle_and_survives_a_darkened_background() -> None:
    for name in ("000.png", "100.png", "200.png"):
        image = np.asarray(Image.open(BOTTLE / "train" / "good" / name).convert("RGB"))
        reference = disc_reference(image)
        assert iou(foreground_mask(image, "border"), reference) >= iou(foreground_mask(image, "otsu"), reference) - 0.01
        dark = darken_background(image, reference)
        assert iou(foreground_mask(dark, "border"), reference) >= 0.9
        assert iou(foreground_mask(dark, "otsu"), reference) < 0.5
