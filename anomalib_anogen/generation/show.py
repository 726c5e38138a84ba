"""``anogen show``: a contact sheet of a bank, so that a person can judge it at a glance.

Per defect type, a title strip and then one row per shown record: the normal source | the generated image
with its box outlined | the box mask. Every cell is ``cell x cell`` pixels, so the sheet is
``3 * cell`` wide and ``defects * (TITLE + rows * cell)`` high, where ``rows`` is ``min(per_defect, records)``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from anomalib_anogen.data.bank import BankError, BankRecord, load_bank
from anomalib_anogen.generation.bank_writer import png_bytes, write_atomic
from anomalib_anogen.generation.errors import AnogenInputError

logger = logging.getLogger(__name__)

TITLE = 20  # pixels of the strip that names each defect type
OUTLINE = (255, 32, 32)


def _cell(path: Path, cell: int, grey: bool = False) -> np.ndarray:
    image = Image.open(path).convert("L" if grey else "RGB")
    resample = Image.Resampling.NEAREST if grey else Image.Resampling.BILINEAR
    array = np.asarray(image.resize((cell, cell), resample))
    return np.repeat(array[..., None], 3, axis=2) if grey else array.copy()


def _outlined(record: BankRecord, cell: int) -> np.ndarray:
    """The generated image with the box's outline (traced from the mask file) drawn in."""
    image = _cell(record.image, cell)
    mask = _cell(record.mask, cell, grey=True)[..., 0]
    contours, _ = cv2.findContours((mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, OUTLINE, 1)
    return image


def show(bank: str, output: str = "sheet.png", per_defect: int = 4, cell: int = 128, seed: int | None = None) -> Path:
    """Write a contact sheet of a bank: per defect type, rows of normal source | generated with box | mask.

    Args:
        bank: Bank folder made by `anogen generate`.
        output: PNG file to write.
        per_defect: Records shown per defect type (the first ones in the manifest, or a random pick with --seed).
        cell: Side of each image cell in pixels.
        seed: Pick the shown records at random with this seed instead of taking the first ones.
    """
    if per_defect < 1 or cell < 8:
        raise AnogenInputError(f"--per_defect must be at least 1 and --cell at least 8 (got {per_defect}, {cell})")
    try:
        records = load_bank(bank)
    except BankError as error:
        raise AnogenInputError(str(error).removeprefix("bank_dir: ")) from error
    by_defect: dict[str, list[BankRecord]] = {}
    for record in records:
        by_defect.setdefault(record.defect, []).append(record)
    blocks = []
    for defect in sorted(by_defect):
        chosen = by_defect[defect]
        if seed is not None and len(chosen) > per_defect:
            chosen = random.Random(f"{seed}:{defect}").sample(chosen, per_defect)
        chosen = chosen[:per_defect]
        title = Image.new("RGB", (3 * cell, TITLE), (24, 24, 24))
        ImageDraw.Draw(title).text((4, 4), f"{defect} ({len(by_defect[defect])})", fill=(255, 255, 255))
        rows = [
            np.concatenate([_cell(r.source, cell), _outlined(r, cell), _cell(r.mask, cell, grey=True)], axis=1)
            for r in chosen
        ]
        blocks.append(np.concatenate([np.asarray(title), *rows], axis=0))
    sheet = np.concatenate(blocks, axis=0)
    path = Path(output).expanduser()
    write_atomic(path, png_bytes(sheet))
    logger.info("%s: %d defect types, %dx%d px", path, len(blocks), sheet.shape[1], sheet.shape[0])
    return path
