"""The precision choice that ``anogen deploy-check`` writes beside a model and ``load_inferencer`` reads.

``<model>.deploy.json`` beside the FP32 IR ``<model>.xml`` says which IR to run at which inference precision
(and which nodes to keep in f32), with the CPU it was measured on and the sha256 of the model files, so that a
re-exported model or another CPU is noticed instead of silently inheriting a choice made for something else.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalib_anogen.core.files import sha256_file

from .openvino import PRECISIONS, CpuInfo

logger = logging.getLogger("anomalib_anogen.deploy")

CHOICE_SUFFIX = ".deploy.json"  # model.xml -> model.deploy.json
CHOICE_FORMAT = 1


def choice_path(xml: str | Path) -> Path:
    """Where the choice for the FP32 IR ``xml`` lives: ``model.xml`` -> ``model.deploy.json`` beside it."""
    xml = Path(xml)
    return xml.with_name(xml.stem + CHOICE_SUFFIX)


def cpu_record(info: CpuInfo) -> dict[str, Any]:
    """What identifies a CPU class for OpenVINO: its name, default precision, capabilities and flags."""
    return {
        "name": info.name,
        "default_precision": info.default_precision,
        "capabilities": list(info.capabilities),
        "flags": list(info.flags),
    }


def same_cpu_class(recorded: dict[str, Any], info: CpuInfo) -> bool:
    """Whether ``info`` is the CPU (name, instruction-set flags, OpenVINO default precision) a choice was made on."""
    return {key: recorded.get(key) for key in ("name", "default_precision", "flags")} == {
        key: value for key, value in cpu_record(info).items() if key != "capabilities"
    }


@dataclass(frozen=True)
class DeployChoice:
    """A choice read from ``<model>.deploy.json``.

    Attributes:
        file: the JSON file.
        ir: the chosen IR (``.xml``), resolved against the file's folder.
        precision: the OpenVINO inference precision to run it at.
        keep_f32: friendly names of the nodes to keep in f32 (OpenVINO's per-node hint); empty for none.
        variant: the variant's name in deploy-check's report.
        cpu: the CPU the choice was measured on (:func:`cpu_record`).
        made: when (UTC).
        files_sha256: sha256 of the reference and chosen IR files (``.xml`` and ``.bin``) when measured.
    """

    file: Path
    ir: Path
    precision: str
    keep_f32: tuple[str, ...]
    variant: str
    cpu: dict[str, Any]
    made: str
    files_sha256: dict[str, str] = field(default_factory=dict)

    def stale_files(self) -> list[str]:
        """The recorded model files that are missing or changed since the choice was made."""
        changed = []
        for name, digest in self.files_sha256.items():
            path = (self.file.parent / name).resolve()
            if not path.is_file() or sha256_file(path) != digest:
                changed.append(name)
        return changed


def files_sha256(folder: Path, xmls: list[Path]) -> dict[str, str]:
    """sha256 of each IR's ``.xml`` and ``.bin``, keyed by the path relative to ``folder`` (posix)."""
    import os

    digests = {}
    for xml in xmls:
        for path in (xml, xml.with_suffix(".bin")):
            digests[Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()] = sha256_file(path)
    return digests


def read_choice(xml: str | Path) -> DeployChoice | None:
    """The choice beside the FP32 IR ``xml``, or ``None`` when there is none or it cannot be used (warned)."""
    file = choice_path(xml)
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
        if data.get("format") != CHOICE_FORMAT:
            msg = f"format {data.get('format')!r}, expected {CHOICE_FORMAT}"
            raise ValueError(msg)
        choice = DeployChoice(
            file=file,
            ir=(file.parent / data["ir"]).resolve(),
            precision=str(data["precision"]),
            keep_f32=tuple(data.get("keep_f32", ())),
            variant=str(data.get("variant", "")),
            cpu=dict(data.get("cpu", {})),
            made=str(data.get("made", "")),
            files_sha256=dict(data.get("files_sha256", {})),
        )
        if choice.precision not in PRECISIONS:
            msg = f"precision {choice.precision!r} is not one of {', '.join(PRECISIONS)}"
            raise ValueError(msg)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(f"{file}: unreadable deploy-check choice ({error}); ignored", UserWarning, stacklevel=3)
        return None
    stale = choice.stale_files()
    if stale:
        warnings.warn(
            f"{file}: the model files changed or went missing since deploy-check chose {choice.variant} "
            f"({', '.join(stale)}); choice ignored, running f32. Run `anogen deploy-check` again.",
            UserWarning,
            stacklevel=3,
        )
        return None
    return choice
