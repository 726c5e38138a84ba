"""Reading an AnoGen anomaly bank: generated anomalies, their box masks and their normal sources.

Layout (written by ``anogen generate``)::

    bank/images/<defect>/<id>.png        generated anomalous image
    bank/masks/<defect>/<id>_mask.png    its box, 0/255
    bank/manifest.jsonl                  one JSON record per image (id, defect, source, hashes, box, quality, ...)
    bank/bank.json                       summary and settings
    bank/quality.json                    optional: measures and verdicts of `anogen check --write true`

A record the quality gate rejected (``rejected: true``, docs/quality.md) stays in the bank, for ``anogen show``
to show; training skips it. ``quality.json``'s verdict on a record overrides the manifest's when it was made on
the same image file (its ``image_sha256``).

A record's ``source`` is the normal image the anomaly was generated from: a detector must
reconstruct *that* image, so the pairing is kept through every resize and rotation.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from anomalib_anogen.core.errors import AnogenInputError

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "bank.json"
QUALITY_NAME = "quality.json"  # `anogen check --write true`: measures and verdicts of the bank's current files
HOW_TO_MAKE = (
    "Make one with `anogen generate --normal <normal images> --embeddings <learned embeddings> --output <bank>` "
    "(or `--backend paste --support <support set>` without model weights); see docs/generate.md."
)


class BankError(AnogenInputError):
    """A missing, empty, malformed or (for training) unfinished anomaly bank."""


@dataclass(frozen=True)
class BankRecord:
    """One generated anomaly of a bank."""

    record_id: str
    defect: str
    image: Path
    mask: Path
    source: Path
    quality: dict | None = None  # the measures (visibility, on_object, leak, ...), when the bank has them
    rejected_for: tuple[str, ...] = ()  # the measures the quality gate rejected it for; empty: accepted

    @property
    def rejected(self) -> bool:
        """Whether the quality gate rejected this record (training skips it)."""
        return bool(self.rejected_for)


def read_verdicts(bank_dir: Path) -> dict[str, dict]:
    """``quality.json``'s verdicts per record id (``{}`` without the file); a malformed file is a ``BankError``."""
    file = bank_dir / QUALITY_NAME
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        records = data["records"]
        if not isinstance(records, dict) or not all(isinstance(v, dict) for v in records.values()):
            problem = "records must map ids to objects"
            raise TypeError(problem)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        msg = f"bank_dir: {file} cannot be read ({error}). Write it again with `anogen check {bank_dir} --write true`."
        raise BankError(msg) from error
    return records


def _verdict(entry: dict, verdicts: dict[str, dict]) -> tuple[dict | None, tuple[str, ...]]:
    """A record's measures and rejection reasons: quality.json's for the same image file, else the manifest's."""
    found = verdicts.get(str(entry.get("id")))
    if found is not None and found.get("image_sha256") == entry.get("image_sha256"):
        entry = found
    quality = entry.get("quality") if isinstance(entry.get("quality"), dict) else None
    reasons = tuple(str(r) for r in entry.get("rejected_for") or ())
    if entry.get("rejected") and not reasons:
        reasons = ("rejected",)
    return quality, reasons if entry.get("rejected") else ()


def image_path(bank_dir: Path, defect: str, record_id: str) -> Path:
    """Where a record's generated image lives."""
    return bank_dir / "images" / defect / f"{record_id}.png"


def mask_path(bank_dir: Path, defect: str, record_id: str) -> Path:
    """Where a record's box mask lives (``_mask`` suffix, as anomalib's Folder datamodule expects)."""
    return bank_dir / "masks" / defect / f"{record_id}_mask.png"


def load_bank(bank_dir: Path | str, exclude_defects: list[str] | tuple[str, ...] = ()) -> list[BankRecord]:
    """Read and check a bank's manifest; raise ``BankError`` naming the problem and how to make a bank.

    Every file a record names must exist: a bank whose images were moved or deleted fails here,
    when training starts (the generator is built), not in the middle of training.
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
    verdicts = read_verdicts(bank_dir)
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
            quality, rejected_for = _verdict(entry, verdicts)
            record = BankRecord(
                record_id=record_id,
                defect=defect,
                image=image_path(bank_dir, defect, record_id),
                mask=mask_path(bank_dir, defect, record_id),
                source=source,
                quality=quality,
                rejected_for=rejected_for,
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


@dataclass(frozen=True)
class BankProgress:
    """How far an unfinished bank got: ``done`` records in its manifest of ``planned`` (``None``: not recorded)."""

    done: int
    planned: int | None

    def describe(self) -> str:
        """``"10 of 96 records"`` (or ``"10 records"`` when the plan is unknown)."""
        return f"{self.done} of {self.planned} records" if self.planned is not None else f"{self.done} records"


def _manifest_records(manifest: Path) -> int:
    """Records in a manifest, not counting a line torn by a crash."""
    count = 0
    if manifest.is_file():
        for line in manifest.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                count += isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                continue
    return count


def unfinished_bank(bank_dir: Path | str) -> BankProgress | None:
    """``None`` for a finished bank; how far it got when its ``bank.json`` says ``complete: false``.

    ``anogen generate`` writes ``bank.json`` with ``complete: false`` before its first record and sets it
    to ``true`` when every planned record is written; a bank without ``bank.json`` or without that key
    (made by other tools) counts as finished. A ``bank.json`` that cannot be read is an error.
    """
    bank_dir = Path(bank_dir).expanduser()
    summary_file = bank_dir / SUMMARY_NAME
    if not summary_file.is_file():
        return None
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        msg = f"bank_dir: {summary_file} cannot be read ({error}). Regenerate the bank. {HOW_TO_MAKE}"
        raise BankError(msg) from error
    if not isinstance(summary, dict) or summary.get("complete", True) is not False:
        return None
    settings = summary.get("settings")
    planned = None
    if isinstance(settings, dict):
        sources, defects, per_image = settings.get("sources"), settings.get("defects"), settings.get("per_image")
        if isinstance(sources, int) and isinstance(defects, list) and isinstance(per_image, int):
            planned = sources * len(defects) * per_image
    return BankProgress(done=_manifest_records(bank_dir / MANIFEST_NAME), planned=planned)


def unfinished_bank_error(bank_dir: Path | str, progress: BankProgress) -> BankError:
    """The error that stops training on an unfinished bank: which bank, how far it got, and the two ways on."""
    return BankError(
        f"bank_dir: anomaly bank '{bank_dir}' is unfinished (bank.json says complete: false): "
        f"{progress.describe()} were generated. Finish it by running the `anogen generate` command that made it "
        "again with `--resume true`, or set allow_incomplete_bank: true (--model.allow_incomplete_bank true) "
        f"to train on the {progress.done} finished records."
    )
