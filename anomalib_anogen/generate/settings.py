"""What defines an anomaly bank's content: the settings of one ``anogen generate`` run.

``bank.json`` records them (``settings``) with their sha256, and ``--resume`` continues a bank only when they are
the same. The optional fields are left out of the JSON when they are not used, so a bank made before an option
existed keeps its settings, and its hash, and still resumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class GenerateSettings:
    """The settings of a bank, as recorded in ``bank.json`` (see :meth:`to_json`)."""

    backend: str  # diffusion | paste
    normal: str  # the normal image folder, resolved
    sources: int  # number of normal images
    sources_sha256: list[str]
    defects: list[str]
    priors: dict[str, Any]  # defect -> BoxPrior.describe()
    foreground: str  # the concrete rule (border | otsu | all)
    min_foreground: float
    max_tries: int
    per_image: int
    samples_per_box: int
    resolution: int
    seed: int
    keep_outside: bool
    feather: float  # pixels
    # Only when used:
    priors_auto: dict[str, Any] | None = None  # --priors auto: how the priors were derived
    placement: dict[str, Any] | None = None  # --placement: Placement.describe()
    quality: dict[str, Any] | None = None  # the quality gate where it is not the default (see command.quality_gate)
    # Diffusion backend only:
    backbone: str | None = None
    backbone_sha256: str | None = None
    embeddings: dict[str, str] | None = None  # defect -> embedding file sha256
    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None
    batch_size: int | None = None
    precision: str | None = None  # the resolved one (32 | bf16 | fp16)
    # Paste backend only:
    support: dict[str, list[list[str]]] | None = None  # defect -> [[image sha256, mask sha256], ...]
    blend: str | None = None
    paste_version: int | None = None  # 2: boxes of the cut-out's aspect ratio, brightness-only jitter (none: 1)

    @property
    def diffusion(self) -> bool:
        """Whether the bank is made by the diffusion backend."""
        return self.backend == "diffusion"

    def to_json(self) -> dict[str, Any]:
        """``bank.json``'s ``settings``: every field, less the optional ones that are not used."""
        optional = {f.name for f in fields(self) if f.default is None}
        return {key: value for key, value in asdict(self).items() if value is not None or key not in optional}
