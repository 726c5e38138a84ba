"""The ``paste`` backend: real support anomalies cut by their masks and blended into the sampled box.

No model weights and fast on a CPU, so a line PC without a GPU can make a bank; it is also the baseline that
the diffusion backend and every quality measure are compared with, so it keeps real defects real:

* each box is drawn for the support anomaly it will hold (chosen from the seed, the image, the defect and the
  box index; both samples of a box hold the same one): the box has the cut-out's aspect ratio, and with
  ``--priors auto`` its size too (times a factor within the priors' margin); with given priors it has the
  area of a prior draw (:class:`~anomalib_anogen.generate.boxes.Shape`). The cut-out is scaled by one factor
  for both sides, so a bead stays a bead and a thin cut stays thin;
* each record draws (from its own seed) a horizontal flip, that scale within the box (70-100%), and a
  brightness factor, the same for the three channels (no hue change) and within the anomaly's own range of
  brightness (its 10th to 90th percentile over its mean, and 0.85-1.15), and is rotated with the box;
* the feather blend keeps the defect's own pixels opaque (alpha 1 wherever the mask covers the pixel) and
  feathers only outwards, so a thin dark cut is not mixed with the lighter surface around it.

The pasted defect is clipped to the box, so the pixels outside the box stay the normal image's, bit for bit,
with either blend. ``--blend poisson`` (``cv2.seamlessClone``) matches the defect's gradients, not its
colours, to the surroundings: it shifts colours by design.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from anomalib_anogen.data.support import LoadedPair
from anomalib_anogen.generate.boxes import Box, PlacedBox, Shape, box_mask, composite, derived_seed
from anomalib_anogen.generate.settings import GenerateSettings
from anomalib_anogen.generate.work import SourceCache, WorkItem

SCALE_RANGE = (0.7, 1.0)  # the defect's size relative to the box (one factor for both sides)
BRIGHTNESS_RANGE = (0.85, 1.15)  # brightness factor, further limited to the anomaly's own range
BRIGHTNESS_PERCENTILES = (10, 90)  # the anomaly's own range: these percentiles of its brightness over its mean
POISSON_PAD = 16  # seamlessClone refuses regions that touch the image border
PASTE_VERSION = 2  # recorded in bank.json: 1 drew boxes independently of the cut-out and jittered each channel


@dataclass(frozen=True)
class Cutout:
    """A support anomaly cropped to its mask's bounding box (RGB uint8 and bool mask of the same size).

    Attributes:
        image: The crop (with a margin of context).
        mask: The defect's pixels in it.
        source: The support pair it was cut from.
        width: The crop's width as a fraction of its support image's width.
        height: The crop's height as a fraction of that width (``width / height`` is its aspect ratio).
        brightness: The brightness factors that keep the anomaly within its own range (see the module docstring).
    """

    image: np.ndarray
    mask: np.ndarray
    source: LoadedPair
    width: float = 1.0
    height: float = 1.0
    brightness: tuple[float, float] = (1.0, 1.0)

    def shape(self, own_size: bool, margin: float) -> Shape:
        """The box shape that holds this cut-out (see :class:`~anomalib_anogen.generate.boxes.Shape`)."""
        return Shape(self.width, self.height, own_size, margin)


def _brightness_range(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Brightness factors that keep the anomaly's mean within its own 10th-90th percentiles and BRIGHTNESS_RANGE."""
    values = image[mask].astype(np.float32).mean(axis=-1)
    mean = float(values.mean()) if values.size else 0.0
    if mean < 1.0:
        return 1.0, 1.0
    low, high = (float(np.percentile(values, p)) / mean for p in BRIGHTNESS_PERCENTILES)
    return round(max(BRIGHTNESS_RANGE[0], min(1.0, low)), 4), round(min(BRIGHTNESS_RANGE[1], max(1.0, high)), 4)


def cut(pair: LoadedPair, margin: int = 2) -> Cutout:
    """Crop a support pair to its defect (plus ``margin`` pixels, so feathering has context)."""
    ys, xs = np.nonzero(pair.mask)
    top, bottom = max(0, ys.min() - margin), min(pair.mask.shape[0], ys.max() + 1 + margin)
    left, right = max(0, xs.min() - margin), min(pair.mask.shape[1], xs.max() + 1 + margin)
    image = np.ascontiguousarray(np.asarray(pair.image)[top:bottom, left:right])
    mask = np.ascontiguousarray(pair.mask[top:bottom, left:right])
    side = pair.mask.shape[1]
    return Cutout(image, mask, pair, (right - left) / side, (bottom - top) / side, _brightness_range(image, mask))


def paste(
    normal: np.ndarray,
    box: Box,
    box_pixels: np.ndarray,
    cutout: Cutout,
    rng: np.random.Generator,
    blend: str = "feather",
) -> np.ndarray:
    """``normal`` (uint8 S x S x 3) with ``cutout``, jittered from ``rng``, blended into ``box``."""
    image, mask = cutout.image, cutout.mask.astype(np.float32)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    factor = np.float32(rng.uniform(*cutout.brightness)) if cutout.brightness[0] < cutout.brightness[1] else 1.0
    image = np.clip(np.rint(image.astype(np.float32) * factor), 0, 255).astype(np.uint8)
    scale = float(rng.uniform(*SCALE_RANGE))
    width, height = max(2, round(box.w * scale)), max(2, round(box.h * scale))
    image = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(np.ascontiguousarray(mask), (width, height), interpolation=cv2.INTER_LINEAR)
    # Rotate about the patch centre by the box angle (OpenCV's RotatedRect angle is clockwise on screen, the
    # rotation matrix's is counter-clockwise) and move that centre onto the box centre.
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), -box.angle, 1.0)
    matrix[:, 2] += (box.cx - width / 2, box.cy - height / 2)
    size = normal.shape[1], normal.shape[0]
    placed = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    inside = (box_pixels > 0).astype(np.float32)
    coverage = cv2.warpAffine(mask, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0) * inside
    if blend == "poisson" and (coverage > 0.5).any():
        blended = _poisson(normal, placed, coverage > 0.5)
        alpha = inside  # seamlessClone already blends at the defect's edge; keep its result within the box
        return composite(normal, blended, alpha)
    sigma = max(0.5, min(width, height) / 24)
    # Feathered outwards only: the defect's own pixels stay opaque, its surroundings fade into the normal image.
    alpha = np.maximum(coverage, cv2.GaussianBlur(coverage, (0, 0), sigma)) * inside
    return composite(normal, placed, alpha)


def _poisson(normal: np.ndarray, placed: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``cv2.seamlessClone`` of ``placed`` into ``normal`` over ``region``, padded away from the image border."""
    pad = POISSON_PAD
    target = cv2.copyMakeBorder(normal, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    source = cv2.copyMakeBorder(placed, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    mask = cv2.copyMakeBorder(region.astype(np.uint8) * 255, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    x, y, w, h = cv2.boundingRect(mask)
    center = (x + w // 2, y + h // 2)  # seamlessClone puts the mask's bounding box at centre - size // 2
    cloned = cv2.seamlessClone(source, target, mask, center, cv2.NORMAL_CLONE)
    return cloned[pad:-pad, pad:-pad]


class PasteMaker:
    """Paste backend: one support anomaly per box, its box shaped for it, jittered from each record's seed."""

    def __init__(self, cutouts: dict[str, list[Cutout]], settings: GenerateSettings) -> None:
        self.cutouts = cutouts
        self.settings = settings
        derived = settings.priors_auto
        self.own_size, self.margin = derived is not None, float((derived or {}).get("margin", 0.0))

    def cutout(self, item: WorkItem) -> Cutout:
        """The support anomaly that ``item``'s box holds (the same for every sample of the box)."""
        choices = self.cutouts[item.defect]
        key = derived_seed(self.settings.seed, "cutout", item.source.stem, item.defect, item.box_index)
        return choices[int(np.random.default_rng(key).integers(len(choices)))]

    def box_shape(self, item: WorkItem) -> Shape:
        """The shape of ``item``'s box: that of the cut-out it will hold."""
        return self.cutout(item).shape(self.own_size, self.margin)

    def make(
        self, chunk: list[WorkItem], boxes: list[PlacedBox], cache: SourceCache
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        for item, placed in zip(chunk, boxes, strict=True):
            normal = cache.image(item.source)
            mask = box_mask(placed.box, self.settings.resolution)
            rng = np.random.default_rng(derived_seed(self.settings.seed, item.record_id))
            cutout = self.cutout(item)
            image = paste(normal, placed.box, mask, cutout, rng, self.settings.blend)
            extra = {"support_image": str(cutout.source.pair.image.resolve()), "blend": self.settings.blend}
            yield image, mask, extra
