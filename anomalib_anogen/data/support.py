"""Reading few-shot support sets (real anomalies with their masks) with checks that name the bad file.

Two layouts are accepted:

* support layout: ``<root>/<defect>/<name>.png`` with ``<root>/<defect>/<name>_mask.png``
  (a folder that holds such pairs directly is one defect named after the folder);
* MVTec layout: ``<root>/test/<defect>/<name>.png`` with ``<root>/ground_truth/<defect>/<name>_mask.png``;
  ``good`` is skipped and ``shots`` images per defect are drawn with ``seed`` (recorded, so that an
  evaluation can leave them out).

Every pair is decoded once up front, so bad input fails before any training starts.
"""

from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.images import IMAGE_SUFFIXES, is_ignored, load_mask_array, load_rgb

logger = logging.getLogger(__name__)

MASK_SUFFIX = "_mask"
MVTEC_GOOD = "good"
DEFAULT_MVTEC_SHOTS = 3  # the paper's few-shot setting
# A mask covering this much of its image makes the whole picture the "defect" (plain textual inversion of the
# image): fine for a tight crop of a defect, but usually an inverted or placeholder mask, so it is warned about.
WHOLE_IMAGE_MASK_FRACTION = 0.9


@dataclass(frozen=True)
class SupportPair:
    """One real anomaly: its image and its mask file."""

    defect: str
    image: Path
    mask: Path


@dataclass
class SupportSet:
    """The support pairs found under one root, per defect, and how they were chosen."""

    root: Path
    layout: str  # "support", "single" or "mvtec"
    pairs: dict[str, list[SupportPair]]
    shots: int | None = None
    selection_seed: int | None = None
    available: dict[str, int] = field(default_factory=dict)

    @property
    def defects(self) -> list[str]:
        """Defect names, sorted."""
        return sorted(self.pairs)


@dataclass
class LoadedPair:
    """A decoded support pair: RGB image and boolean mask of the same size."""

    pair: SupportPair
    image: Image.Image
    mask: np.ndarray  # bool, H x W, same size as image
    mask_resized: bool = False
    mask_file_size: tuple[int, int] | None = None  # width, height of the mask file when it was resized

    @property
    def mask_fraction(self) -> float:
        """The fraction of the image that the mask marks as defect."""
        return float(self.mask.mean())


def _scan_pair_folder(folder: Path, defect: str, mask_folder: Path | None = None) -> list[SupportPair]:
    """Pairs in one defect folder; masks beside the images or in ``mask_folder`` (MVTec)."""
    images: list[Path] = []
    masks: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() or is_ignored(path):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            msg = f"{path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})"
            raise AnogenInputError(msg)
        if mask_folder is None and path.stem.endswith(MASK_SUFFIX):
            masks[path.stem[: -len(MASK_SUFFIX)]] = path
        else:
            images.append(path)
    if mask_folder is not None:
        if not mask_folder.is_dir():
            msg = f"{mask_folder}: mask folder missing for the images in {folder}"
            raise AnogenInputError(msg)
        for path in sorted(mask_folder.iterdir()):
            if path.is_file() and not is_ignored(path) and path.stem.endswith(MASK_SUFFIX):
                masks[path.stem[: -len(MASK_SUFFIX)]] = path
    if not images:
        msg = f"{folder}: no images found (expected <name>.png with <name>{MASK_SUFFIX}.png)"
        raise AnogenInputError(msg)
    pairs = []
    for image in images:
        mask = masks.pop(image.stem, None)
        if mask is None:
            where = mask_folder if mask_folder is not None else folder
            msg = f"{image}: no mask (expected {where / (image.stem + MASK_SUFFIX + '.png')})"
            raise AnogenInputError(msg)
        pairs.append(SupportPair(defect=defect, image=image, mask=mask))
    if masks and mask_folder is None:
        orphan = next(iter(masks.values()))
        msg = f"{orphan}: mask without an image (expected {folder / (orphan.stem[:-5] + '.png')})"
        raise AnogenInputError(msg)
    return pairs


def _select(pairs: list[SupportPair], shots: int | None, seed: int, defect: str) -> list[SupportPair]:
    """``shots`` pairs drawn with a per-defect RNG, so one defect's choice never depends on the others."""
    if shots is None or shots >= len(pairs):
        if shots is not None and shots > len(pairs):
            logger.warning("defect %s: asked for %d shots, only %d available; using all", defect, shots, len(pairs))
        return pairs
    chosen = random.Random(f"anogen-shots:{seed}:{defect}").sample(range(len(pairs)), shots)
    return [pairs[i] for i in sorted(chosen)]


def discover_support(
    root: str | Path, shots: int | None = None, seed: int = 0, defects: list[str] | None = None
) -> SupportSet:
    """Find the support pairs under ``root`` in either layout (see module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        msg = f"{root}: support folder not found"
        raise AnogenInputError(msg)
    found: dict[str, list[SupportPair]] = {}
    if (root / "test").is_dir() and (root / "ground_truth").is_dir():
        layout = "mvtec"
        shots = DEFAULT_MVTEC_SHOTS if shots is None else shots
        for folder in sorted(p for p in (root / "test").iterdir() if p.is_dir() and p.name != MVTEC_GOOD):
            found[folder.name] = _scan_pair_folder(folder, folder.name, root / "ground_truth" / folder.name)
    else:
        subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not is_ignored(p))
        if subfolders:
            layout = "support"
            for folder in subfolders:
                found[folder.name] = _scan_pair_folder(folder, folder.name)
        else:
            layout = "single"
            found[root.name] = _scan_pair_folder(root, root.name)
    if not found:
        msg = f"{root}: no defect folders with images found"
        raise AnogenInputError(msg)
    if defects:
        unknown = sorted(set(defects) - set(found))
        if unknown:
            msg = f"{root}: defect(s) {', '.join(unknown)} not found (have: {', '.join(found)})"
            raise AnogenInputError(msg)
        found = {name: found[name] for name in defects}
    available = {name: len(pairs) for name, pairs in found.items()}
    selected = {name: _select(pairs, shots, seed, name) for name, pairs in found.items()}
    return SupportSet(
        root=root,
        layout=layout,
        pairs=selected,
        shots=shots,
        selection_seed=seed if shots is not None else None,
        available=available,
    )


def _warn(message: str, stacklevel: int = 3) -> None:
    """A warning for library callers (``warnings``) and for the CLI's log."""
    warnings.warn(message, stacklevel=stacklevel)
    logger.warning(message)


def load_pair(pair: SupportPair, warn: bool = True) -> LoadedPair:
    """Decode and check one pair; a mask of another size is resized (nearest) to the image with a warning.

    An empty mask is refused; a mask covering (nearly) the whole image is learned with a warning.
    ``warn=False`` leaves the resize warning to the caller (``mask_file_size`` says which masks were
    resized), as :func:`load_support` gives one for a whole support set.
    """
    image = load_rgb(pair.image)
    mask = load_mask_array(pair.mask)
    loaded = LoadedPair(pair=pair, image=image, mask=mask)
    if mask.shape != (image.height, image.width):
        loaded.mask_file_size = (mask.shape[1], mask.shape[0])
        loaded.mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.Resampling.NEAREST))
        loaded.mask_resized = True
        if warn:
            _warn(_resize_message(loaded))
    if not loaded.mask.any():
        msg = f"{pair.mask}: mask is empty (no defect pixel), nothing to learn from"
        raise AnogenInputError(msg)
    if loaded.mask_fraction >= WHOLE_IMAGE_MASK_FRACTION:
        _warn(
            f"{pair.mask}: mask covers {loaded.mask_fraction:.1%} of the image, so the whole picture is learned as "
            "the defect; if the mask is inverted (white must mark the defect), invert it"
        )
    return loaded


def _resize_message(loaded: LoadedPair) -> str:
    width, height = loaded.mask_file_size or loaded.image.size
    return (
        f"{loaded.pair.mask}: mask is {width}x{height} but its image is {loaded.image.width}x{loaded.image.height}; "
        "resizing the mask (nearest neighbour)"
    )


def load_support(support: SupportSet) -> dict[str, list[LoadedPair]]:
    """Decode every pair of every defect (fails on the first bad file, before any training).

    Masks of another size than their image are resized with one warning for the whole set, naming the first.
    """
    loaded = {defect: [load_pair(pair, warn=False) for pair in support.pairs[defect]] for defect in support.defects}
    every = [item for items in loaded.values() for item in items]
    resized = [item for item in every if item.mask_resized]
    if resized:
        more = f" (and {len(resized) - 1} more of the {len(every)} support masks)" if len(resized) > 1 else ""
        _warn(_resize_message(resized[0]) + more)
    return loaded
