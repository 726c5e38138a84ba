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


# Node types that OpenVINO's CPU plugin runs in bf16 because it pays (its bf16 enforcement's "significant" nodes):
# everything after the last of them on the way to an output, the graph's "tail", stays in f32.
_BF16_SIGNIFICANT = frozenset(
    {
        "Convolution",
        "GroupConvolution",
        "ConvolutionBackpropData",
        "GroupConvolutionBackpropData",
        "MatMul",
        "Interpolate",
    },
)
# Element-wise nodes that the CPU plugin fuses into the convolution before them (bias, batch norm, activation):
# the fused node writes its result once, in bf16, after the last of them.
_POST_OPS = frozenset(
    {"Add", "Subtract", "Multiply", "Relu", "Sigmoid", "Tanh", "Clamp", "Elu", "Swish", "HSwish", "Gelu", "PRelu"},
)


def _key(node: Any) -> tuple[str, str]:
    return node.get_friendly_name(), node.get_type_name()


def bf16_tail(model: "openvino.Model") -> set[tuple[str, str]]:
    """(name, type) of the nodes that OpenVINO's CPU plugin keeps in f32 at bf16: the graph's tail.

    The tail is every node from which an output is reached without passing a significant node (Convolution,
    MatMul, Interpolate...), as the plugin's ``Graph::EnforceInferencePrecision`` finds it; the significant
    nodes themselves and their fused element-wise post-ops still write bf16.
    """
    tail: set[tuple[str, str]] = set()
    stack = [result.input_value(0).get_node() for result in model.get_results()]
    while stack:
        node = stack.pop()
        if node.get_type_name() in _BF16_SIGNIFICANT or _key(node) in tail:
            continue
        tail.add(_key(node))
        stack.extend(value.get_node() for value in node.input_values())
    return tail


def _fused_ends(model: "openvino.Model") -> set[tuple[str, str]]:
    """The last node of each significant node's chain of fusable post-ops (where the fused node writes bf16)."""
    ends = set()
    for node in model.get_ordered_ops():
        if node.get_type_name() not in _BF16_SIGNIFICANT:
            continue
        end = node
        while True:
            consumers = list(end.output(0).get_target_inputs())
            if len(consumers) != 1:
                break
            consumer = consumers[0].get_node()
            others = [value for value in consumer.input_values() if _key(value.get_node()) != _key(end)]
            constant_operands = all(value.get_node().get_type_name() == "Constant" for value in others)
            if consumer.get_type_name() not in _POST_OPS or not constant_operands:
                break
            end = consumer
        ends.add(_key(end))
    return ends


def emulate_bf16(model: "openvino.Model", cpu_rules: bool = True) -> "openvino.Model":
    """A copy of ``model`` whose f32 values are rounded to bfloat16 where a bf16 CPU rounds them, computed in f32.

    Rounds the input, every weight and every intermediate result that OpenVINO's CPU plugin keeps in bf16:
    with ``cpu_rules`` (default), not the graph's tail (:func:`bf16_tail`, which the plugin computes in f32)
    except where a convolution with its fused post-ops writes its result; without, every value (the pessimistic
    bound: it also rounds the output probabilities, ~2e-3 at 0.5). The real kernels round once per fused node,
    this once per node, so it stays a little on the pessimistic side. Use it to estimate what bf16 would cost on
    a CPU that has no bf16; docs/deploy.md gives its measured ratio to real bf16.
    """
    import numpy as np
    import openvino as ov
    from openvino import opset13

    emulated = model.clone()
    keep = bf16_tail(emulated) - _fused_ends(emulated) if cpu_rules else set()
    splitter = opset13.constant(np.float32(_BF16_SPLITTER))
    for node in emulated.get_ordered_ops():
        if node.get_type_name() == "Result":
            continue
        kept = _key(node) in keep
        for output in node.outputs():
            if output.get_element_type() != ov.Type.f32:
                continue
            consumers = list(output.get_target_inputs())
            if kept:  # an f32 value of the tail is still rounded where a bf16 node (a pooling conv...) reads it
                consumers = [c for c in consumers if c.get_node().get_type_name() in _BF16_SIGNIFICANT]
                if not consumers:
                    continue
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
