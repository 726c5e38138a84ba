"""What ``anogen evaluate`` reads: the bank's training pairs and a real test set, checked before any training.

Test-set layouts (``--test``):

* an **MVTec AD category** folder (``../shared/data/MVTecAD/bottle``): ``test/<defect>/<name>.<ext>`` with
  ``ground_truth/<defect>/<name>_mask.<ext>``; ``test/good`` holds the normal test images (no masks);
* an **MVTec AD root** with ``--category NAME``: the category folder ``<root>/<NAME>`` as above;
* anomalib's **Folder** layout: ``<abnormal_dir>/**/<name>.<ext>`` with ``<mask_dir>/**/<name>_mask.<ext>`` (or
  ``<name>.<ext>``) at the same relative path, and optional normal test images under ``<normal_test_dir>``.

Every anomalous image needs its mask of the same size, every mask its image; images are resized to the
evaluation side (bilinear), masks with nearest neighbour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.images import IMAGE_SUFFIXES, is_ignored, load_mask_array, load_rgb
from anomalib_anogen.data.bank import BankError, BankRecord, load_bank, unfinished_bank

logger = logging.getLogger(__name__)

NORMAL_FOLDER = "good"  # MVTec AD's normal test images


# ----------------------------------------------------------------------------------------------------------------
# The bank


@dataclass(frozen=True)
class BankPairs:
    """The bank's records used for training, how many its manifest marks rejected, and their normal sources."""

    folder: Path
    records: list[BankRecord]
    rejected: int
    sources: list[Path]  # distinct, in manifest order

    @property
    def defects(self) -> list[str]:
        """The defect types of the records used."""
        return sorted({record.defect for record in self.records})


def read_bank(bank: str) -> BankPairs:
    """The bank's records and sources; refuses a missing, unfinished or broken bank.

    Records that the quality gate rejected (``rejected`` in the manifest, or ``quality.json``'s verdict on the same
    image file; docs/quality.md) are left out, as the detectors' ``anogen`` generator leaves them out, and counted.
    """
    folder = Path(bank).expanduser()
    try:
        records = load_bank(folder)
    except BankError as error:
        raise AnogenInputError(str(error).removeprefix("bank_dir: ")) from error
    progress = unfinished_bank(folder)
    if progress is not None:
        msg = (
            f"{folder}: the anomaly bank is unfinished (bank.json says complete: false, {progress.describe()} "
            "generated); finish it by running the `anogen generate` command that made it again with --resume true"
        )
        raise AnogenInputError(msg)
    kept = [record for record in records if not record.rejected]
    if not kept:
        msg = f"{folder}: the quality gate rejected every one of the bank's {len(records)} records; nothing to train on"
        raise AnogenInputError(msg)
    for record in kept:
        image, mask = _size(record.image), _size(record.mask)
        if image != mask:
            msg = f"{record.mask}: the mask is {_wh(mask)}, its bank image {record.image} is {_wh(image)}"
            raise AnogenInputError(msg)
    sources = list(dict.fromkeys(record.source for record in kept))
    return BankPairs(folder=folder, records=kept, rejected=len(records) - len(kept), sources=sources)


# ----------------------------------------------------------------------------------------------------------------
# The test set


@dataclass(frozen=True)
class TestImage:
    """One test image: its mask file (``None`` for a normal image) and whether it is anomalous."""

    image: Path
    mask: Path | None
    anomalous: bool


@dataclass(frozen=True)
class TestSet:
    """The real test images, where they come from and in which layout."""

    folder: Path
    layout: str  # "MVTec AD" or "Folder"
    images: list[TestImage]

    @property
    def anomalous(self) -> int:
        """Anomalous test images."""
        return sum(item.anomalous for item in self.images)

    @property
    def normal(self) -> int:
        """Normal test images."""
        return len(self.images) - self.anomalous


LAYOUTS_HELP = (
    "an MVTec AD category folder (test/<defect>/ with ground_truth/<defect>/<name>_mask.png), an MVTec AD root with "
    "--category, or anomalib's Folder layout (--abnormal_dir with --mask_dir, optional --normal_test_dir)"
)


def find_test_set(
    test: str, category: str | None, abnormal_dir: str, mask_dir: str, normal_test_dir: str | None
) -> TestSet:
    """The test images and masks in one of the accepted layouts; refuses missing masks and mismatched sizes."""
    root = Path(test).expanduser()
    if not root.is_dir():
        msg = f"{root}: --test does not exist or is not a folder; give {LAYOUTS_HELP}"
        raise AnogenInputError(msg)
    if category is not None:
        folder = root / category
        if not (folder / "test").is_dir():
            found = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
            where = f"; categories there: {', '.join(found)}" if found else "; it holds no MVTec AD category"
            msg = f"--category {category}: no such category under {root} (no {folder}/test){where}"
            raise AnogenInputError(msg)
        return _mvtec(folder)
    if (root / "test").is_dir():
        return _mvtec(root)
    if (root / abnormal_dir).is_dir():
        return _folder(root, abnormal_dir, mask_dir, normal_test_dir)
    found = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    if found:
        msg = f"{root} is an MVTec AD root: add --category (one of {', '.join(found)})"
        raise AnogenInputError(msg)
    msg = f"{root}: not a test set (no test/, no {abnormal_dir}/); give {LAYOUTS_HELP}"
    raise AnogenInputError(msg)


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(is_ignored(Path(part)) for part in p.relative_to(folder).parts)
    )


def _mvtec(folder: Path) -> TestSet:
    test, truth = folder / "test", folder / "ground_truth"
    defects = sorted(p for p in test.iterdir() if p.is_dir() and not is_ignored(p) and p.name != NORMAL_FOLDER)
    if not defects:
        msg = f"{test}: no anomalous test images (expected test/<defect>/ folders besides test/{NORMAL_FOLDER})"
        raise AnogenInputError(msg)
    if not truth.is_dir():
        msg = (
            f"{folder}: the test set has no masks (no ground_truth/ folder); each test/<defect>/<name>.png needs "
            "ground_truth/<defect>/<name>_mask.png"
        )
        raise AnogenInputError(msg)
    images = (
        [TestImage(path, None, anomalous=False) for path in _images(test / NORMAL_FOLDER)]
        if (test / NORMAL_FOLDER).is_dir()
        else []
    )
    for defect in defects:
        images += _paired(defect, truth / defect.name, suffixes=("_mask",))
    return _checked(TestSet(folder=folder, layout="MVTec AD", images=images))


def _folder(root: Path, abnormal_dir: str, mask_dir: str, normal_test_dir: str | None) -> TestSet:
    masks = root / mask_dir
    if not masks.is_dir():
        msg = (
            f"{root}: the test set has no masks (no {mask_dir}/ folder); each {abnormal_dir}/<name>.png needs "
            f"{mask_dir}/<name>_mask.png (--mask_dir names another folder)"
        )
        raise AnogenInputError(msg)
    images = []
    if normal_test_dir is not None and (root / normal_test_dir).is_dir():
        images = [TestImage(path, None, anomalous=False) for path in _images(root / normal_test_dir)]
    images += _paired(root / abnormal_dir, masks, suffixes=("_mask", ""))
    return _checked(TestSet(folder=root, layout="Folder", images=images))


def _paired(image_folder: Path, mask_folder: Path, suffixes: tuple[str, ...]) -> list[TestImage]:
    """Each image of ``image_folder`` with its mask at the same relative path; refuses orphans on either side."""
    images = _images(image_folder)
    masks = _images(mask_folder) if mask_folder.is_dir() else []
    by_key = {(m.parent.relative_to(mask_folder), m.stem): m for m in masks}
    paired, used = [], set()
    for image in images:
        relative = image.parent.relative_to(image_folder)
        mask = next(
            (by_key[(relative, image.stem + s)] for s in suffixes if (relative, image.stem + s) in by_key), None
        )
        if mask is None:
            expected = mask_folder / relative / f"{image.stem}{suffixes[0]}.png"
            msg = f"{image}: the anomalous test image has no mask (expected {expected})"
            raise AnogenInputError(msg)
        used.add(mask)
        paired.append(TestImage(image, mask, anomalous=True))
    orphans = [m for m in masks if m not in used]
    if orphans:
        msg = f"{orphans[0]}: a mask without its test image in {image_folder} ({len(orphans)} such masks)"
        raise AnogenInputError(msg)
    return paired


def _checked(test_set: TestSet) -> TestSet:
    if not test_set.anomalous:
        msg = f"{test_set.folder}: no anomalous test images with masks; pixel metrics need some"
        raise AnogenInputError(msg)
    for item in test_set.images:
        if item.mask is not None:
            image, mask = _size(item.image), _size(item.mask)
            if image != mask:
                msg = f"{item.mask}: the mask is {_wh(mask)}, its image {item.image} is {_wh(image)}"
                raise AnogenInputError(msg)
    return test_set


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        msg = f"{path}: not a readable image ({error})"
        raise AnogenInputError(msg) from error


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]} px"


# ----------------------------------------------------------------------------------------------------------------
# Pixels


def image_array(path: Path, size: int) -> np.ndarray:
    """An image as ``3 x size x size`` uint8 (bilinear)."""
    image = load_rgb(path)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1).copy()


def mask_array(path: Path | None, size: int) -> np.ndarray:
    """A mask as ``size x size`` bool (nearest neighbour); ``None``: all normal."""
    if path is None:
        return np.zeros((size, size), dtype=bool)
    mask = load_mask_array(path)
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST))
        mask = mask > 127
    return mask
