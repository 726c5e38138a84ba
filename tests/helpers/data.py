"""The real data beside the checkout (paths and skip markers) and the toy inputs the tests write themselves."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from anomalib_anogen.data.toy import DEFECT_TYPES, make_toy_category

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
BOTTLE = SHARED / "MVTecAD" / "bottle"
DTD = SHARED / "dtd" / "images"
SUPPORT_BOTTLE = SHARED / "support" / "bottle"
RELEASED_EMBEDDINGS = SHARED / "anogen_reference" / "released_embeddings"


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    key = f"benchmarks.{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def needs_shared_bottle() -> pytest.MarkDecorator:
    """Skip (with the reason) when ../shared/data/MVTecAD/bottle is not beside the checkout."""
    return pytest.mark.skipif(
        not (BOTTLE / "train" / "good").is_dir(),
        reason=f"real MVTec AD bottle not found at {BOTTLE} (../shared/data beside the checkout)",
    )


def needs_shared_support() -> pytest.MarkDecorator:
    """Skip (with the reason) when the 3-shot bottle support set is not in ../shared/data/support/bottle."""
    return pytest.mark.skipif(
        not (SUPPORT_BOTTLE / "broken_large").is_dir(),
        reason=f"bottle support set not found at {SUPPORT_BOTTLE} (../shared/data beside the checkout)",
    )


def needs_released_embeddings() -> pytest.MarkDecorator:
    """Skip (with the reason) when the authors' released embeddings are not in ../shared/data."""
    return pytest.mark.skipif(
        not (RELEASED_EMBEDDINGS / "bottle_broken_large.pt").is_file(),
        reason=f"released AnoGen embeddings not found at {RELEASED_EMBEDDINGS} (../shared/data beside the checkout)",
    )


CATEGORY = "toy_bottle"


def write_support(toy_root: Path, folder: Path, mask_side: int | None = None) -> Path:
    """The toy category's anomalies in the support layout (``<defect>/<name>.png`` with ``<name>_mask.png``)."""
    for defect in DEFECT_TYPES:
        (folder / defect).mkdir(parents=True)
        for image in sorted((toy_root / CATEGORY / "test" / defect).glob("*.png")):
            mask = Image.open(toy_root / CATEGORY / "ground_truth" / defect / f"{image.stem}_mask.png")
            if mask_side is not None:
                mask = mask.resize((mask_side, mask_side), Image.Resampling.NEAREST)
            Image.open(image).save(folder / defect / image.name)
            mask.save(folder / defect / f"{image.stem}_mask.png")
    return folder


def toy_inputs(toy_root: Path, folder: Path) -> dict[str, str]:
    """The toy category as generate's inputs, written under ``folder``: normal folder, support set and box priors."""
    priors = folder / "toy_priors.json"
    priors.write_text(json.dumps({defect: [[0.1, 0.3], [0.1, 0.3], True] for defect in DEFECT_TYPES}))
    support = write_support(toy_root, folder / "support")
    return {"normal": str(toy_root / CATEGORY / "train" / "good"), "support": str(support), "priors": str(priors)}


def all_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), to compare two outputs byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# The toy defect drawn under each of bottle's defect names by :func:`toy_bottle`.
AS_BOTTLE_DEFECTS = {"blob": "broken_large", "scratch": "broken_small", "spot": "contamination"}


def toy_bottle(folder: Path, size: int = 64, images: int = 4) -> tuple[Path, Path]:
    """A toy stand-in for MVTec AD bottle under ``folder``; returns its normal folder and its support set.

    The category folder is named ``bottle``, so the shipped bottle box priors apply, and the support set has
    bottle's defect names (``broken_large`` ...), each drawn as one of the toy's defects: what the generation
    tests need of the real bottle, without ../shared.
    """
    root = make_toy_category(folder, "bottle", size=size, n_train=images, n_test_good=1, n_test_per_defect=2)
    support = folder / "support"
    for toy, name in AS_BOTTLE_DEFECTS.items():
        (support / name).mkdir(parents=True)
        for image in sorted((root / "test" / toy).glob("*.png")):
            shutil.copy(image, support / name / image.name)
            shutil.copy(root / "ground_truth" / toy / f"{image.stem}_mask.png", support / name)
    return root / "train" / "good", support


def int8_calibration_data(toy_root: Path, size: tuple[int, int]) -> object:
    """The toy category with INT8_PTQ's calibration (val) split taken from the normal training images, batch 1."""
    from anomalib.data import MVTecAD
    from torchvision.transforms.v2 import Resize

    return MVTecAD(
        root=toy_root,
        category="toy_bottle",
        eval_batch_size=1,
        num_workers=0,
        val_split_mode="from_train",
        val_split_ratio=0.5,
        augmentations=Resize(size),  # calibration images must have the export's fixed input size
    )
