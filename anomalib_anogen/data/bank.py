"""Reading an AnoGen anomaly bank: generated anomalies, their box masks and their normal sources.

Layout (written by ``anogen generate``)::

    bank/images/<defect>/<id>.png        generated anomalous image
    bank/masks/<defect>/<id>_mask.png    its box, 0/255
    bank/manifest.jsonl                  one JSON record per image (id, defect, source, hashes, box, ...)
    bank/bank.json                       summary and settings

A record's ``source`` is the normal image the anomaly was generated from: a detector must
reconstruct *that* image, so the pairing is kept through every resize and rotation.
"""

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "bank.json"
HOW_TO_MAKE = (
    "Make one with `anogen generate --normal <normal images> --embeddings <learned embeddings> --output <bank>` "
    "(or `--backend paste --support <support set>` without model weights); see docs/generate.md."
)


class BankError(ValueError):
    """A missing, empty or malformed anomaly bank."""


@dataclass(frozen=True)
class BankRecord:
    """One generated anomaly of a bank."""

    record_id: str
    defect: str
    image: Path
    mask: Path
    source: Path


def image_path(bank_dir: Path, defect: str, record_id: str) -> Path:
    """Where a record's generated image lives."""
    return bank_dir / "images" / defect / f"{record_id}.png"


def mask_path(bank_dir: Path, defect: str, record_id: str) -> Path:
    """Where a record's box mask lives (``_mask`` suffix, as anomalib's Folder datamodule expects)."""
    return bank_dir / "masks" / defect / f"{record_id}_mask.png"


def load_bank(bank_dir: Path | str, exclude_defects: list[str] | tuple[str, ...] = ()) -> list[BankRecord]:
    """Read and check a bank's manifest; raise ``BankError`` naming the problem and how to make a bank.

    Every file a record names must exist: a bank whose images were moved or deleted fails here,
    at model construction, not in the middle of training.
    """
    bank_dir = Path(bank_dir).expanduser()
    manifest = bank_dir / MANIFEST_NAME
    if not bank_dir.is_dir():
        msg = f"bank_dir: anomaly bank '{bank_dir}' does not exist. {HOW_TO_MAKE}"
        raise BankError(msg)
    if not manifest.is_file():
        msg = f"bank_dir: '{bank_dir}' is not an anomaly bank (no {MANIFEST_NAME}). {HOW_TO_MAKE}"
        raise BankError(msg)
    excluded = set(exclude_defects)
    records: list[BankRecord] = []
    with manifest.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                record_id, defect, source = str(entry["id"]), str(entry["defect"]), Path(entry["source"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                msg = f"bank_dir: {manifest}, line {line_number} is not a bank record ({error!r}). {HOW_TO_MAKE}"
                raise BankError(msg) from error
            if defect in excluded:
                continue
            if not source.is_absolute():
                source = bank_dir / source
            record = BankRecord(
                record_id=record_id,
                defect=defect,
                image=image_path(bank_dir, defect, record_id),
                mask=mask_path(bank_dir, defect, record_id),
                source=source,
            )
            for kind, path in (("an image", record.image), ("a mask", record.mask), ("a source image", record.source)):
                if not path.is_file():
                    msg = (
                        f"bank_dir: {manifest}, line {line_number} (id {record_id}) names {kind} that does not "
                        f"exist: {path}. Regenerate the bank (`anogen generate ... --resume` repairs an interrupted "
                        "one) or restore the moved files."
                    )
                    raise BankError(msg)
            records.append(record)
    if not records:
        detail = f" after excluding {sorted(excluded)}" if excluded else ""
        msg = f"bank_dir: anomaly bank '{bank_dir}' holds no anomalies{detail}. {HOW_TO_MAKE}"
        raise BankError(msg)
    return records
