"""Training-time rotation of synthetic-anomaly samples: DRAEM's rule and DeSTSeg's per-category rule.

DRAEM rotates a sample with probability 0.3 by an angle in [-90°, 90°]. DeSTSeg (``train.py`` of
apple/ml-destseg, and the authors' ``DeSTSeg/`` of AnoGen for generated anomalies too) rotates every
training image by category: a random quarter turn and then up to ±5° for categories whose normal
images look the same turned (bottle, carpet, grid, hazelnut, leather, screw, tile), up to ±5° for
wood, zipper and cable, and not at all for the others, where a turned part *is* an anomaly (a
transistor turned 90° is "misplaced"). Uncovered corners get grey 114 (of 255).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from anomalib_anogen.arguments import check_argument, check_choice
from anomalib_anogen.core.checks import NON_NEGATIVE, UNIT_INTERVAL

DESTSEG_FILL = 114 / 255  # DeSTSeg's fillcolor (114, 114, 114)
DESTSEG_DEGREES = 5.0

# DeSTSeg's train.py: rotation_category, slight_rotation_category, no_rotation_category.
DESTSEG_CATEGORIES: dict[str, str] = {
    **dict.fromkeys(("bottle", "carpet", "grid", "hazelnut", "leather", "screw", "tile"), "full"),
    **dict.fromkeys(("cable", "wood", "zipper"), "slight"),
    **dict.fromkeys(("capsule", "metal_nut", "pill", "toothbrush", "transistor"), "none"),
}

RotationRule = Literal["auto", "none", "slight", "full"]
ROTATION_RULES = {
    "auto": "DeSTSeg's rule for the datamodule's MVTec AD category; 'none' for any other category",
    "none": "no rotation",
    "slight": "up to ±5°",
    "full": "a random quarter turn, then up to ±5°",
}


@dataclass(frozen=True)
class Rotation:
    """A random rotation applied to the samples of a batch, the same angle for an image, its target and mask.

    Attributes:
        probability: Chance that a sample is rotated at all.
        degrees: A uniform angle in ``[-degrees, degrees]``.
        quarter_turns: First turn by a random multiple of 90° (0 included), as DeSTSeg.
        fill: Value of the uncovered corners of images (masks get 0).
    """

    probability: float = 0.0
    degrees: float = 0.0
    quarter_turns: bool = False
    fill: float = 0.0

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> Rotation:
        """The rotation a generator's ``rotation_*`` arguments describe (checked)."""
        return cls(
            arguments["rotation_probability"],
            arguments["rotation_degrees"],
            arguments["rotation_quarter_turns"],
            arguments["rotation_fill"],
        )

    def __post_init__(self) -> None:
        check_argument("rotation_probability", self.probability, UNIT_INTERVAL)
        check_argument("rotation_degrees", self.degrees, NON_NEGATIVE)
        check_argument("rotation_fill", self.fill, UNIT_INTERVAL, "The grey of uncovered corners (DeSTSeg: 114/255).")

    def options(self) -> dict[str, float | bool]:
        """As the generators' ``rotation_*`` arguments."""
        return {
            "rotation_probability": self.probability,
            "rotation_degrees": self.degrees,
            "rotation_quarter_turns": self.quarter_turns,
            "rotation_fill": self.fill,
        }

    @property
    def active(self) -> bool:
        """Whether it can change a sample."""
        return self.probability > 0 and (self.degrees > 0 or self.quarter_turns)

    def __call__(self, *tensors: torch.Tensor, mask_last: bool = True) -> tuple[torch.Tensor, ...]:
        """Rotate each sample ``(B, C, H, W)`` of every tensor by the same random angle.

        With ``mask_last`` the last tensor is a mask: nearest neighbour and zero fill; the others bilinear
        with ``fill``. Draws from torch's global generator, so it follows ``seed_everything``.
        """
        if not self.active:
            return tensors
        outputs = [tensor.clone() for tensor in tensors]
        for index in range(tensors[0].shape[0]):
            if torch.rand(1).item() >= self.probability:
                continue
            angle = 90.0 * int(torch.randint(0, 4, (1,)).item()) if self.quarter_turns else 0.0
            angle += float(torch.empty(1).uniform_(-self.degrees, self.degrees).item()) if self.degrees else 0.0
            for position, tensor in enumerate(tensors):
                is_mask = mask_last and position == len(tensors) - 1
                outputs[position][index] = tvf.rotate(
                    tensor[index],
                    angle,
                    interpolation=InterpolationMode.NEAREST if is_mask else InterpolationMode.BILINEAR,
                    fill=0.0 if is_mask else self.fill,
                )
        return tuple(outputs)


DRAEM_ROTATION = Rotation(probability=0.3, degrees=90.0)


def destseg_rotation(rule: str) -> Rotation:
    """DeSTSeg's rotation for ``none``, ``slight`` or ``full``."""
    rule = check_choice("rotation", rule, {name: ROTATION_RULES[name] for name in ("none", "slight", "full")})
    if rule == "none":
        return Rotation()
    return Rotation(probability=1.0, degrees=DESTSEG_DEGREES, quarter_turns=rule == "full", fill=DESTSEG_FILL)


def resolve_rotation_rule(rule: str, category: str | None) -> str:
    """``auto`` -> DeSTSeg's rule for ``category`` (``none`` when it is not an MVTec AD category); else ``rule``."""
    rule = check_choice("rotation", rule, ROTATION_RULES)
    if rule != "auto":
        return rule
    return DESTSEG_CATEGORIES.get(str(category), "none") if category is not None else "none"


__all__ = [
    "DESTSEG_CATEGORIES",
    "DRAEM_ROTATION",
    "ROTATION_RULES",
    "Rotation",
    "RotationRule",
    "destseg_rotation",
    "resolve_rotation_rule",
]
