"""Where a generated defect goes: per-defect box priors, the object's foreground, rotated boxes and their masks.

As the paper: a box's width and height are drawn uniformly from per-defect ranges given as fractions of the
image side, rotated by a random angle when the prior allows it, and accepted only when at least 75% of it lies
on the object's foreground (generate/foreground.py; a texture category is all foreground). After a bounded
number of tries the best box seen is used and the fallback is logged and recorded, so a bank never stalls on an
image whose object is too small for its priors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomalib_anogen.core.errors import AnogenInputError

logger = logging.getLogger(__name__)

# The paper's MVTec AD priors, shipped with the package.
DEFAULT_PRIORS = Path(__file__).with_name("mvtec_box_ranges.json")
MIN_FOREGROUND = 0.75
MAX_TRIES = 100


@dataclass(frozen=True)
class BoxPrior:
    """Box size ranges as fractions of the image side, and whether the box may be rotated."""

    width: tuple[float, float]
    height: tuple[float, float]
    rotate: bool

    def describe(self) -> list[Any]:
        """The prior in the json file's form (recorded in bank.json)."""
        return [list(self.width), list(self.height), self.rotate]


@dataclass(frozen=True)
class Box:
    """A (possibly rotated) box in pixels: centre, size and angle in degrees (OpenCV's RotatedRect convention)."""

    cx: float
    cy: float
    w: float
    h: float
    angle: float

    def describe(self) -> dict[str, float]:
        """The box as a manifest records it."""
        return {"cx": self.cx, "cy": self.cy, "w": self.w, "h": self.h, "angle": self.angle}

    def corners(self) -> np.ndarray:
        """The four corners ``[4, 2]`` (x, y) in pixels."""
        return cv2.boxPoints(((self.cx, self.cy), (self.w, self.h), self.angle)).astype(np.float64)


@dataclass(frozen=True)
class PlacedBox:
    """A sampled box with how much of it lies on the foreground and whether it is the fallback."""

    box: Box
    foreground: float
    tries: int
    fallback: bool
    placement: float | None = None  # share of the box on the placement region (--placement), when there is one


@dataclass(frozen=True)
class Shape:
    """The shape a box must have: that of the defect it will hold (the paste backend's cut-out).

    ``width`` and ``height`` are the defect's size as fractions of its own image's width (so their ratio is its
    aspect ratio in pixels). With ``own_size`` (priors derived from these very support masks) the box is that
    size times a factor drawn log-uniformly from ``[1 / (1 + margin), 1 + margin]``; otherwise it has the area
    of a box drawn from the prior's ranges, reshaped to this aspect ratio.
    """

    width: float
    height: float
    own_size: bool = False
    margin: float = 0.0

    def draw(self, prior: BoxPrior, rng: np.random.Generator) -> tuple[float, float]:
        """Width and height as fractions of the side (the longer at most 1)."""
        if self.own_size:
            factor = math.exp(float(rng.uniform(-1.0, 1.0)) * math.log1p(self.margin))
            width, height = self.width * factor, self.height * factor
        else:
            area = float(rng.uniform(*prior.width)) * float(rng.uniform(*prior.height))
            ratio = self.width / self.height
            width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)
        longest = max(width, height)
        return (width / longest, height / longest) if longest > 1 else (width, height)


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (seed, record id, ...): every record's randomness is its own."""
    text = ":".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _as_bool(value: Any, where: str) -> bool:
    """The rotate flag: JSON booleans, or the authors' strings "True"/"False" (where "False" means false)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    msg = f"{where}: rotate must be true or false (got {value!r})"
    raise AnogenInputError(msg)


def _range(value: Any, where: str) -> tuple[float, float]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        msg = f"{where}: expected [min, max] as fractions of the image side (got {value!r})"
        raise AnogenInputError(msg)
    low, high = float(value[0]), float(value[1])
    if not 0.0 < low <= high:
        msg = f"{where}: expected 0 < min <= max (got {value!r})"
        raise AnogenInputError(msg)
    if high > 1.0:
        msg = f"{where}: box prior {value!r} is larger than the image (fractions of the image side must be <= 1)"
        raise AnogenInputError(msg)
    return low, high


def parse_prior(value: Any, where: str) -> BoxPrior:
    """One ``[[w_min, w_max], [h_min, h_max], rotate]`` entry, checked."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        msg = f"{where}: expected [[w_min, w_max], [h_min, h_max], rotate] (got {value!r})"
        raise AnogenInputError(msg)
    return BoxPrior(_range(value[0], f"{where} width"), _range(value[1], f"{where} height"), _as_bool(value[2], where))


def _is_defect_table(table: dict[str, Any]) -> bool:
    return all(isinstance(v, list) for v in table.values())


def load_priors(
    path: str | Path | None, category: str | None, normal: Path | None = None
) -> tuple[dict[str, BoxPrior], str | None]:
    """Per-defect priors from a json file (default: the paper's MVTec priors) and the category they are for.

    The file is either ``{category: {defect: prior}}`` (the paper's layout) or ``{defect: prior}``. With
    categories and no ``category``, the category is the first part of the normal folder's path (from the end)
    that the file names, so ``.../MVTecAD/bottle/train/good`` selects ``bottle``.
    """
    file = Path(path).expanduser() if path is not None else DEFAULT_PRIORS
    if not file.is_file():
        msg = f"{file}: box priors file not found"
        raise AnogenInputError(msg)
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        msg = f"{file}: not a readable json file ({error})"
        raise AnogenInputError(msg) from error
    if not isinstance(data, dict) or not data:
        msg = f"{file}: expected a json object of box priors"
        raise AnogenInputError(msg)
    if _is_defect_table(data):
        table, name = data, category
    else:
        if category is None and normal is not None:
            category = next((part for part in reversed(normal.resolve().parts) if part in data), None)
        if category is None:
            msg = f"{file}: names categories ({', '.join(sorted(data))}); pass --category"
            raise AnogenInputError(msg)
        if category not in data or not isinstance(data[category], dict):
            msg = f"{file}: no category {category!r} (have: {', '.join(sorted(data))})"
            raise AnogenInputError(msg)
        table, name = data[category], category
    priors = {str(defect): parse_prior(value, f"{file} [{name or '-'}/{defect}]") for defect, value in table.items()}
    if not priors:
        msg = f"{file}: no defect priors for category {name!r}"
        raise AnogenInputError(msg)
    return priors, name


# ----------------------------------------------------------------------------------------------------------------
# Priors derived from the support masks (--priors auto)

AUTO_MARGIN = 0.25  # the measured size range is widened to [min / (1 + margin), max * (1 + margin)]
AUTO_MIN_COMPONENT = 0.0005  # connected components below this share of the image's pixels are speckle, ignored
AUTO_MIN_SIDE = 0.02  # no derived box side below 2% of the image side


def derive_prior(masks: list[np.ndarray], margin: float, rotate: bool, where: str) -> BoxPrior:
    """A box prior from a defect type's support masks (bool H x W, each at its image's size).

    Every connected component (8-connected) of every mask gives a bounding-box width and height as fractions of
    its image's width and height; the prior spans ``[min / (1 + margin), max * (1 + margin)]`` of those, at
    least :data:`AUTO_MIN_SIDE` and at most 1.
    """
    widths, heights = [], []
    for mask in masks:
        rows, cols = mask.shape
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        for index in range(1, count):
            _, _, width, height, area = (int(v) for v in stats[index])
            if area >= AUTO_MIN_COMPONENT * rows * cols:
                widths.append(width / cols)
                heights.append(height / rows)
    if not widths:
        msg = f"{where}: the support masks mark no defect pixels; cannot derive a box prior"
        raise AnogenInputError(msg)

    def span(values: list[float]) -> tuple[float, float]:
        low = min(1.0, max(AUTO_MIN_SIDE, round(min(values) / (1 + margin), 4)))
        return low, max(low, min(1.0, round(max(values) * (1 + margin), 4)))

    return BoxPrior(span(widths), span(heights), rotate)


# ----------------------------------------------------------------------------------------------------------------
# Masks


def box_mask(box: Box, size: int) -> np.ndarray:
    """The box rasterised at ``size x size``: uint8 0/255 (what the bank's mask files hold)."""
    mask = np.zeros((size, size), np.uint8)
    points = np.round((box.corners() - 0.5) * 16).astype(np.int32)  # pixel centres at +0.5, 4 bits of sub-pixel
    cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_8, shift=4)
    return mask


def feather_alpha(mask: np.ndarray, width: float) -> np.ndarray:
    """Blend weights that rise from the box edge inwards over ``width`` pixels and are exactly 0 outside it."""
    inside = (mask > 0).astype(np.uint8)
    if width <= 0:
        return inside.astype(np.float32)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    return np.clip(distance / float(width), 0.0, 1.0).astype(np.float32)


def composite(normal: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``normal`` where ``alpha`` is 0 (bit-exact), ``generated`` where it is 1, a blend in between (uint8)."""
    base = normal.astype(np.float32)
    blended = base + alpha[..., None] * (generated.astype(np.float32) - base)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out[alpha <= 0] = normal[alpha <= 0]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def _extent(w: float, h: float, angle: float) -> tuple[float, float]:
    """Width and height of the axis-aligned bounding box of a rotated box."""
    radians = math.radians(angle)
    c, s = abs(math.cos(radians)), abs(math.sin(radians))
    return w * c + h * s, w * s + h * c


def sample_box(
    prior: BoxPrior,
    size: int,
    foreground: np.ndarray,
    rng: np.random.Generator,
    min_foreground: float = MIN_FOREGROUND,
    max_tries: int = MAX_TRIES,
    shape: Shape | None = None,
) -> PlacedBox:
    """Draw boxes from ``prior`` until one lies at least ``min_foreground`` on the foreground (or give the best).

    ``shape``: the box takes the aspect ratio (and with ``own_size`` the size) of the defect it will hold; the
    paper's independent width and height draws otherwise.
    """
    best: PlacedBox | None = None
    for attempt in range(1, max_tries + 1):
        if shape is None:
            w = round(float(rng.uniform(*prior.width)) * size, 2)
            h = round(float(rng.uniform(*prior.height)) * size, 2)
        else:
            width, height = shape.draw(prior, rng)
            w, h = round(max(2.0, width * size), 2), round(max(2.0, height * size), 2)
        angle = round(float(rng.uniform(-90.0, 90.0)), 2) if prior.rotate else 0.0
        extent_w, extent_h = _extent(w, h, angle)
        if extent_w > size or extent_h > size:  # this angle does not fit; another draw may
            continue
        cx = round(float(rng.uniform(extent_w / 2, size - extent_w / 2)), 2)
        cy = round(float(rng.uniform(extent_h / 2, size - extent_h / 2)), 2)
        box = Box(cx, cy, w, h, angle)
        inside = box_mask(box, size) > 0
        if not inside.any():
            continue
        fraction = float(foreground[inside].mean())
        if fraction >= min_foreground:
            return PlacedBox(box, fraction, attempt, False)
        if best is None or fraction > best.foreground:
            best = PlacedBox(box, fraction, attempt, True)
    if best is None:  # no draw fitted at all: an unrotated box of the smallest prior size (or shape), centred
        w, h = prior.width[0] * size, prior.height[0] * size
        if shape is not None:
            w, h = (min(1.0, v) * size for v in (shape.width, shape.height))
        box = Box(size / 2, size / 2, round(w, 2), round(h, 2), 0.0)
        best = PlacedBox(box, float(foreground[box_mask(box, size) > 0].mean()), max_tries, True)
    return PlacedBox(best.box, best.foreground, max_tries, True)
