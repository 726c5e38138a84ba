"""anomalib's Perlin/DTD generator, speaking the weakly-supervised models' ``generate`` contract too."""

from pathlib import Path
from typing import Any

import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

from anomalib_anogen.arguments import check_argument, check_blend
from anomalib_anogen.core.checks import UNIT_INTERVAL
from anomalib_anogen.data.generators.rotation import Rotation
from anomalib_anogen.data.synthetic import SyntheticBatch, bound_arguments, resolve_dtd_dir


def _numbers(
    probability: float, blend_factor: float | tuple[float, float] | list[float]
) -> tuple[float, float | tuple[float, float]]:
    """The probability and the blend factor, checked under the models' names (anomaly_probability, beta).

    A blend range comes back as a tuple: configs give lists, anomalib's generator samples only from a tuple.
    """
    return check_argument("anomaly_probability", probability, UNIT_INTERVAL), check_blend("beta", blend_factor)


class PerlinGenerator(PerlinAnomalyGenerator):
    """``PerlinAnomalyGenerator`` with a checked ``dtd_dir`` and a ``generate`` method.

    Args:
        dtd_dir: Folder of texture images, or ``None`` for Perlin noise alone; never downloaded.
        probability: Share of images that get an anomaly.
        blend_factor: A number, or a ``(low, high)`` range (lists from configs are accepted).
        rotation_probability, rotation_degrees, rotation_quarter_turns, rotation_fill: A random rotation of
            the normal image before the anomaly is put in, as DeSTSeg does (see ``rotation.Rotation``);
            none by default, as anomalib's ``Draem``.
    """

    def __init__(
        self,
        dtd_dir: Path | str | None = None,
        probability: float = 0.5,
        blend_factor: float | tuple[float, float] | list[float] = (0.2, 1.0),
        rotation_probability: float = 0.0,
        rotation_degrees: float = 0.0,
        rotation_quarter_turns: bool = False,
        rotation_fill: float = 0.0,
    ) -> None:
        probability, blend = _numbers(probability, blend_factor)
        rotation = Rotation(rotation_probability, rotation_degrees, rotation_quarter_turns, rotation_fill)
        super().__init__(
            anomaly_source_path=resolve_dtd_dir(dtd_dir, "dtd_dir"), probability=probability, blend_factor=blend
        )
        self.rotation = rotation

    @classmethod
    def check_arguments(cls, **arguments: Any) -> None:
        """Check the numbers without reading any file (a model checks its generator choice this way when built)."""
        given = bound_arguments(cls, arguments)
        _numbers(given["probability"], given["blend_factor"])
        Rotation.of(given)

    def generate(self, images: torch.Tensor) -> SyntheticBatch:
        """Perlin/DTD anomalies: exact masks, the (rotated) batch image is the reconstruction target."""
        (images,) = self.rotation(images, mask_last=False)
        augmented, mask = self(images)
        is_box = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        return SyntheticBatch(image=augmented, mask=mask, is_box=is_box, target=images)
