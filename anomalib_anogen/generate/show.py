"""``anogen show``: a contact sheet of a bank, so that a person can judge it at a glance.

Per defect type, a title strip and then one row per shown record: the normal source | the generated image
with its box outlined (and, for a bank made with ``--placement``, the defect's placement region as a faint outline)
| the box mask. Every cell is ``cell x cell`` pixels, so the sheet is
``3 * cell`` wide and ``defects * (TITLE + rows * cell)`` high, where ``rows`` is ``min(per_defect, records)``.
A record the quality gate rejected (docs/quality.md) is crossed out in red on its generated image.
An unfinished bank (``bank.json``: ``complete: false``) gets a warning and one more strip on top,
``INCOMPLETE: <n> of <total> records``.

``--worst N`` shows, per defect type, the N records the gate likes least (largest
:func:`~anomalib_anogen.generate.quality.badness`: at least 1 is rejected) instead, each row under a caption strip
with (for a rejected one, on red) what it was rejected for, its measures and its id; the sheet is then
``defects * (TITLE + rows * (TITLE + cell))`` high.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from anomalib_anogen.core.checks import MAX_CELL, SEEDS, at_least, between, check_number
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import make_folder, png_bytes, remove_created, write_atomic
from anomalib_anogen.data.bank import BankError, BankRecord, load_bank
from anomalib_anogen.generate.bank_writer import read_summary

logger = logging.getLogger(__name__)

TITLE = 20  # pixels of the strip that names each defect type (and, with --worst, captions each row)
OUTLINE = (255, 32, 32)
REJECTED_COLOUR = (140, 0, 0)  # --worst: the caption strip of a rejected record
CROSS = (255, 0, 0)  # the cross over a rejected record's generated image
INCOMPLETE_COLOUR = (160, 0, 0)
REGION_COLOUR = (64, 224, 255)  # the placement region's outline, drawn at REGION_OPACITY
REGION_OPACITY = 0.45


def _cell(path: Path, cell: int, grey: bool = False) -> np.ndarray:
    image = Image.open(path).convert("L" if grey else "RGB")
    resample = Image.Resampling.NEAREST if grey else Image.Resampling.BILINEAR
    array = np.asarray(image.resize((cell, cell), resample))
    return np.repeat(array[..., None], 3, axis=2) if grey else array.copy()


def _outlined(record: BankRecord, cell: int, region: np.ndarray | None = None) -> np.ndarray:
    """The generated image with the box's outline (traced from the mask file) and the placement region drawn in."""
    image = _cell(record.image, cell)
    if region is not None:
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        lines = image.copy()
        cv2.drawContours(lines, contours, -1, REGION_COLOUR, 1)
        image = cv2.addWeighted(lines, REGION_OPACITY, image, 1 - REGION_OPACITY, 0)
    mask = _cell(record.mask, cell, grey=True)[..., 0]
    contours, _ = cv2.findContours((mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, OUTLINE, 1)
    return image


@dataclass
class ShowOptions:
    """Write a contact sheet of a bank: per defect type, rows of normal source | generated with box | mask.

    Args:
        bank: Bank folder made by `anogen generate`.
        output: PNG file to write.
        per_defect: Records shown per defect type (the first ones in the manifest, or a random pick with --seed).
        cell: Side of each image cell in pixels (8 to 1024).
        seed: Pick the shown records at random with this seed instead of taking the first ones.
        worst: Show the N >= 1 records per defect type that the quality gate likes least, each with its measures
            and, if rejected, why (instead of --per_defect; measured now if the bank has no measures).
    """

    bank: str
    output: str = "sheet.png"
    per_defect: int = 4
    cell: int = 128
    seed: int | None = None
    worst: int | None = None

    def __post_init__(self) -> None:
        """The ranges (before the bank is read)."""
        check_number("--per_defect", self.per_defect, at_least(1))
        check_number("--cell", self.cell, between(8, MAX_CELL), "pixels")
        if self.seed is not None:
            check_number("--seed", self.seed, SEEDS)
        if self.worst is not None:
            check_number("--worst", self.worst, at_least(1), "records per defect type")
            if self.seed is not None:
                msg = "--worst and --seed exclude each other (--worst picks the records by their measures)"
                raise AnogenInputError(msg)


def show(options: ShowOptions) -> Path:
    """Write the contact sheet of ``options.bank`` to ``options.output``; returns its path."""
    bank, output, per_defect, cell, seed = options.bank, options.output, options.per_defect, options.cell, options.seed
    path = Path(output).expanduser()
    if path.is_dir():
        msg = f"{path}: --output is a folder; give the PNG file to write"
        raise AnogenInputError(msg)
    try:
        records = load_bank(bank)
    except BankError as error:
        raise AnogenInputError(str(error).removeprefix("bank_dir: ")) from error
    incomplete = _incomplete(Path(bank).expanduser(), len(records))
    regions = _regions(Path(bank).expanduser(), cell)
    judged = _judged(Path(bank).expanduser(), records) if options.worst else None
    by_defect: dict[str, list[BankRecord]] = {}
    for record in records:
        by_defect.setdefault(record.defect, []).append(record)
    blocks = [_strip(incomplete, 3 * cell, INCOMPLETE_COLOUR)] if incomplete else []
    for defect in sorted(by_defect):
        chosen = by_defect[defect]
        if judged is not None:
            chosen = sorted(chosen, key=lambda r: -judged[r.record_id][0])[: options.worst]
        else:
            if seed is not None and len(chosen) > per_defect:
                chosen = random.Random(f"{seed}:{defect}").sample(chosen, per_defect)
            chosen = chosen[:per_defect]
        rows = []
        for r in chosen:
            rejected = judged[r.record_id][1] if judged is not None else r.rejected_for
            generated = _outlined(r, cell, regions.get(defect))
            if rejected:
                _cross(generated)
            row = np.concatenate([_cell(r.source, cell), generated, _cell(r.mask, cell, grey=True)], axis=1)
            if judged is not None:
                quality = judged[r.record_id][2]
                row = np.concatenate([_caption(r.record_id, quality, rejected, 3 * cell), row], axis=0)
            rows.append(row)
        title = f"{defect} ({len(by_defect[defect])}"
        rejected_count = sum(bool(judged[r.record_id][1]) if judged else r.rejected for r in by_defect[defect])
        title += f", {rejected_count} rejected)" if rejected_count else ")"
        if judged is not None:
            title += f" - the {len(chosen)} worst"
        blocks.append(np.concatenate([_strip(title, 3 * cell), *rows], axis=0))
    sheet = np.concatenate(blocks, axis=0)
    created = make_folder(path.parent, "--output")
    try:
        write_atomic(path, png_bytes(sheet))
    except OSError as error:
        remove_created(created)
        msg = f"{path}: cannot write the contact sheet ({error.strerror or error})"
        raise AnogenInputError(msg) from error
    logger.info("%s: %d defect types, %dx%d px", path, len(by_defect), sheet.shape[1], sheet.shape[0])
    return path


def _cross(image: np.ndarray) -> None:
    """Cross ``image`` out in red (in place): the quality gate rejected its record."""
    side = image.shape[0] - 1
    thickness = max(1, image.shape[0] // 64)
    cv2.line(image, (0, 0), (side, side), CROSS, thickness)
    cv2.line(image, (0, side), (side, 0), CROSS, thickness)


def _caption(record_id: str, quality: dict, rejected: tuple[str, ...], width: int) -> np.ndarray:
    """A row's caption under --worst: on red what the record was rejected for, its measures, its id."""
    names = {"visibility": "vis", "on_object": "on", "leak": "leak"}
    measures = "  ".join(f"{short} {float(quality.get(name, 0.0)):.2f}" for name, short in names.items())
    verdict = f"REJECTED {', '.join(rejected)}  " if rejected else ""
    text = f"{verdict}{measures}  {record_id}"
    return _strip(text, width, REJECTED_COLOUR if rejected else (48, 48, 48))


def _judged(bank: Path, records: list[BankRecord]) -> dict[str, tuple[float, tuple[str, ...], dict]]:
    """Per record id: its badness, what it was rejected for and its measures (measured now where not recorded)."""
    from anomalib_anogen.generate.quality import badness

    recorded = _recorded_limits(bank)
    if recorded is not None and all(r.quality is not None for r in records):
        return {
            r.record_id: (badness(r.quality or {}, recorded[r.defect]), r.rejected_for, r.quality or {})
            for r in records
        }
    from anomalib_anogen.generate.check import measure_bank

    logger.info("%s: measuring the records' quality (the bank records none, or not for every record)", bank)
    result = measure_bank(bank)
    limits = {defect: result.gate.limits(defect).describe() for defect in result.gate.references}
    return {
        key: (badness(value["quality"], limits[value["defect"]]), tuple(value["rejected_for"]), value["quality"])
        for key, value in result.records.items()
    }


def _recorded_limits(bank: Path) -> dict[str, dict] | None:
    """Each defect's limits as quality.json (if any) or bank.json records them, or ``None``."""
    import json

    from anomalib_anogen.data.bank import QUALITY_NAME

    for source in (bank / QUALITY_NAME, bank / "bank.json"):
        try:
            data = json.loads(source.read_text())
            defects = data["quality"]["defects"]
            return {name: entry["limits"] for name, entry in defects.items()}
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
    return None


def _regions(bank: Path, cell: int) -> dict[str, np.ndarray]:
    """Each defect's placement region at ``cell x cell`` (bool), for a bank made with ``--placement``."""
    from anomalib_anogen.generate.placement import read_template

    placement = ((read_summary(bank) or {}).get("settings") or {}).get("placement")
    if not isinstance(placement, dict):
        return {}
    regions = {}
    for defect, template in (placement.get("templates") or {}).items():
        try:
            mask = read_template(Path(template["file"]))
        except (AnogenInputError, KeyError, TypeError) as error:
            logger.warning("%s: placement region of %s not drawn (%s)", bank, defect, error)
            continue
        image = Image.fromarray(mask.astype(np.uint8) * 255).resize((cell, cell), Image.Resampling.NEAREST)
        regions[defect] = np.asarray(image) > 0
    return regions


def _strip(text: str, width: int, background: tuple[int, int, int] = (24, 24, 24)) -> np.ndarray:
    """A ``TITLE`` pixels high strip with ``text`` in white."""
    title = Image.new("RGB", (width, TITLE), background)
    ImageDraw.Draw(title).text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(title)


def _incomplete(bank: Path, shown: int) -> str | None:
    """``INCOMPLETE: n of total records`` for a bank whose bank.json says ``complete: false`` (with a warning)."""
    summary = read_summary(bank) or {}
    if summary.get("complete") is not False:
        return None
    settings = summary.get("settings") or {}
    try:
        total = int(settings["sources"]) * len(settings["defects"]) * int(settings["per_image"])
    except (KeyError, TypeError, ValueError):
        total = None
    of = f" of {total}" if total is not None else ""
    logger.warning(
        "%s: unfinished bank (bank.json says complete: false): %d%s records; the sheet shows those and says so "
        "in its first line. Finish it with the same `anogen generate` command and --resume true",
        bank,
        shown,
        of,
    )
    return f"INCOMPLETE: {shown}{of} records"
