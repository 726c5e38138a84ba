"""The ``paste`` backend: real support anomalies cut by their masks and blended into the sampled box.

No model weights and fast on a CPU, so a line PC without a GPU can make a bank; it is also the baseline that
the diffusion backend must beat. Each record draws (from its own seed) one support anomaly of its defect,
a horizontal flip, a scale within the box, a colour jitter, and is rotated with the box. The pasted defect is
clipped to the box, so the pixels outside the box stay the normal image's, bit for bit, with either blend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from anomalib_anogen.data.support import LoadedPair
from anomalib_anogen.generate.boxes import Box, PlacedBox, box_mask, composite, derived_seed
from anomalib_anogen.generate.settings import GenerateSettings
from anomalib_anogen.generate.work import SourceCache, WorkItem

SCALE_RANGE = (0.7, 1.0)  # the defect's size relative to the box, per side
GAIN_RANGE = (0.85, 1.15)  # per-channel colour gain
SHIFT_RANGE = (-12.0, 12.0)  # brightness offset in grey levels
POISSON_PAD = 16  # seamlessClone refuses regions that touch the image border


@dataclass(frozen=True)
class Cutout:
    """A support anomaly cropped to its mask's bounding box (RGB uint8 and bool mask of the same size)."""

    image: np.ndarray
    mask: np.ndarray
    source: LoadedPair


def cut(pair: LoadedPair, margin: int = 2) -> Cutout:
    """Crop a support pair to its defect (plus ``margin`` pixels, so feathering has context)."""
    ys, xs = np.nonzero(pair.mask)
    top, bottom = max(0, ys.min() - margin), min(pair.mask.shape[0], ys.max() + 1 + margin)
    left, right = max(0, xs.min() - margin), min(pair.mask.shape[1], xs.max() + 1 + margin)
    image = np.asarray(pair.image)[top:bottom, left:right]
    return Cutout(np.ascontiguousarray(image), np.ascontiguousarray(pair.mask[top:bottom, left:right]), pair)


def paste(
    normal: np.ndarray,
    box: Box,
    box_pixels: np.ndarray,
    cutouts: list[Cutout],
    rng: np.random.Generator,
    blend: str = "feather",
) -> tuple[np.ndarray, Cutout]:
    """``normal`` (uint8 S x S x 3) with one jittered support anomaly blended into ``box``; also the cutout used."""
    cutout = cutouts[int(rng.integers(len(cutouts)))]
    image, mask = cutout.image, cutout.mask.astype(np.float32)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    gain = rng.uniform(*GAIN_RANGE, size=3).astype(np.float32)
    shift = np.float32(rng.uniform(*SHIFT_RANGE))
    image = np.clip(image.astype(np.float32) * gain + shift, 0, 255).astype(np.uint8)
    width = max(2, round(box.w * float(rng.uniform(*SCALE_RANGE))))
    height = max(2, round(box.h * float(rng.uniform(*SCALE_RANGE))))
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
        return composite(normal, blended, alpha), cutout
    sigma = max(0.5, min(width, height) / 24)
    alpha = cv2.GaussianBlur(coverage, (0, 0), sigma) * inside
    return composite(normal, placed, alpha), cutout


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
    """Paste backend: one support anomaly per record, jittered from the record's seed."""

    def __init__(self, cutouts: dict[str, list[Cutout]], settings: GenerateSettings) -> None:
        self.cutouts = cutouts
        self.settings = settings

    def make(
        self, chunk: list[WorkItem], boxes: list[PlacedBox], cache: SourceCache
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        for item, placed in zip(chunk, boxes, strict=True):
            normal = cache.image(item.source)
            mask = box_mask(placed.box, self.settings.resolution)
            rng = np.random.default_rng(derived_seed(self.settings.seed, item.record_id))
            image, cutout = paste(normal, placed.box, mask, self.cutouts[item.defect], rng, self.settings.blend)
            extra = {"support_image": str(cutout.source.pair.image.resolve()), "blend": self.settings.blend}
            yield image, mask, extra
