"""A small MVTec-layout dataset that the project makes itself.

The demo and tests must run where ``../shared/data`` (real MVTec AD) is absent. This writes a
"bottle-like" category: a bright disc on a dark, noisy background, with defects of three
types (dark blobs, scratches, bright spots) and their exact masks, in the layout that
anomalib's ``MVTecAD`` datamodule reads.
"""

from pathlib import Path

import numpy as np
from PIL import Image

DEFECT_TYPES = ("blob", "scratch", "spot")


def _normal_image(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.normal(0, size * 0.01, 2)
    radius = size * rng.uniform(0.36, 0.40)
    distance = np.hypot(yy - centre[0], xx - centre[1])
    disc = np.clip((radius - distance) / 2.0, 0, 1)
    ring = np.exp(-(((distance - radius * 0.55) / (size * 0.03)) ** 2))
    base = 30 + disc[..., None] * np.array([150, 120, 70]) + ring[..., None] * 40
    noise = rng.normal(0, 4, (size, size, 3))
    return np.clip(base + noise, 0, 255)


def _defect_mask(rng: np.random.Generator, size: int, defect: str) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(0.05, 0.25) * size
    cy, cx = size / 2 + radius * np.sin(angle), size / 2 + radius * np.cos(angle)
    if defect == "scratch":
        direction = rng.uniform(0, np.pi)
        along = (xx - cx) * np.cos(direction) + (yy - cy) * np.sin(direction)
        across = -(xx - cx) * np.sin(direction) + (yy - cy) * np.cos(direction)
        return (np.abs(along) < size * 0.15) & (np.abs(across) < max(1.0, size * 0.015))
    scale = size * (0.07 if defect == "blob" else 0.035)
    return ((yy - cy) / scale) ** 2 + ((xx - cx) / (scale * rng.uniform(0.6, 1.4))) ** 2 < 1


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


def make_toy_category(
    root: Path | str,
    category: str = "toy_bottle",
    size: int = 64,
    n_train: int = 24,
    n_test_good: int = 6,
    n_test_per_defect: int = 4,
    seed: int = 0,
) -> Path:
    """Write the toy category under ``root/category`` and return that folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / category
    for index in range(n_train):
        _save(_normal_image(rng, size), folder / "train" / "good" / f"{index:03d}.png")
    for index in range(n_test_good):
        _save(_normal_image(rng, size), folder / "test" / "good" / f"{index:03d}.png")
    colours = {"blob": np.array([20, 15, 10]), "scratch": np.array([230, 230, 230]), "spot": np.array([255, 60, 40])}
    for defect in DEFECT_TYPES:
        for index in range(n_test_per_defect):
            image = _normal_image(rng, size)
            mask = _defect_mask(rng, size, defect)
            image[mask] = 0.25 * image[mask] + 0.75 * colours[defect]
            _save(image, folder / "test" / defect / f"{index:03d}.png")
            _save(mask.astype(np.float32) * 255, folder / "ground_truth" / defect / f"{index:03d}_mask.png")
    return folder
