"""Which layers carry real bf16's difference from f32: a per-layer comparison on a CPU that runs bf16.

OpenVINO's CPU plugin, asked for bf16, runs every Convolution/MatMul (and the element-wise nodes between them)
in bf16 with f32 accumulation, and keeps the graph's "tail" (everything after the last of them before each
output) in f32. Two measurements per layer, each against the f32 run of the same model on the same images:

* ``alone``: only this layer runs in bf16, every other node is kept in f32 with OpenVINO's per-node hint (the
  layer's own contribution: its inputs and weights rounded to bf16, its output written as bf16);
* ``kept``: everything runs in bf16 except this layer, kept in f32 (what keeping it in f32 would save).

The difference is the largest |raw anomaly map - f32's| (raw: before anomalib's normalisation, see
:func:`anomalib_anogen.deploy.check.raw_network`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .check import mark_f32, raw_network, runtime_precisions
from .openvino import openvino_config

if TYPE_CHECKING:
    import openvino

# The nodes whose precision OpenVINO's CPU plugin lowers to bf16 because it pays (its "significant" nodes).
LAYER_TYPES = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul", "Interpolate"})


@dataclass(frozen=True)
class LayerDifference:
    """One layer's share of bf16's difference.

    Attributes:
        name: the node's friendly name (the ONNX node's, e.g. ``/model/discriminative_subnetwork/.../Conv``).
        type: its OpenVINO type.
        alone: largest raw-map difference from f32 with only this layer in bf16.
        kept: largest raw-map difference from f32 with every layer in bf16 except this one.
    """

    name: str
    type: str
    alone: float
    kept: float


def _run(
    core: openvino.Core,
    network: openvino.Model,
    images: Sequence[np.ndarray],
    precision: str,
    keep: Sequence[str] = (),
) -> np.ndarray:
    import tempfile
    from pathlib import Path

    import openvino as ov

    if keep:
        marked = mark_f32(network.clone(), keep)
        with tempfile.TemporaryDirectory(prefix="anogen_layers_") as folder:
            xml = Path(folder) / "model.xml"
            ov.save_model(marked, xml, compress_to_fp16=False)
            network = core.read_model(xml.read_bytes(), xml.with_suffix(".bin").read_bytes())
    compiled = core.compile_model(network, "CPU", openvino_config(precision))
    request = compiled.create_infer_request()
    return np.stack([np.asarray(request.infer({0: image})["raw_anomaly_map"], dtype=np.float32) for image in images])


def layer_differences(
    network: openvino.Model,
    images: Sequence[np.ndarray],
    progress: bool = False,
    max_layers: int | None = None,
) -> tuple[float, list[LayerDifference], dict[str, str]]:
    """Per-layer bf16 differences of ``network`` (a deployable or raw IR) on ``images`` (1 x 3 x H x W arrays).

    Returns the difference with every layer in bf16, one :class:`LayerDifference` per layer (graph order; the
    first ``max_layers`` only, when given), and the precision each layer ran in under plain bf16 (from the
    runtime graph). Needs a CPU that runs bf16. Two compilations per layer: minutes for a DRAEM.
    """
    import openvino as ov
    from tqdm.auto import tqdm

    core = ov.Core()
    raw = raw_network(network)
    if "raw_anomaly_map" not in {name for output in raw.outputs for name in output.get_names()}:
        msg = "layer_differences: the model has no anomaly_map output"
        raise ValueError(msg)
    shape = list(images[0].shape)
    raw.reshape({raw.input(0): shape})
    layers = [(node.get_friendly_name(), node.get_type_name()) for node in raw.get_ordered_ops()]
    layers = [(name, kind) for name, kind in layers if kind in LAYER_TYPES][:max_layers]
    every = [node.get_friendly_name() for node in raw.get_ordered_ops() if node.get_type_name() not in {"Result"}]
    reference = _run(core, raw, images, "f32")
    bf16 = _run(core, raw, images, "bf16")
    compiled = core.compile_model(raw, "CPU", openvino_config("bf16"))
    ran_in = runtime_precisions(compiled, [name for name, _ in layers])
    del compiled
    total = float(np.abs(bf16 - reference).max())
    results = []
    for name, kind in tqdm(layers, desc="layers", disable=not progress, leave=False):
        others = [node for node in every if node != name]
        alone = float(np.abs(_run(core, raw, images, "bf16", others) - reference).max())
        kept = float(np.abs(_run(core, raw, images, "bf16", [name]) - reference).max())
        results.append(LayerDifference(name, kind, alone, kept))
    return total, results, ran_in
