"""What defines an anomaly bank's content: the settings of one ``anogen generate`` run.

``bank.json`` records them (``settings``, every field, ``null`` where a field does not apply) with their sha256, and
``--resume`` continues a bank only when they are the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
    # None when not used:
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
    paste_version: int | None = None  # the paste backend's version (backends/paste.py PASTE_VERSION)

    @property
    def diffusion(self) -> bool:
        """Whether the bank is made by the diffusion backend."""
        return self.backend == "diffusion"

    def to_json(self) -> dict[str, Any]:
        """``bank.json``'s ``settings``: every field (``None`` where it does not apply)."""
        return asdict(self)
