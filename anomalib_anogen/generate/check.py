"""``anogen check``: the quality measures and the gate's verdicts for a bank made before, without rewriting it.

It reads the bank's manifest, images, masks and normal sources, measures every record as ``anogen generate`` does
(generate/quality.py), prints a table per defect type and, with ``--write true``, writes ``quality.json`` into the
bank (atomically): each record's measures and verdict, keyed by the sha256 of the image file measured. The
``anogen`` generator follows those verdicts (a record whose image changed since is judged by its manifest again).

The references (what visibility is relative to) come, in this order, from ``--support``; from ``bank.json``
(``quality``, written by ``anogen generate`` since the gate exists); from the support images a paste bank's records
name (``support_image``: their folder is read as a support set); else a fixed reference, with a warning. The limits
are ``--min_visibility`` etc., else those the bank was made with (``settings.quality``), else derived.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import sha256_bytes, write_atomic
from anomalib_anogen.data.bank import MANIFEST_NAME, QUALITY_NAME, BankError, BankRecord, load_bank
from anomalib_anogen.generate.bank_writer import read_summary
from anomalib_anogen.generate.quality import (
    MEASURES,
    QualityGate,
    Reference,
    check_limits,
    fixed_reference,
    measure,
    references_from_pairs,
    resize_region,
    summarize,
)

logger = logging.getLogger(__name__)

QUALITY_FORMAT = "anogen-quality/1"


@dataclass
class CheckOptions:
    """Measure the quality of an existing bank and judge it with the gate, without rewriting its images.

    Args:
        bank: Bank folder made by `anogen generate` (or a copy of one).
        support: Support set the references are measured on (default: those bank.json records, else the support
            images that a paste bank's records name, else a fixed reference).
        gate: Judge the records (false: measure only, reject nothing).
        min_visibility: Override of the visibility limit, >= 0 (default: the bank's own, else derived).
        min_on_object: Override of the on-object limit, 0 to 1 (default: the bank's own, else derived).
        max_leak: Override of the leak limit, >= 0 (default: the bank's own, else 0.1).
        write: Write the measures and verdicts to BANK/quality.json, which the `anogen` generator then follows.
    """

    bank: str
    support: str | None = None
    gate: bool = True
    min_visibility: float | None = None
    min_on_object: float | None = None
    max_leak: float | None = None
    write: bool = False

    def __post_init__(self) -> None:
        """The ranges (before the bank is read)."""
        check_limits(self.min_visibility, self.min_on_object, self.max_leak)


@dataclass
class CheckResult:
    """What :func:`check` found.

    Attributes:
        bank: The bank folder.
        gate: The gate used (its references and limits per defect type).
        records: Per record id: ``defect``, ``image_sha256``, ``quality``, ``rejected``, ``rejected_for``.
        summary: Per defect type: counts and the spread of each measure (:func:`~.quality.summarize`).
        references_from: Where the references came from.
    """

    bank: Path
    gate: QualityGate
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    references_from: str = ""

    def rejected(self) -> set[str]:
        """The ids of the records the gate rejected."""
        return {key for key, value in self.records.items() if value["rejected"]}

    def to_json(self) -> dict[str, Any]:
        """What ``quality.json`` holds."""
        return {
            "format": QUALITY_FORMAT,
            "references_from": self.references_from,
            "quality": self.gate.describe(),
            "summary": self.summary,
            "records": self.records,
        }


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _support_references(folder: Path, defects: list[str], resolution: int, foreground: str) -> dict[str, Reference]:
    from anomalib_anogen.data.support import discover_support, load_support

    found = discover_support(folder)
    found.pairs = {name: found.pairs[name] for name in found.defects if name in defects}
    return references_from_pairs(load_support(found), resolution, foreground)


def _recorded_references(summary: dict[str, Any], defects: list[str]) -> dict[str, Reference]:
    recorded = ((summary.get("quality") or {}).get("defects")) or {}
    references = {}
    for name in defects:
        try:
            references[name] = Reference.from_json(recorded[name]["reference"])
        except (KeyError, TypeError, ValueError):
            return {}
    return references


def _named_support(entries: list[dict[str, Any]]) -> Path | None:
    """The support folder of a paste bank: the parent of the defect folders of its records' ``support_image``."""
    roots = {Path(e["support_image"]).parent.parent for e in entries if isinstance(e.get("support_image"), str)}
    return roots.pop() if len(roots) == 1 else None


def references_for(
    bank: Path, summary: dict[str, Any], entries: list[dict[str, Any]], support: str | None, resolution: int
) -> tuple[dict[str, Reference], str]:
    """The references of every defect type of a bank and where they came from (see the module docstring)."""
    defects = sorted({str(e["defect"]) for e in entries})
    foreground = str((summary.get("settings") or {}).get("foreground", "border"))
    if support is not None:
        references, where = _support_references(Path(support).expanduser(), defects, resolution, foreground), support
    else:
        references, where = _recorded_references(summary, defects), f"{bank}/bank.json"
        named = _named_support(entries) if not references else None
        if named is not None:
            try:
                references, where = _support_references(named, defects, resolution, foreground), str(named)
            except AnogenInputError as error:
                logger.warning("%s: the support images the records name cannot be read (%s)", bank, error)
                references = {}
    missing = [name for name in defects if name not in references]
    if missing:
        logger.warning(
            "%s: no support anomalies of %s (pass --support): visibility measured against a fixed reference "
            "(ΔE %.0f), fixed limits (docs/quality.md)",
            bank,
            ", ".join(missing),
            fixed_reference().contrast,
        )
        references.update({name: fixed_reference() for name in missing})
        where = f"{where}; fixed for {', '.join(missing)}" if len(missing) < len(defects) else "fixed"
    return references, where


def _regions(summary: dict[str, Any], resolution: int) -> tuple[str, dict[str, np.ndarray], bool]:
    """The bank's foreground rule, its placement templates at ``resolution`` and whether they need the foreground."""
    from anomalib_anogen.generate.placement import read_template

    settings = summary.get("settings") or {}
    rule = str(settings.get("foreground", "border"))
    placement = settings.get("placement")
    if not isinstance(placement, dict):
        return rule, {}, True
    templates = {}
    for defect, template in (placement.get("templates") or {}).items():
        try:
            templates[defect] = resize_region(read_template(Path(template["file"])), resolution)
        except (AnogenInputError, KeyError, TypeError) as error:
            logger.warning("placement template of %s not read (%s); on_object uses the foreground", defect, error)
    return rule, templates, bool(placement.get("foreground", True))


def _manifest(bank: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (bank / MANIFEST_NAME).read_text().splitlines() if line.strip()]


def measure_bank(
    bank: str | Path,
    support: str | None = None,
    gate: bool = True,
    min_visibility: float | None = None,
    min_on_object: float | None = None,
    max_leak: float | None = None,
) -> CheckResult:
    """Measure and judge every record of ``bank`` (nothing is written); see :class:`CheckOptions`."""
    from anomalib_anogen.generate.foreground import foreground_mask

    folder = Path(bank).expanduser()
    try:
        records: list[BankRecord] = load_bank(folder)
    except BankError as error:
        raise AnogenInputError(str(error).removeprefix("bank_dir: ")) from error
    entries = _manifest(folder)
    summary = read_summary(folder) or {}
    first = _rgb(records[0].image)
    resolution = first.shape[1]
    references, where = references_for(folder, summary, entries, support, resolution)
    made_with = (summary.get("settings") or {}).get("quality") or {}
    limits = {
        name: given if given is not None else made_with.get(name)
        for name, given in (
            ("min_visibility", min_visibility),
            ("min_on_object", min_on_object),
            ("max_leak", max_leak),
        )
    }
    judge = QualityGate(references, gate, **limits)
    rule, templates, with_foreground = _regions(summary, resolution)
    foregrounds: dict[Path, np.ndarray] = {}
    result = CheckResult(folder, judge, references_from=where)
    for record in records:
        image, normal = _rgb(record.image), _rgb(record.source)
        if normal.shape != image.shape:
            msg = f"{record.source}: {normal.shape[1]}x{normal.shape[0]}, not the size of its record {record.image}"
            raise AnogenInputError(msg)
        mask = np.asarray(Image.open(record.mask).convert("L"))
        if record.source not in foregrounds:
            foregrounds.clear()  # the records of one source follow each other (image-major work list)
            foregrounds[record.source] = foreground_mask(normal, rule)
        region = foregrounds[record.source]
        if record.defect in templates:
            region = templates[record.defect] & region if with_foreground else templates[record.defect]
        measures = measure(image, normal, mask, region, references[record.defect].contrast)
        verdict = judge.decide(record.defect, measures)
        result.records[record.record_id] = {
            "defect": record.defect,
            "image_sha256": sha256_bytes(record.image.read_bytes()),
            **verdict.fields(),
        }
    for defect in sorted(references):
        rows = [r for r in result.records.values() if r["defect"] == defect]
        result.summary[defect] = summarize(rows)
    return result


def _cell(spread: dict[str, float], keys: tuple[str, str]) -> str:
    return " / ".join(f"{spread[k]:.2f}" for k in keys) if spread else "-"


def table(result: CheckResult) -> str:
    """The per-defect table that ``anogen check`` prints."""
    lines = [
        f"{result.bank}: {len(result.records)} records, references from {result.references_from}"
        + ("" if result.gate.enabled else " (gate off: measured only)"),
        "| defect | records | rejected | visibility p05 / p50 | on_object p05 / p50 | leak p50 / p95 | "
        "limits: min_visibility / min_on_object / max_leak |",
        "|---|---|---|---|---|---|---|",
    ]
    for defect, entry in result.summary.items():
        reasons = ", ".join(f"{k} {v}" for k, v in entry["rejected_for"].items() if v)
        limits = result.gate.limits(defect)
        lines.append(
            f"| {defect} | {entry['records']} | {entry['rejected']}{f' ({reasons})' if reasons else ''} | "
            f"{_cell(entry['visibility'], ('p05', 'p50'))} | {_cell(entry['on_object'], ('p05', 'p50'))} | "
            f"{_cell(entry['leak'], ('p50', 'p95'))} | {limits.min_visibility:.3f} / {limits.min_on_object:.3f} / "
            f"{limits.max_leak:.3f} |"
        )
    return "\n".join(lines)


def check(options: CheckOptions) -> CheckResult:
    """Measure ``options.bank``, print the table and (``--write true``) write ``quality.json``; returns the result."""
    result = measure_bank(
        options.bank, options.support, options.gate, options.min_visibility, options.min_on_object, options.max_leak
    )
    print(table(result), flush=True)
    rejected = len(result.rejected())
    if options.write:
        file = result.bank / QUALITY_NAME
        try:
            write_atomic(file, (json.dumps(result.to_json(), indent=1) + "\n").encode())
        except OSError as error:
            msg = f"{file}: cannot write the quality file ({error.strerror or error})"
            raise AnogenInputError(msg) from error
        logger.info(
            "%s: %d of %d records rejected; the `anogen` generator skips them", file, rejected, len(result.records)
        )
    elif rejected:
        logger.info("%d records rejected; --write true records it for training (quality.json)", rejected)
    return result


__all__ = ["MEASURES", "CheckOptions", "CheckResult", "check", "measure_bank", "table"]
