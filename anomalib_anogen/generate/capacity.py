"""Whether a bank fits its disk: the bytes it will need, estimated before any work, against the free space.

The estimate is the first normal image encoded as a PNG at the output size (a generated image is the normal one
with a defect in a box, so its PNG is about as large), a box mask's PNG and a manifest line per record still to
make, the resized copies of the normal images, and room for the manifest's final rewrite; times
:data:`~anomalib_anogen.core.checks.DISK_MARGIN`. A run that would not fit is refused (a machine fault, exit 74)
before the bank is touched, naming both numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_anogen.core.checks import DISK_MARGIN
from anomalib_anogen.core.errors import AnogenFaultError
from anomalib_anogen.core.files import free_bytes, human_bytes, png_bytes, size_of
from anomalib_anogen.core.images import load_rgb
from anomalib_anogen.data.bank import MANIFEST_NAME
from anomalib_anogen.generate.bank_writer import BANK_PARTS
from anomalib_anogen.generate.work import NormalImage

MANIFEST_LINE = 1024  # bytes of one manifest record, at most about (a record with --placement is ~900)
FIXED = 64 * 1024  # bank.json and the file system's own blocks for a few folders


def _png_sizes(normal: NormalImage, resolution: int) -> tuple[int, int]:
    """PNG bytes of the first normal image at the output size, and of a box mask a quarter of the side wide."""
    image = load_rgb(normal.path)
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    mask = np.zeros((resolution, resolution), np.uint8)
    quarter = max(1, resolution // 4)
    mask[quarter : 2 * quarter, quarter : 2 * quarter] = 255
    return len(png_bytes(np.asarray(image))), len(png_bytes(mask))


def _recorded(output: Path) -> int:
    """Lines in an existing manifest: what a resume does not make again.

    A torn line counts too: a slight under-estimate of the work left, which the margin covers.
    """
    manifest = output / MANIFEST_NAME
    if not manifest.is_file() or manifest.is_symlink():
        return 0
    with manifest.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def estimate_bank_bytes(normals: list[NormalImage], resolution: int, records: int, left: int) -> tuple[int, int]:
    """``(bytes the run will write, bytes per record)`` for ``left`` of ``records`` records still to make."""
    image, mask = _png_sizes(normals[0], resolution)
    per_record = image + mask + MANIFEST_LINE
    copies = sum(n.size != (resolution, resolution) for n in normals) * image
    total = left * per_record + copies + records * MANIFEST_LINE + FIXED
    return int(total * DISK_MARGIN), per_record


def check_disk(output: Path, normals: list[NormalImage], resolution: int, records: int, mode: str) -> None:
    """Refuse (:class:`AnogenFaultError`) a run whose bank would not fit the free space of ``output``'s disk.

    ``mode`` is what happens to the bank (``new``, ``resume``, ``overwrite``): a resume makes only the records that
    its manifest lacks, an overwrite frees what the old bank holds first.
    """
    left = max(0, records - _recorded(output)) if mode == "resume" else records
    need, per_record = estimate_bank_bytes(normals, resolution, records, left)
    free = free_bytes(output)
    if mode == "overwrite":
        free += size_of([output / name for name in BANK_PARTS])
    if need <= free:
        return
    msg = (
        f"{output}: the bank needs about {human_bytes(need)} ({left} records x {human_bytes(per_record)}, estimated "
        f"from the first normal image as a PNG at {resolution} px, plus {DISK_MARGIN - 1:.0%}) but its file system "
        f"has {human_bytes(free)} free; free space or choose another --output, or make fewer records (--per_image, "
        "--max_images, --defects)"
    )
    raise AnogenFaultError(msg)
