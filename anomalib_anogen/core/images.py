"""Reading images and masks as users hand them in: any common format and bit depth, with errors that name the file."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomalib_anogen.core.checks import MAX_IMAGE_PIXELS
from anomalib_anogen.core.errors import AnogenInputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Files that file managers drop into folders; they are not a user's mistake.
IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini"})


def is_ignored(path: Path) -> bool:
    """A hidden file or folder, or one an OS leaves behind (``Thumbs.db``...): never an image or a defect type."""
    return path.name.startswith(".") or path.name in IGNORED_NAMES


class ImageTooLargeError(AnogenInputError):
    """An image with more pixels than :data:`MAX_IMAGE_PIXELS`: its size, the limit and what to do."""


def check_pixels(path: Path) -> Image.Image:
    """Open ``path`` without decoding it; refuse an image larger than :data:`MAX_IMAGE_PIXELS` from its header.

    The header gives the size, so a 20000 x 20000 image (a 1.2 GB decode) is refused before a pixel is read
    (:class:`ImageTooLargeError`). A file that is not an image raises PIL's own error
    (``UnidentifiedImageError``, ``OSError``), which the caller words.
    """
    limit = f"more than an input image may have ({MAX_IMAGE_PIXELS}, 8192 x 8192); downscale or crop it"
    try:
        with (
            warnings.catch_warnings()
        ):  # PIL warns above 89 megapixels: our own limit is lower, and says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:  # above PIL's own limit (twice 89 megapixels), which says how many
        found = re.search(r"\((\d+) pixels\)", str(error))
        msg = f"{path}: {found.group(1) if found else 'too many'} pixels, {limit}"
        raise ImageTooLargeError(msg) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        msg = f"{path}: {width} x {height} = {width * height} pixels, {limit}"
        raise ImageTooLargeError(msg)
    return image


def _open(path: Path) -> Image.Image:
    try:
        image = check_pixels(path)
        image.load()
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        msg = f"{path}: not a readable image ({error})"
        raise AnogenInputError(msg) from error
    return image


def _to_uint8_array(image: Image.Image) -> np.ndarray:
    """8-bit array of any PIL mode; 16/32-bit integer images are scaled down, not clipped."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        return np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.round(array * scale), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def load_rgb(path: Path) -> Image.Image:
    """An image as 8-bit RGB: grayscale, 16-bit, palette and alpha images are converted, not refused."""
    image = _open(path)
    if image.mode == "RGB":
        return image
    array = _to_uint8_array(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return Image.fromarray(array, mode="RGB")


def load_mask_array(path: Path) -> np.ndarray:
    """A mask as bool H x W: 0/255 masks threshold at 128, 0/1 masks at 1, colour masks on any channel."""
    array = _to_uint8_array(_open(path))
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.max(initial=0) == 1:
        return array > 0
    return array > 127
