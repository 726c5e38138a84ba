"""OpenVINO inference precision as an explicit choice, what the CPU supports, and a bf16 emulation.

anomalib's ``OpenVINOInferencer`` already passes its ``config`` to ``Core.compile_model``; the only
thing missing for a reproducible deployment is a validated precision entry in that config, which
``openvino_config`` and ``load_inferencer`` add.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import openvino
    from anomalib.deploy import OpenVINOInferencer

Precision = Literal["f32", "bf16", "f16"]
PRECISIONS: tuple[str, ...] = ("f32", "bf16", "f16")

# CPU flags that decide OpenVINO's precision and INT8 speed, as /proc/cpuinfo spells them.
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")

# Veltkamp splitting: x * (2**16 + 1) - (x * (2**16 + 1) - x) keeps the 8 leading significant bits of an f32,
# i.e. rounds it to the nearest bfloat16 value, with f32 arithmetic only (OpenVINO folds a plain
# f32 -> bf16 -> f32 Convert pair away, so it cannot be used for this).
_BF16_SPLITTER = 65537.0


def openvino_config(precision: str = "f32", **properties: Any) -> dict[str, Any]:
    """An OpenVINO ``compile_model`` config that fixes the inference precision.

    Args:
        precision: ``f32`` (the torch model's numbers), ``bf16`` (faster on CPUs with AVX-512 BF16 / AMX,
            about 2-3 significant digits) or ``f16``. A CPU without the precision runs ``f32`` instead
            (OpenVINO's own fallback; ``compiled_precision`` tells which one ran). INT8 is not a precision
            hint: it is a property of the exported model (``--compression_type INT8_PTQ``).
        **properties: Further OpenVINO properties, e.g. ``INFERENCE_NUM_THREADS=2``.

    Returns:
        The config dict for ``OpenVINOInferencer(config=...)`` or ``Core.compile_model``.
    """
    if precision not in PRECISIONS:
        msg = (
            f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}. INT8 is chosen at export "
            "(anomalib export --compression_type INT8_PTQ) and run with precision f32 for its remaining layers."
        )
        raise ValueError(msg)
    return {"INFERENCE_PRECISION_HINT": precision, **properties}


CACHE_FOLDER = "openvino_cache"  # OpenVINO's compiled-model cache, beside the model it caches


def load_inferencer(path: str | Path, precision: str = "f32", device: str = "CPU") -> "OpenVINOInferencer":
    """Anomalib's ``OpenVINOInferencer`` for ``path`` with the inference precision set explicitly.

    OpenVINO's compiled-model cache goes beside the model (``<model folder>/openvino_cache``, OpenVINO's
    ``CACHE_DIR`` in the compile config) instead of anomalib's ``./openvino_cache`` of the current directory:
    nothing is written to the current directory, and the working directory is never changed (a program with
    threads may rely on it).
    """
    from ._inferencer import Inferencer

    path = Path(path).resolve()
    config = openvino_config(precision, CACHE_DIR=str(path.parent / CACHE_FOLDER))
    return Inferencer(path=path, device=device, config=config)


def compiled_precision(compiled: "openvino.CompiledModel") -> str:
    """The precision a compiled model really runs in (``f32``, ``bf16``, ``f16``), as OpenVINO reports it."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


@dataclass(frozen=True)
class CpuInfo:
    """What decides OpenVINO's numbers and speed on this CPU.

    Attributes:
        name: OpenVINO's name of the CPU.
        default_precision: the precision OpenVINO picks when none is given.
        capabilities: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` (``BF16`` where bf16 runs natively).
        flags: the relevant instruction-set flags of /proc/cpuinfo (empty where it does not exist).
    """

    name: str
    default_precision: str
    capabilities: tuple[str, ...]
    flags: tuple[str, ...]

    @property
    def native_bf16(self) -> bool:
        """Whether OpenVINO runs bf16 on this CPU (otherwise a bf16 request runs in f32)."""
        return "BF16" in self.capabilities

    def __str__(self) -> str:
        """One line for logs and reports."""
        flags = " ".join(self.flags) or "unknown"
        return f"{self.name}; OpenVINO default precision {self.default_precision}; flags: {flags}"


def cpu_info() -> CpuInfo:
    """OpenVINO's view of this CPU: name, default inference precision, capabilities and instruction-set flags."""
    import openvino as ov

    core = ov.Core()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return CpuInfo(
        name=str(core.get_property("CPU", "FULL_DEVICE_NAME")),
        default_precision=core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name(),
        capabilities=tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        flags=tuple(flag for flag in _CPU_FLAGS if flag in flags),
    )


def emulate_bf16(model: "openvino.Model") -> "openvino.Model":
    """A copy of ``model`` whose every f32 value is rounded to bfloat16, computed in f32 on any CPU.

    Rounds the input, every weight and every intermediate result, as a CPU that runs the whole graph in
    bf16 would (real bf16 kernels accumulate in f32 and keep a few layers in f32, so this is the
    pessimistic side of the real thing). Use it to estimate what bf16 would cost on a CPU that has no bf16.
    """
    import numpy as np
    import openvino as ov
    from openvino import opset13

    emulated = model.clone()
    splitter = opset13.constant(np.float32(_BF16_SPLITTER))
    for node in emulated.get_ordered_ops():
        if node.get_type_name() == "Result":
            continue
        for output in node.outputs():
            if output.get_element_type() != ov.Type.f32:
                continue
            consumers = list(output.get_target_inputs())
            scaled = opset13.multiply(output, splitter)
            rounded = opset13.subtract(scaled, opset13.subtract(scaled, output))
            for consumer in consumers:
                consumer.replace_source_output(rounded.output(0))
            if any(consumer.get_node().get_type_name() == "Result" for consumer in consumers):
                names = output.get_names()  # the model's output names (anomaly_map, ...) move to the rounded value
                output.get_tensor().set_names(set())
                rounded.output(0).get_tensor().set_names(names)
    emulated.validate_nodes_and_infer_types()
    return emulated
