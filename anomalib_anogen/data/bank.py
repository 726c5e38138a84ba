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

A bank is not trusted because its files exist: :func:`load_bank` reads every path a record names only inside the
bank (a record's id and defect are plain names; its source lies in the bank or in the normal image folder that
``bank.json`` records), and decodes every image and mask, each source once, before training starts; a record that
names a file outside, or a file that is not an image (truncated, too large), is refused naming the file.
"""

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import UnidentifiedImageError

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.images import ImageTooLargeError, check_pixels

MANIFEST_NAME = "manifest.jsonl"
DECODE_THREADS = 8  # threads that decode a bank's files when it is checked (at most the machine's CPUs)
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


REGENERATE = (
    "Regenerate the bank (`anogen generate ... --resume true` makes again every record whose files differ from "
    "the manifest) or restore the moved files."
)
TAMPERED = "This manifest was not written by `anogen generate` (or was edited): regenerate the bank. " + HOW_TO_MAKE


def _plain_name(value: str) -> bool:
    """A name that is one path component: not empty, not ``.`` or ``..``, without a separator or NUL."""
    return value not in ("", ".", "..") and not any(char in value for char in "/\\\0")


def _source_roots(bank_dir: Path) -> list[Path]:
    """Where a record's source may lie: the bank, and the normal image folder that its ``bank.json`` records."""
    roots = [bank_dir.resolve()]
    try:
        settings = json.loads((bank_dir / SUMMARY_NAME).read_text(encoding="utf-8")).get("settings") or {}
        normal = settings.get("normal") if isinstance(settings, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        normal = None
    if isinstance(normal, str) and Path(normal).is_absolute():
        roots.append(Path(normal).resolve())
    return roots


def _undecodable(path: Path) -> str | None:
    """Why ``path`` is not an image that training can read (``None`` when it decodes).

    Its header is read first, so an image too large is refused before it is decoded.
    """
    try:
        with check_pixels(path) as image:
            image.load()
    except ImageTooLargeError as error:
        return str(error).removeprefix(f"{path}: ")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        return str(error) or type(error).__name__
    return None


def load_bank(
    bank_dir: Path | str, exclude_defects: list[str] | tuple[str, ...] = (), check_images: bool = True
) -> list[BankRecord]:
    """Read and check a bank's manifest; raise ``BankError`` naming the problem and how to make a bank.

    Every file a record names must exist, lie inside the bank (a source: or in the normal image folder that
    ``bank.json`` records) and, with ``check_images``, decode as an image: a bank whose images were moved,
    truncated or named outside it fails here, when training starts (the generator is built), not in the
    middle of training. The images are decoded on a few threads (PIL decodes without the GIL), each file once.
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
    roots = _source_roots(bank_dir)
    to_decode: dict[Path, str] = {}  # each file once (sources are shared), with how a message names its record
    with manifest.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"bank_dir: {manifest}, line {line_number}"
            if not line.endswith("\n") and not _is_json(line):  # torn by a run that stopped (a full disk) mid-line
                warnings.warn(f"{where} is torn (its run stopped while writing it): left out", UserWarning, 2)
                continue
            record = _record(line, where, bank_dir, verdicts)
            if record.defect in excluded:
                continue
            for kind, path in (("an image", record.image), ("a mask", record.mask), ("a source image", record.source)):
                resolved = _inside(path, kind, roots if kind == "a source image" else roots[:1], where, record)
                to_decode.setdefault(resolved, f"{where} (id {record.record_id}) names {kind}")
            records.append(record)
    if not records:
        detail = f" after excluding {sorted(excluded)}" if excluded else ""
        msg = f"bank_dir: anomaly bank '{bank_dir}' holds no anomalies{detail}. {HOW_TO_MAKE}"
        raise BankError(msg)
    if check_images:
        _check_decodes(to_decode)
    return records


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _record(line: str, where: str, bank_dir: Path, verdicts: dict[str, dict]) -> BankRecord:
    """One manifest line as a record whose id and defect are plain names (no path in them)."""
    try:
        entry = json.loads(line)
        record_id, defect, source = str(entry["id"]), str(entry["defect"]), Path(entry["source"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        msg = f"{where} is not a bank record ({error!r}). {HOW_TO_MAKE}"
        raise BankError(msg) from error
    for field, value in (("id", record_id), ("defect", defect)):
        if not _plain_name(value):
            msg = (
                f"{where}: {field} {value!r} is not a plain name (no '/', '\\', '..'); a record's files are "
                f"images/<defect>/<id>.png and masks/<defect>/<id>_mask.png inside the bank. {TAMPERED}"
            )
            raise BankError(msg)
    quality, rejected_for = _verdict(entry, verdicts)
    return BankRecord(
        record_id=record_id,
        defect=defect,
        image=image_path(bank_dir, defect, record_id),
        mask=mask_path(bank_dir, defect, record_id),
        source=source if source.is_absolute() else bank_dir / source,
        quality=quality,
        rejected_for=rejected_for,
    )


def _inside(path: Path, kind: str, roots: list[Path], where: str, record: BankRecord) -> Path:
    """``path`` resolved, once it is known to be a file under one of ``roots`` (links followed)."""
    if not path.is_file():
        msg = f"{where} (id {record.record_id}) names {kind} that does not exist: {path}. {REGENERATE}"
        raise BankError(msg)
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        inside = "inside the bank" + (f" or in its normal image folder {roots[1]}" if len(roots) > 1 else "")
        msg = (
            f"{where} (id {record.record_id}) names {kind} outside the bank: {path}"
            f"{f' (which is {resolved})' if resolved != path else ''}; "
            f"a record's files lie {inside}, never through a link to elsewhere. {TAMPERED}"
        )
        raise BankError(msg)
    return resolved


def _check_decodes(files: dict[Path, str]) -> None:
    """Decode every file on a few threads; the first that fails, in manifest order, is refused naming it."""
    with ThreadPoolExecutor(min(DECODE_THREADS, os.cpu_count() or 1)) as pool:
        problems = pool.map(_undecodable, files)
        for (path, named), problem in zip(files.items(), problems, strict=True):
            if problem is not None:
                pool.shutdown(wait=False, cancel_futures=True)
                msg = f"{named} that cannot be decoded: {path} ({problem}). {REGENERATE}"
                raise BankError(msg)


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
