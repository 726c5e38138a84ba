"""Where each defect type may go on the object: per-defect placement templates or one region of interest.

``anogen generate --placement PATH`` takes either

* a folder of per-defect templates in the AnoGen authors' layout, ``<defect>/mask.png`` or
  ``<category>/<defect>/mask.png`` (white: where that defect type may appear, e.g. bottle ``broken_large`` on the
  rim ring, ``contamination`` on the inner disc), or
* one mask image for every defect type (a region of interest: fixed camera, fixed part position).

Templates of any size are resized to the image with nearest neighbour and thresholded above 0 (an RGBA file's
colour channels are read, its alpha ignored, as ``cv2.imread`` in the authors' code). A box is then accepted when at
least ``--min_foreground`` of it lies on the template and, unless ``--placement_foreground false``, on the image's
foreground as well (the share of the box on their intersection). Every template is read and checked before any
work: a missing, unknown, unreadable or all-black template is an :class:`AnogenInputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import sha256_file
from anomalib_anogen.core.images import IMAGE_SUFFIXES, ImageTooLargeError, check_pixels, is_ignored

TEMPLATE_NAME = "mask.png"  # the authors' file name inside each <defect> folder


@dataclass
class Placement:
    """The placement templates of one run: a template file per defect (or one ROI file for all of them)."""

    root: Path
    kind: str  # "templates" or "roi"
    files: dict[str, Path]  # defect -> template file
    foreground: bool  # also require the image's foreground (the default)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # defect -> bool mask at the file's size
    _resized: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    def region(self, defect: str, size: int) -> np.ndarray:
        """The defect's template at ``size x size`` (bool), resized with nearest neighbour (cached)."""
        key = (defect, size)
        if key not in self._resized:
            mask = self.masks[defect]
            if mask.shape != (size, size):
                image = Image.fromarray(mask.astype(np.uint8) * 255)
                mask = np.asarray(image.resize((size, size), Image.Resampling.NEAREST)) > 0
            self._resized[key] = mask
        return self._resized[key]

    def describe(self) -> dict[str, Any]:
        """What bank.json records: the path, the kind, the foreground rule and each template's file and sha256."""
        return {
            "path": str(self.root),
            "kind": self.kind,
            "foreground": self.foreground,
            "templates": {
                defect: {"file": str(path), "sha256": sha256_file(path)} for defect, path in sorted(self.files.items())
            },
        }


def read_template(path: Path) -> np.ndarray:
    """A template file as a bool mask (grey value above 0), or an error naming the file."""
    try:
        with check_pixels(path) as image:  # a huge template is refused from its header, before it is decoded
            grey = np.asarray(image.convert("RGB").convert("L"))
    except ImageTooLargeError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as error:
        msg = f"{path}: unreadable placement template ({error})"
        raise AnogenInputError(msg) from error
    mask = grey > 0
    if not mask.any():
        msg = f"{path}: placement template is empty (all black): no place for a defect"
        raise AnogenInputError(msg)
    return mask


def _template_in(folder: Path) -> Path:
    """``<defect>/mask.png``, or the only image file in the defect's folder."""
    named = folder / TEMPLATE_NAME
    if named.is_file():
        return named
    images = [p for p in sorted(folder.iterdir()) if p.is_file() and not is_ignored(p)]
    images = [p for p in images if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(images) != 1:
        found = ", ".join(p.name for p in images) or "no image"
        msg = f"{folder}: expected the placement template {TEMPLATE_NAME} (found {found})"
        raise AnogenInputError(msg)
    return images[0]


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def load_placement(
    path: str | Path, defects: list[str], known: list[str], category: str | None, foreground: bool = True
) -> Placement:
    """Read and check the templates for ``defects`` (the run's), before any work.

    Args:
        path: A folder of ``<defect>/mask.png`` or ``<category>/<defect>/mask.png``, or one ROI mask image.
        defects: The defect types this run generates (each needs a template).
        known: Every defect type of the embeddings or support set (a template folder of another name is an error).
        category: The run's category, to pick ``<category>/`` in a folder of categories.
        foreground: Also require the image's foreground.
    """
    root = Path(path).expanduser()
    if not root.exists():
        msg = f"{root}: --placement not found (a folder of <defect>/mask.png or one mask image)"
        raise AnogenInputError(msg)
    if root.is_file():
        mask = read_template(root)
        files = dict.fromkeys(defects, root.resolve())
        return Placement(root.resolve(), "roi", files, foreground, masks=dict.fromkeys(defects, mask))
    folder = _defect_folder(root, known, category)
    folders = {p.name: p for p in _subfolders(folder)}
    unknown = sorted(set(folders) - set(known))
    if unknown:
        msg = (
            f"{folders[unknown[0]]}: placement template for an unknown defect type {unknown[0]!r} "
            f"(the defect types are: {', '.join(sorted(known))})"
        )
        raise AnogenInputError(msg)
    missing = [d for d in defects if d not in folders]
    if missing:
        msg = (
            f"{folder}: no placement template for defect type(s) {', '.join(missing)} "
            f"(expected {folder / missing[0] / TEMPLATE_NAME})"
        )
        raise AnogenInputError(msg)
    files = {d: _template_in(folders[d]).resolve() for d in defects}
    masks = {d: read_template(f) for d, f in files.items()}
    return Placement(folder.resolve(), "templates", files, foreground, masks=masks)


def _defect_folder(root: Path, known: list[str], category: str | None) -> Path:
    """``root`` itself when it holds defect folders, else its ``<category>`` folder."""
    subfolders = _subfolders(root)
    if not subfolders:
        msg = f"{root}: --placement folder holds no <defect>/{TEMPLATE_NAME}"
        raise AnogenInputError(msg)
    if any(p.name in known for p in subfolders):
        return root
    nested = [p for p in subfolders if any(q.name in known for q in _subfolders(p))]
    if category is not None and (root / category).is_dir():
        return root / category
    if category is None and len(nested) == 1:
        return nested[0]
    if category is None and nested:
        msg = (
            f"{root}: holds the templates of several categories ({', '.join(p.name for p in nested)}); pass --category"
        )
        raise AnogenInputError(msg)
    raise AnogenInputError(
        f"{root}: no placement templates for these defect types ({', '.join(sorted(known))}); expected "
        f"<defect>/{TEMPLATE_NAME}" + (f" or {category}/<defect>/{TEMPLATE_NAME}" if category else "")
    )
