"""Is a bank record any good? Three model-free measures per record, references from the support set, and the gate.

Every measure compares a record's image ``G`` with its own normal source ``N`` (the image it was made from) in
CIELAB, where a Euclidean distance (CIE76 ΔE) is roughly what a person sees: ``d(x) = |Lab(G)(x) - Lab(N)(x)|``.

* **visibility**: how strongly the image changed where it changed inside the box, relative to how strongly the
  real support anomalies of that defect type change their images. The change inside the box is summarised by
  ``c = sum(d^2) / sum(d)``, the mean of ``d`` weighted by ``d`` itself: it is the typical ΔE of the changed
  pixels and does not depend on how much of the box the defect fills (a thin crack and a large stain that change
  their pixels by ΔE 20 both give 20; the same crack blended at 5% opacity gives 1). The reference ``R`` of a
  defect type is the median of the same statistic over its support anomalies, each compared with itself
  inpainted over its (slightly dilated) mask, at the bank's resolution. ``visibility = c / R``: 1 is as visible
  as the typical real anomaly of this type, whatever the product; a faint-by-nature type has a small ``R``.
* **on_object**: the share of the in-box change that lies on the part, ``sum(d * P) / sum(d)`` over the box,
  with ``P`` the region boxes are drawn on (the image's foreground by the bank's ``--foreground`` rule, and with
  ``--placement`` the defect's template too). 1: every changed pixel is on the part; 0: on the background. A box
  in which nothing changed counts 1 (visibility already says it).
* **leak**: how much the image changed outside the box, ``mean(d outside the box) / C``, with ``C`` the normal
  image's own contrast (the mean ΔE of its pixels from its median colour, at least :data:`MIN_IMAGE_CONTRAST`).
  0 for the paste backend and ``--keep_outside true`` (bit-exact outside the box); for the paper's whole-latent
  decode it is the VAE's round trip.

The gate rejects a record whose visibility or on_object falls below its limit or whose leak exceeds its limit
(:class:`QualityGate`). Defaults are derived from the support anomalies: ``min_visibility`` is
:data:`VISIBILITY_SHARE` of the faintest support anomaly's own visibility, ``min_on_object``
:data:`ON_OBJECT_SHARE` of the least on-object one's; ``max_leak`` is :data:`MAX_LEAK` of the image's contrast.
Without a support set (the diffusion backend without ``--support``) the reference is a fixed ΔE
(:data:`FIXED_CONTRAST`) and the limits are the fixed ones. docs/quality.md explains them with pictures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from anomalib_anogen.core.checks import UNIT_INTERVAL, at_least, check_number

# Support references
INPAINT_RADIUS = 5  # pixels: cv2.inpaint's neighbourhood
RING = 1 / 32  # the support mask is dilated by this share of the side before inpainting (context of the defect)
FIXED_CONTRAST = 10.0  # ΔE: the reference without a support set (about 4 just-noticeable differences, ΔE 2.3)
MIN_IMAGE_CONTRAST = 5.0  # ΔE: the floor of an image's contrast (a flat image would make any change a leak)
# Derived limits
VISIBILITY_SHARE = 0.35  # min_visibility = this share of the faintest support anomaly's visibility
ON_OBJECT_SHARE = 0.5  # min_on_object = this share of the least on-object support anomaly's on_object
MAX_LEAK = 0.1  # max_leak: the mean change outside the box, as a share of the image's contrast
FIXED_MIN_VISIBILITY = 0.3  # without a support set: c >= 3 ΔE
FIXED_MIN_ON_OBJECT = 0.5
MEASURES = ("visibility", "on_object", "leak")
DIGITS = 4  # measures are recorded rounded to this many decimals (the same bytes on every run)

# ----------------------------------------------------------------------------------------------------------------
# The measures


def lab(image: np.ndarray) -> np.ndarray:
    """CIELAB (L in 0-100) of a uint8 RGB image, float32 H x W x 3."""
    return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def change_map(image: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Per pixel ΔE (CIE76) between two uint8 RGB images of one size, float32 H x W."""
    return np.linalg.norm(lab(image) - lab(normal), axis=-1)


def concentration(change: np.ndarray, where: np.ndarray) -> float:
    """``sum(d^2) / sum(d)`` over ``where``: the typical ΔE of the pixels that changed (0 when none did)."""
    values = change[where].astype(np.float64)
    total = values.sum()
    return float((values * values).sum() / total) if total > 0 else 0.0


def image_contrast(normal: np.ndarray) -> float:
    """The image's own contrast: the mean ΔE of its pixels from its median colour (at least the floor)."""
    colours = lab(normal).reshape(-1, 3)
    spread = float(np.linalg.norm(colours - np.median(colours, axis=0), axis=-1).mean())
    return max(MIN_IMAGE_CONTRAST, spread)


@dataclass(frozen=True)
class Measures:
    """A record's measures (see the module docstring) and the raw ΔE numbers behind them."""

    visibility: float
    on_object: float
    leak: float
    change: float  # c: the typical ΔE of the changed pixels in the box
    outside: float  # mean ΔE outside the box

    def describe(self) -> dict[str, float]:
        """The record's ``quality`` field: the three measures and the raw ΔE, rounded."""
        return {
            "visibility": round(self.visibility, DIGITS),
            "on_object": round(self.on_object, DIGITS),
            "leak": round(self.leak, DIGITS),
            "change_de": round(self.change, 2),
            "outside_de": round(self.outside, 2),
        }


def measure(image: np.ndarray, normal: np.ndarray, mask: np.ndarray, region: np.ndarray, contrast: float) -> Measures:
    """The measures of one record.

    Args:
        image: The generated image (uint8 H x W x 3).
        normal: Its normal source at the same size.
        mask: The box (H x W, > 0 inside).
        region: Where the part is (bool H x W): the foreground, or the placement region.
        contrast: The defect type's reference ΔE (:attr:`Reference.contrast`).
    """
    change = change_map(image, normal)
    inside = mask > 0
    total = float(change[inside].sum(dtype=np.float64))
    typical = concentration(change, inside)
    on_object = float(change[inside & region].sum(dtype=np.float64)) / total if total > 0 else 1.0
    outside = float(change[~inside].mean(dtype=np.float64)) if (~inside).any() else 0.0
    return Measures(typical / contrast, on_object, outside / image_contrast(normal), typical, outside)


# ----------------------------------------------------------------------------------------------------------------
# References from the support set


@dataclass(frozen=True)
class Reference:
    """What a defect type's measures are compared with.

    Attributes:
        contrast: ``R``, the median over the support anomalies of their typical ΔE against themselves inpainted.
        visibility: Each support anomaly's own visibility (its ΔE / ``R``).
        on_object: Each support anomaly's share of change on the part (by the bank's foreground rule).
        source: ``support`` (measured) or ``fixed`` (no support set: :data:`FIXED_CONTRAST`).
    """

    contrast: float
    visibility: tuple[float, ...] = ()
    on_object: tuple[float, ...] = ()
    source: str = "support"

    def describe(self) -> dict[str, Any]:
        """As bank.json and quality.json record it (unrounded: ``anogen check`` judges with exactly these)."""
        return {
            "source": self.source,
            "contrast_de": self.contrast,
            "support_visibility": list(self.visibility),
            "support_on_object": list(self.on_object),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        """The reference recorded by :meth:`describe` (raises ``KeyError``/``TypeError``/``ValueError`` if not)."""
        return cls(
            float(data["contrast_de"]),
            tuple(float(v) for v in data.get("support_visibility", ())),
            tuple(float(v) for v in data.get("support_on_object", ())),
            str(data.get("source", "support")),
        )


def fixed_reference() -> Reference:
    """The reference without a support set: :data:`FIXED_CONTRAST`, no support anomalies to derive limits from."""
    return Reference(FIXED_CONTRAST, source="fixed")


def _at_resolution(image: np.ndarray, mask: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """A support pair scaled so that its width is the bank's side (the size its defects have in the bank)."""
    height, width = mask.shape
    if width == resolution:
        return image, mask
    size = (resolution, max(1, round(height * resolution / width)))
    interpolation = cv2.INTER_AREA if width > resolution else cv2.INTER_CUBIC
    scaled = cv2.resize(np.ascontiguousarray(image), size, interpolation=interpolation)
    small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    if not small.any():  # a defect smaller than a pixel at this size: keep its brightest pixel
        small = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        small = small >= small.max()
    return scaled, small


def support_change(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A support anomaly's change map against itself inpainted over its dilated mask, and that dilated mask."""
    side = max(3, round(min(mask.shape) * RING) | 1)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((side, side), np.uint8))
    healed = cv2.inpaint(np.ascontiguousarray(image, dtype=np.uint8), ring, INPAINT_RADIUS, cv2.INPAINT_TELEA)
    return change_map(image, healed), ring > 0


def support_reference(pairs: list[tuple[np.ndarray, np.ndarray]], resolution: int, foreground: str) -> Reference:
    """A defect type's reference from its support anomalies, ``(uint8 RGB image, bool mask)`` each.

    Each is scaled to the bank's ``resolution`` (its width), compared with itself inpainted over its mask
    dilated by :data:`RING` of the side, and gives its typical ΔE and its share of change on the part found by
    the ``foreground`` rule.
    """
    from anomalib_anogen.generate.foreground import foreground_mask

    typical, shares = [], []
    for image, mask in pairs:
        image, mask = _at_resolution(np.asarray(image, dtype=np.uint8), np.asarray(mask, dtype=bool), resolution)
        change, ring = support_change(image, mask)
        typical.append(concentration(change, ring))
        total = float(change[ring].sum(dtype=np.float64))
        part = foreground_mask(image, foreground)
        shares.append(float(change[ring & part].sum(dtype=np.float64)) / total if total > 0 else 1.0)
    contrast = float(np.median(typical)) if typical and max(typical) > 0 else FIXED_CONTRAST
    return Reference(contrast, tuple(t / contrast for t in typical), tuple(shares), "support")


def references_from_pairs(loaded: dict[str, list[Any]], resolution: int, foreground: str) -> dict[str, Reference]:
    """Each defect's reference from its decoded support pairs (:class:`~anomalib_anogen.data.support.LoadedPair`)."""
    return {
        defect: support_reference([(np.asarray(p.image.convert("RGB")), p.mask) for p in pairs], resolution, foreground)
        for defect, pairs in sorted(loaded.items())
    }


# ----------------------------------------------------------------------------------------------------------------
# The gate


@dataclass(frozen=True)
class Limits:
    """A defect type's limits and where each came from (``derived``, ``fixed`` or ``given``)."""

    min_visibility: float
    min_on_object: float
    max_leak: float
    origin: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """As bank.json records them."""
        return {
            "min_visibility": round(self.min_visibility, DIGITS),
            "min_on_object": round(self.min_on_object, DIGITS),
            "max_leak": round(self.max_leak, DIGITS),
            "origin": dict(self.origin),
        }


def derived_limits(reference: Reference) -> Limits:
    """The default limits of a defect type (see the module docstring)."""
    if reference.source != "support" or not reference.visibility:
        origin = {"min_visibility": "fixed", "min_on_object": "fixed", "max_leak": "fixed"}
        return Limits(FIXED_MIN_VISIBILITY, FIXED_MIN_ON_OBJECT, MAX_LEAK, origin)
    origin = {"min_visibility": "derived", "min_on_object": "derived", "max_leak": "fixed"}
    return Limits(
        VISIBILITY_SHARE * min(reference.visibility),
        ON_OBJECT_SHARE * min(reference.on_object),
        MAX_LEAK,
        origin,
    )


def check_limits(min_visibility: float | None, min_on_object: float | None, max_leak: float | None) -> None:
    """The ranges of the overrides (``None``: derived)."""
    if min_visibility is not None:
        check_number("--min_visibility", min_visibility, at_least(0, integer=False), "or leave it out: derived")
    if min_on_object is not None:
        check_number("--min_on_object", min_on_object, UNIT_INTERVAL, "or leave it out: derived")
    if max_leak is not None:
        check_number("--max_leak", max_leak, at_least(0, integer=False), "or leave it out: the default")


@dataclass(frozen=True)
class Verdict:
    """A record's measures and which of them the gate rejects it for (empty: accepted, or no gate)."""

    measures: Measures
    rejected_for: tuple[str, ...]

    @property
    def rejected(self) -> bool:
        """Whether the gate rejects the record."""
        return bool(self.rejected_for)

    def fields(self) -> dict[str, Any]:
        """What a manifest record gets: ``quality``, ``rejected`` and ``rejected_for``."""
        return {"quality": self.measures.describe(), "rejected": self.rejected, "rejected_for": list(self.rejected_for)}


class QualityGate:
    """The measures of each record and the decision on them, per defect type.

    Args:
        references: Each defect type's reference (:func:`references_from_pairs`, :func:`fixed_reference`).
        enabled: ``False``: measure only, reject nothing.
        min_visibility, min_on_object, max_leak: Overrides for every defect type (``None``: the default).
    """

    def __init__(
        self,
        references: dict[str, Reference],
        enabled: bool = True,
        min_visibility: float | None = None,
        min_on_object: float | None = None,
        max_leak: float | None = None,
    ) -> None:
        check_limits(min_visibility, min_on_object, max_leak)
        self.references = references
        self.enabled = enabled
        self.overrides = {"min_visibility": min_visibility, "min_on_object": min_on_object, "max_leak": max_leak}

    def limits(self, defect: str) -> Limits:
        """The defect type's limits: the overrides where given, else the defaults."""
        base = derived_limits(self.references[defect])
        values = {name: getattr(base, name) for name in self.overrides}
        origin = dict(base.origin)
        for name, value in self.overrides.items():
            if value is not None:
                values[name], origin[name] = float(value), "given"
        return Limits(**values, origin=origin)

    def decide(self, defect: str, measures: Measures) -> Verdict:
        """Which limits ``measures`` break (none when the gate is off)."""
        if not self.enabled:
            return Verdict(measures, ())
        limits = self.limits(defect)
        failed = []
        if measures.visibility < limits.min_visibility:
            failed.append("visibility")
        if measures.on_object < limits.min_on_object:
            failed.append("on_object")
        if measures.leak > limits.max_leak:
            failed.append("leak")
        return Verdict(measures, tuple(failed))

    def judge(
        self, defect: str, image: np.ndarray, normal: np.ndarray, mask: np.ndarray, region: np.ndarray
    ) -> dict[str, Any]:
        """One record's measures and verdict, as the fields its manifest record gets (see :meth:`Verdict.fields`)."""
        return self.decide(defect, measure(image, normal, mask, region, self.references[defect].contrast)).fields()

    def describe(self) -> dict[str, Any]:
        """The gate as bank.json records it: on or off, and each defect's reference and limits."""
        return {
            "gate": self.enabled,
            "defects": {
                defect: {"reference": self.references[defect].describe(), "limits": self.limits(defect).describe()}
                for defect in sorted(self.references)
            },
        }

    def summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """bank.json's ``quality``: the gate, and per defect its measures' spread and how many it rejected."""
        described = self.describe()
        for defect, entry in described["defects"].items():
            entry.update(summarize([r for r in records if r.get("defect") == defect]))
        return described


def badness(quality: dict[str, Any], limits: dict[str, Any]) -> float:
    """How far a record is from being rejected; at least 1 means rejected (``anogen show --worst``'s order).

    ``max(min_visibility / visibility, min_on_object / on_object, leak / max_leak)``.
    """
    ratios = []
    for name, limit, low in (
        ("visibility", "min_visibility", True),
        ("on_object", "min_on_object", True),
        ("leak", "max_leak", False),
    ):
        value, bound = float(quality.get(name, 0.0)), float(limits.get(limit, 0.0))
        if low:
            ratios.append(bound / value if value > 0 else (math.inf if bound > 0 else 0.0))
        else:
            ratios.append(value / bound if bound > 0 else (math.inf if value > 0 else 0.0))
    return max(ratios)


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    quantiles = np.quantile(array, [0.05, 0.5, 0.95])
    return {
        "mean": round(float(array.mean()), DIGITS),
        "p05": round(float(quantiles[0]), DIGITS),
        "p50": round(float(quantiles[1]), DIGITS),
        "p95": round(float(quantiles[2]), DIGITS),
        "min": round(float(array.min()), DIGITS),
        "max": round(float(array.max()), DIGITS),
    }


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per defect: records, those measured, rejected (and for what), and each measure's spread."""
    measured = [r for r in records if isinstance(r.get("quality"), dict)]
    reasons: dict[str, int] = dict.fromkeys(MEASURES, 0)
    for record in measured:
        for reason in record.get("rejected_for") or ():
            reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "records": len(records),
        "measured": len(measured),
        "rejected": sum(bool(r.get("rejected")) for r in measured),
        "rejected_for": reasons,
        **{name: _spread([float(r["quality"][name]) for r in measured]) for name in MEASURES},
    }


def resize_region(region: np.ndarray, size: int) -> np.ndarray:
    """A bool region at ``size x size`` (nearest neighbour)."""
    if region.shape == (size, size):
        return region
    return np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 0


def rejections(records: list[dict[str, Any]]) -> str | None:
    """``"quality gate: rejected 12 of 240 records (visibility 10, leak 2)"``, or ``None`` when it rejected none."""
    rejected = [r for r in records if r.get("rejected")]
    if not rejected:
        return None
    reasons: dict[str, int] = {}
    for record in rejected:
        for reason in record.get("rejected_for") or ():
            reasons[reason] = reasons.get(reason, 0) + 1
    detail = ", ".join(f"{name} {count}" for name, count in sorted(reasons.items()))
    return f"quality gate: rejected {len(rejected)} of {len(records)} records ({detail})"
