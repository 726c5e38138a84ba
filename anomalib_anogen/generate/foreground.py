"""Where the object is in a normal image: the rules of ``anogen generate --foreground``.

A box is accepted when most of it lies on the object's foreground, so the foreground decides where defects go.

- ``border`` (the default for objects): the image border is taken as background. A background model (robust
  mean and spread of colour and local texture) is fitted on a strip along the border, every pixel gets its
  distance to that model, and the distance map is thresholded with Otsu (never below 3 spreads), closed, its
  holes filled and its specks dropped. It only assumes that the object does not fill the border strip, so it
  works for a dark part on a dark background or a part as bright as its background but textured differently,
  where a grey-level threshold cannot. When it finds nothing (or everything), the ``otsu`` mask is used.
- ``otsu``: the AnoGen authors' rule (``DIFFUSION/utils_scripts/creatMask_v2.py``): an Otsu threshold of the
  grey image, the side covering most of the border being background, plus a closing. Right for a dark object
  on a bright background (MVTec bottle); it splits a textured or dark-on-dark object by brightness instead.
- ``all``: the whole image (texture categories).
- ``auto``: ``all`` for the MVTec AD texture categories, else ``border``.

docs/generate.md has the measured foreground IoU of each rule (``benchmarks/bench_foreground.py``).
"""

from __future__ import annotations

import cv2
import numpy as np

FOREGROUND_RULES = ("auto", "border", "otsu", "all")
MVTEC_TEXTURES = frozenset({"carpet", "grid", "leather", "tile", "wood"})  # all foreground under auto

WORKING_SIDE = 256  # the border rule runs at most at this side (speed); its mask is resized back
BORDER_STRIP = 1 / 32  # width of the background strip, as a share of the shorter side
MIN_DISTANCE = 3.0  # a pixel closer than this many background spreads to the background is background
MIN_SPREAD = np.array([2.0, 1.5, 1.5, 1.0], np.float32)  # floor of the spread of L, a, b and texture
MIN_COMPONENT = 0.005  # foreground components smaller than this share of the image are dropped
SPLIT_SHARE = 0.5  # a mask under this share of the log-distance mask split the object (see border_foreground)


def resolve_rule(rule: str, category: str | None) -> str:
    """The concrete rule of ``--foreground``: ``auto`` is ``all`` for MVTec textures, else ``border``."""
    if rule != "auto":
        return rule
    return "all" if category in MVTEC_TEXTURES else "border"


def foreground_mask(image: np.ndarray, rule: str = "border") -> np.ndarray:
    """The object's pixels (bool H x W) of a uint8 RGB image by ``rule`` (``border``, ``otsu`` or ``all``)."""
    if rule == "all":
        return np.ones(image.shape[:2], bool)
    if rule == "otsu":
        return otsu_foreground(image)
    if rule == "border":
        return border_foreground(image)
    msg = f"unknown foreground rule {rule!r}: one of {', '.join(FOREGROUND_RULES[1:])}"
    raise ValueError(msg)


def _closing_kernel(shape: tuple[int, ...]) -> np.ndarray:
    side = max(3, (min(shape[:2]) // 32) | 1)  # odd, 9 px at 256
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))


def _border_pixels(array: np.ndarray, width: int) -> np.ndarray:
    """The pixels of a strip ``width`` wide along the four sides, ``[n, ...]``."""
    return np.concatenate(
        [
            array[:width].reshape(-1, *array.shape[2:]),
            array[-width:].reshape(-1, *array.shape[2:]),
            array[width:-width, :width].reshape(-1, *array.shape[2:]),
            array[width:-width, -width:].reshape(-1, *array.shape[2:]),
        ]
    )


def otsu_foreground(image: np.ndarray) -> np.ndarray:
    """Otsu threshold of the grey image, the side covering most of the border as background, then a closing.

    A flat image is all foreground.
    """
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    if int(grey.max()) == int(grey.min()):
        return np.ones(grey.shape, bool)
    _, binary = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if _border_pixels(binary, 1).mean() > 0.5:
        binary = 1 - binary
    return cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_CLOSE, _closing_kernel(grey.shape)).astype(bool)


def _texture_sigma(shape: tuple[int, ...]) -> float:
    return max(1.5, min(shape[:2]) / 64)


def _features(image: np.ndarray) -> np.ndarray:
    """Per pixel: smoothed CIELAB colour and the local standard deviation of lightness (texture), ``[H, W, 4]``."""
    side = min(image.shape[:2])
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    colour = cv2.GaussianBlur(lab, (0, 0), sigmaX=max(1.0, side / 256))
    lightness = lab[..., 0]
    sigma = _texture_sigma(image.shape)
    mean = cv2.GaussianBlur(lightness, (0, 0), sigmaX=sigma)
    square = cv2.GaussianBlur(lightness * lightness, (0, 0), sigmaX=sigma)
    texture = np.sqrt(np.maximum(square - mean * mean, 0.0))
    return np.concatenate([colour, texture[..., None]], axis=-1)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not touch the image border filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
    reach = padded.copy()
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(reach, flood, (0, 0), 1)
    return (mask | (reach[1:-1, 1:-1] == 0)).astype(bool)


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= MIN_COMPONENT * mask.size
    return keep[labels]


def _otsu_level(values: np.ndarray) -> float:
    """Otsu's threshold of non-negative ``values`` (on 256 levels from 0 to their maximum)."""
    top = float(values.max())
    scaled = np.round(values / top * 255).astype(np.uint8)
    level, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return level / 255 * top


def _clean(mask: np.ndarray, squares: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A thresholded distance map made an object mask: rim check, closing, holes filled, specks dropped."""
    # Local texture is high on both sides of an edge: along the mask's rim, a pixel stays only if its colour
    # differs from the background too (otherwise a bright background around a dark part grows a halo).
    reach = 2 * round(_texture_sigma(shape)) + 1
    core = cv2.erode(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach)))
    colour_differs = np.sqrt(squares[..., :3].sum(axis=-1)) > MIN_DISTANCE
    mask = mask & (core.astype(bool) | colour_differs)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, _closing_kernel(shape)).astype(bool)
    return _drop_specks(_fill_holes(mask))


def border_foreground(image: np.ndarray) -> np.ndarray:
    """Pixels unlike the image border (see the module docstring), bool H x W; ``otsu`` when that is degenerate."""
    height, width = image.shape[:2]
    scale = min(1.0, WORKING_SIDE / max(height, width))
    small = np.ascontiguousarray(image)
    if scale < 1.0:
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
    features = _features(small)
    strip = max(2, round(min(small.shape[:2]) * BORDER_STRIP))
    background = _border_pixels(features, strip)
    centre = np.median(background, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(background - centre), axis=0), MIN_SPREAD)
    squares = ((features - centre) / spread) ** 2
    distance = np.sqrt(squares.sum(axis=-1))
    top = float(distance.max())
    if top <= MIN_DISTANCE:
        return otsu_foreground(image)
    # Threshold the distance with Otsu, never below MIN_DISTANCE. An object's own contrasts (highlights, print)
    # can spread its distances so widely that Otsu splits the object instead of object from background; then
    # Otsu of the log distance, which keeps the object whole, is used instead.
    mask = _clean(distance > max(MIN_DISTANCE, _otsu_level(distance)), squares, small.shape)
    whole = _clean(distance > max(MIN_DISTANCE, np.expm1(_otsu_level(np.log1p(distance)))), squares, small.shape)
    if mask.sum() < SPLIT_SHARE * whole.sum():
        mask = whole
    if not 0.005 <= mask.mean() <= 0.98:
        return otsu_foreground(image)
    if scale < 1.0:
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask
