"""anomalib's Perlin/DTD generator, speaking the weakly-supervised models' ``generate`` contract too."""

from pathlib import Path

import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

from anomalib_anogen.data.synthetic import SyntheticBatch, resolve_dtd_dir


class PerlinGenerator(PerlinAnomalyGenerator):
    """``PerlinAnomalyGenerator`` with a checked ``dtd_dir`` and a ``generate`` method.

    Args:
        dtd_dir: Folder of texture images, or ``None`` for Perlin noise alone; never downloaded.
        probability: Share of images that get an anomaly.
        blend_factor: A number, or a ``(low, high)`` range (lists from configs are accepted).
    """

    def __init__(
        self,
        dtd_dir: Path | str | None = None,
        probability: float = 0.5,
        blend_factor: float | tuple[float, float] | list[float] = (0.1, 1.0),
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            msg = f"anomaly_probability must lie in [0, 1], got {probability!r}."
            raise ValueError(msg)
        # Configs give ranges as lists; anomalib's generator samples only from a tuple.
        blend = tuple(float(v) for v in blend_factor) if isinstance(blend_factor, list | tuple) else float(blend_factor)
        super().__init__(
            anomaly_source_path=resolve_dtd_dir(dtd_dir, "dtd_dir"), probability=probability, blend_factor=blend
        )

    def generate(self, images: torch.Tensor) -> SyntheticBatch:
        """Perlin/DTD anomalies: exact masks, the batch image is the reconstruction target."""
        augmented, mask = self(images)
        is_box = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        return SyntheticBatch(image=augmented, mask=mask, is_box=is_box, target=images)
