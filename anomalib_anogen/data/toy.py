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


# ------------------------------------------------------------------------------------------------------------------
# A product of one's own, in anomalib's Folder layout (docs/your-own-product.md)

# The product's defect types and the toy defect each is drawn as (no MVTec AD names anywhere).
PRODUCT_DEFECTS = {"dent": "blob", "streak": "scratch", "speck": "spot"}
ROI_RADIUS = 0.44  # the region of interest: a disc of this radius (of the side) around the centre


def _anomaly(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    colours = {"blob": np.array([20, 15, 10]), "scratch": np.array([230, 230, 230]), "spot": np.array([255, 60, 40])}
    image = _normal_image(rng, size)
    mask = _defect_mask(rng, size, kind)
    image[mask] = 0.25 * image[mask] + 0.75 * colours[kind]
    return image, mask


def make_toy_product(
    root: Path | str,
    size: int = 128,
    n_normal: int = 40,
    n_test_normal: int = 6,
    n_test_per_defect: int = 4,
    shots: int = 3,
    seed: int = 0,
) -> Path:
    """Write a toy product in anomalib's ``Folder`` layout, with a support set and a region of interest.

    ``root/normal`` (training images), ``root/test_normal``, ``root/anomalous/<defect>/<name>.png`` with
    ``root/masks/<defect>/<name>_mask.png``, ``root/support/<defect>/<name>.png`` + ``<name>_mask.png`` (``shots``
    real anomalies per defect type, not among the test images) and ``root/roi.png`` (where the part is).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root)
    for index in range(n_normal):
        _save(_normal_image(rng, size), folder / "normal" / f"{index:03d}.png")
    for index in range(n_test_normal):
        _save(_normal_image(rng, size), folder / "test_normal" / f"{index:03d}.png")
    for defect, kind in PRODUCT_DEFECTS.items():
        for index in range(n_test_per_defect):
            image, mask = _anomaly(rng, size, kind)
            _save(image, folder / "anomalous" / defect / f"{index:03d}.png")
            _save(mask.astype(np.float32) * 255, folder / "masks" / defect / f"{index:03d}_mask.png")
        for index in range(shots):
            image, mask = _anomaly(rng, size, kind)
            _save(image, folder / "support" / defect / f"s{index:02d}.png")
            _save(mask.astype(np.float32) * 255, folder / "support" / defect / f"s{index:02d}_mask.png")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    roi = np.hypot(yy - size / 2, xx - size / 2) < ROI_RADIUS * size
    _save(roi.astype(np.float32) * 255, folder / "roi.png")
    return folder


# Hard cases for the foreground rules (tests and benchmarks/bench_foreground.py): each returns the image and its
# reference object mask.


def dark_part(size: int = 256, seed: int = 0, height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A dark, textured part on dark noise: grey 55 +- 18 (a grating) on grey 40 +- 12 (noise), ``height x size``.

    A grey-level threshold splits the noise, not the part; the object differs from the background only in its
    smoothed colour and texture.
    """
    rng = np.random.default_rng(seed)
    height = height or size
    yy, xx = np.mgrid[0:height, 0:size].astype(np.float32)
    cy, cx = height * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6)
    a, b = min(height, size) * rng.uniform(0.2, 0.3, 2)
    turn = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(turn) + (yy - cy) * np.sin(turn)) / a
    v = (-(xx - cx) * np.sin(turn) + (yy - cy) * np.cos(turn)) / b
    reference = np.abs(u) ** 3 + np.abs(v) ** 3 < 1  # a rounded rectangle
    period = min(height, size) / 12
    grating = 55 + 18 * np.sin(xx / period * 2 * np.pi) * np.sin(yy / period * 1.5 * np.pi)
    part = (grating + rng.normal(0, 6, (height, size)))[..., None] * np.array([1.0, 0.95, 0.9])
    background = rng.normal(40, 12, (height, size, 1)) * np.ones(3)
    image = np.where(reference[..., None], part, background)
    return np.clip(image, 0, 255).astype(np.uint8), reference


# The defect types of :func:`make_dark_product`: dark holes (small beads) and dark cuts (long thin lines).
DARK_DEFECTS = ("cut", "hole")


def _dark_defect(rng: np.random.Generator, part: np.ndarray, defect: str, index: int) -> np.ndarray:
    """A defect mask on the part of a :func:`dark_part` image: beads (``hole``) or one long thin line (``cut``)."""
    height, width = part.shape
    ys, xs = np.nonzero(_erode(part, max(3, width // 8)))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = np.zeros(part.shape, bool)
    if defect == "hole":  # 11 x 19 px beads at 256 px (one image: a second, smaller one)
        sizes = [(11, 19), (7, 7)] if index == 1 else [(11, 19) if index == 0 else (13, 17)]
        for bead_w, bead_h in sizes:
            at = int(rng.integers(len(ys)))
            scale = width / 256
            mask |= ((xx - xs[at]) / (bead_w * scale / 2)) ** 2 + ((yy - ys[at]) / (bead_h * scale / 2)) ** 2 < 1
        return mask
    at = int(rng.integers(len(ys)))  # cut: 90 x 3 px (or 3 x 70 px), clipped to the part
    long, thin = (90, 3) if index != 1 else (70, 3)
    long, thin = long * width / 256, max(1.0, thin * width / 256)
    along, across = (xx - xs[at], yy - ys[at]) if index != 1 else (yy - ys[at], xx - xs[at])
    return (np.abs(along) < long / 2) & (np.abs(across) < thin / 2) & part


def _erode(mask: np.ndarray, side: int) -> np.ndarray:
    """``mask`` eroded by a square of ``side`` pixels (bool)."""
    import cv2

    return cv2.erode(mask.astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool)


def make_dark_product(root: Path | str, size: int = 256, n_normal: int = 12, shots: int = 3, seed: int = 0) -> Path:
    """A dark product: :func:`dark_part` images and a support set of dark ``hole`` beads and ``cut`` lines.

    ``root/normal/<nnn>.png`` and ``root/support/<defect>/s<nn>.png`` with ``s<nn>_mask.png``. The defects are
    darker than the part (grey 10-16, neutral, soft-edged) and have no MVTec name, so ``anogen generate`` derives
    the priors from the support masks (``--priors auto``). The paste backend's test and measurement case for
    aspect ratio and colour (docs/quality.md).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root)
    for index in range(n_normal):
        image, _ = dark_part(size, seed=1000 + index)
        _save(image, folder / "normal" / f"{index:03d}.png")
    for defect in DARK_DEFECTS:
        for index in range(shots):
            image, part = dark_part(size, seed=2000 + 10 * DARK_DEFECTS.index(defect) + index)
            mask = _dark_defect(rng, part, defect, index)
            soft = np.clip(_blur(mask.astype(np.float32), 0.8) * 1.5, 0, 1)[..., None]
            dark = rng.uniform(10, 16) + rng.normal(0, 2, (size, size, 1))
            out = image.astype(np.float32) * (1 - soft) + dark * soft
            _save(out, folder / "support" / defect / f"s{index:02d}.png")
            _save(mask.astype(np.float32) * 255, folder / "support" / defect / f"s{index:02d}_mask.png")
    return folder


def _blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """``array`` blurred with a Gaussian of ``sigma`` pixels."""
    import cv2

    return cv2.GaussianBlur(array, (0, 0), sigma)


def disc_reference(image: np.ndarray, darker_than: int = 200) -> np.ndarray:
    """The reference mask of a round part on a bright background (MVTec bottle).

    The minimum enclosing circle of the largest component darker than ``darker_than``.
    """
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    contours, _ = cv2.findContours((grey < darker_than).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    (x, y), radius = cv2.minEnclosingCircle(max(contours, key=cv2.contourArea))
    mask = np.zeros(grey.shape, np.uint8)
    cv2.circle(mask, (round(x), round(y)), round(radius), 1, -1)
    return mask.astype(bool)


def darken_background(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` with the background (outside ``reference``) scaled to the object's mean brightness."""
    grey = image.astype(np.float32).mean(axis=-1)
    scale = grey[reference].mean() / max(1.0, grey[~reference].mean())
    out = image.astype(np.float32)
    out[~reference] *= scale
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> Path:
    """``python -m anomalib_anogen.data.toy --output DIR``: write the toy product of docs/your-own-product.md."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m anomalib_anogen.data.toy", description=make_toy_product.__doc__)
    parser.add_argument("--output", required=True, help="folder to write (e.g. datasets/widget)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--normal", type=int, default=40, help="normal training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if Path(args.output).exists() and any(Path(args.output).iterdir()):
        parser.error(f"{args.output}: exists and is not empty")
    folder = make_toy_product(args.output, size=args.size, n_normal=args.normal, seed=args.seed)
    print(f"{folder}: toy product ({', '.join(PRODUCT_DEFECTS)}), {args.size} px")
    return folder


if __name__ == "__main__":
    main()
