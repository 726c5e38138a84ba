"""Does the exported model compute what the torch model computes? Raw-output parity at a chosen precision.

The comparison uses the *raw* network outputs (anomaly map and score before anomalib's normalisation):
normalisation divides by the range of the validation scores, which after a short run can be ~1e-4 wide
and would turn any rounding difference into a large one. ``export_raw`` exports the same network without
normalisation and thresholding; ``check_parity`` runs it with OpenVINO and compares it with torch.
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .openvino import compiled_precision, openvino_config

if TYPE_CHECKING:
    import openvino
    import torch
    from anomalib.models.components import AnomalibModule


@contextmanager
def raw_outputs(model: "AnomalibModule") -> Iterator["AnomalibModule"]:
    """Within the block, ``model`` returns raw scores and maps: its post-processor neither normalises nor thresholds."""
    post_processor = model.post_processor
    if not post_processor:
        yield model
        return
    saved = post_processor.enable_normalization, post_processor.enable_thresholding
    post_processor.enable_normalization = post_processor.enable_thresholding = False
    try:
        yield model
    finally:
        post_processor.enable_normalization, post_processor.enable_thresholding = saved


def export_raw(model: "AnomalibModule", export_root: str | Path, input_size: tuple[int, int]) -> Path:
    """Export ``model`` to OpenVINO IR (FP32) without normalisation and thresholding; returns the ``.xml`` path."""
    with raw_outputs(model):
        return model.to_openvino(
            export_root=export_root,
            model_file_name="model_raw",
            input_size=input_size,
        )


@dataclass(frozen=True)
class Parity:
    """Largest differences between OpenVINO's and torch's raw outputs over a set of images.

    Attributes:
        precision: what OpenVINO ran (``compiled_precision``), whatever was requested.
        requested: the requested precision, ``None`` for the CPU's default.
        images: number of images compared.
        map_range: max - min of torch's raw anomaly maps over all images (the scale of the differences).
        max_map_difference: largest absolute anomaly-map difference.
        max_score_difference: largest absolute image-score difference.
    """

    precision: str
    requested: str | None
    images: int
    map_range: float
    max_map_difference: float
    max_score_difference: float

    @property
    def relative_map_difference(self) -> float:
        """``max_map_difference / map_range``."""
        return self.max_map_difference / self.map_range if self.map_range > 0 else float("inf")

    @property
    def relative_score_difference(self) -> float:
        """``max_score_difference / map_range`` (scores are in the map's units: its max or top-k mean)."""
        return self.max_score_difference / self.map_range if self.map_range > 0 else float("inf")

    def __str__(self) -> str:
        """One line for logs and reports."""
        asked = self.requested or "CPU default"
        return (
            f"OpenVINO {self.precision} (asked: {asked}) vs torch on {self.images} images: "
            f"max |map diff| {self.max_map_difference:.2e} ({self.relative_map_difference:.2e} of the map range "
            f"{self.map_range:.3g}), max |score diff| {self.max_score_difference:.2e}"
        )


def check_parity(
    model: "AnomalibModule",
    exported: "str | Path | openvino.Model",
    images: "Iterable[torch.Tensor]",
    precision: str | None = "f32",
) -> Parity:
    """Run the raw export ``exported`` (see ``export_raw``) with OpenVINO on the CPU and compare it with ``model``.

    Args:
        model: the torch model the export was made from.
        exported: the raw OpenVINO IR path, or an ``openvino.Model`` (e.g. from ``emulate_bf16``).
        images: image batches ``[N, 3, H, W]`` in [0, 1] at the export's input size.
        precision: OpenVINO inference precision; ``None`` leaves it to the CPU (what an unconfigured
            deployment gets).
    """
    import numpy as np
    import openvino as ov
    import torch

    core = ov.Core()
    network = exported if isinstance(exported, ov.Model) else core.read_model(exported)
    config = openvino_config(precision) if precision else {}
    compiled = core.compile_model(network, "CPU", config)
    request = compiled.create_infer_request()
    map_values: list[float] = []
    map_difference = score_difference = 0.0
    count = 0
    model.eval()
    with raw_outputs(model), torch.no_grad():
        for batch in images:
            reference = model(batch)
            outputs = request.infer({0: batch.numpy()})
            openvino_map = np.asarray(outputs["anomaly_map"]).reshape(reference.anomaly_map.shape)
            torch_map = reference.anomaly_map.numpy()
            openvino_score = np.asarray(outputs["pred_score"]).reshape(-1)
            torch_score = reference.pred_score.reshape(-1).numpy()
            map_difference = max(map_difference, float(np.abs(openvino_map - torch_map).max()))
            score_difference = max(score_difference, float(np.abs(openvino_score - torch_score).max()))
            map_values += [float(torch_map.min()), float(torch_map.max())]
            count += len(batch)
    if not count:
        msg = "check_parity: no images given"
        raise ValueError(msg)
    return Parity(
        precision=compiled_precision(compiled),
        requested=precision,
        images=count,
        map_range=max(map_values) - min(map_values),
        max_map_difference=map_difference,
        max_score_difference=score_difference,
    )
