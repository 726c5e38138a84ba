"""``anogen deploy-check``: measure every exported variant at every precision this CPU runs, on the user's images.

The line PC picks its precision from evidence. For the exported model(s) in a folder (the FP32 IR and any FP16 or
INT8 IR of the same model) and every inference precision this CPU runs natively (f32 always; bf16 where the CPU
has AVX-512 BF16 or AMX, with and without the narrow layers kept in f32; f16 where it has AMX-FP16), it
measures:

* latency: median of ``runs`` batch-1 calls on a real image, the variants interleaved, LATENCY hint;
* throughput: images/s with OpenVINO's THROUGHPUT hint and an ``AsyncInferQueue``;
* against the FP32 IR at f32, on every image: the share of image decisions (``pred_label``) that agree, the
  largest difference of the raw anomaly maps (before anomalib's normalisation) absolute and as a share of their
  range, and, with masks, the pixel AP and image AUROC differences in points.

It recommends the fastest variant whose decisions agree within ``tolerance`` (default: all agree) and writes
that choice beside the FP32 IR (:func:`choice_path`), where :func:`anomalib_anogen.deploy.load_inferencer` reads
it. Nothing is written when anything fails.
"""

from __future__ import annotations

import datetime
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalib_anogen.core.checks import (
    MAX_DEPLOY_RUNS,
    MAX_MIN_SPEEDUP,
    MAX_THROUGHPUT_IMAGES,
    UNIT_INTERVAL_OPEN_RIGHT,
    at_least,
    between,
    check_number,
    check_threads,
)
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import write_atomic
from anomalib_anogen.core.images import IMAGE_SUFFIXES, is_ignored, load_mask_array, load_rgb

from .choice import CHOICE_FORMAT, choice_path, cpu_record, files_sha256
from .openvino import CpuInfo, compiled_precision, cpu_info, openvino_config

if TYPE_CHECKING:
    import openvino

logger = logging.getLogger(__name__)

OUTPUTS = ("pred_score", "pred_label", "anomaly_map")  # what a deployable anomalib export returns
# Element-wise steps of anomalib's post-processing (normalisation, clamp) that lie between the network's raw
# output and the deployed one; walking back over them from an output finds the raw value.
_POST_PROCESSING_OPS = frozenset(
    {"Add", "Subtract", "Multiply", "Divide", "Clamp", "Minimum", "Maximum", "Convert", "Power"},
)
# Layers with at most this many input or output channels are the image-facing ones (narrow_layers).
NARROW_CHANNELS = 8


# ----------------------------------------------------------------------------------------------- options


@dataclass
class DeployCheckOptions:
    """What ``anogen deploy-check`` measures, on which images, and how it chooses.

    Attributes:
        model: Folder with the exported OpenVINO model(s) (anomalib's export folder or any folder above its
            ``weights/openvino``: the FP32 IR and, if there, FP16 and INT8 IRs of the same model), or one
            ``.xml`` to check alone.
        images: Folder of your own images (searched recursively: png, jpg, bmp, tif, webp), normal and
            defective; at least 2.
        masks: Folder of ground-truth masks for pixel AP and image AUROC: ``<name>_mask.png`` or ``<name>.png``
            at the image's path relative to ``images`` (MVTec AD's ``ground_truth`` layout) or anywhere below it
            by name. Images without a mask count as normal.
        tolerance: Share of image decisions that may differ from the FP32 IR at f32 for a variant to be chosen,
            in [0, 1); 0 (default): every decision must agree.
        runs: Timed batch-1 calls per variant; the median is the latency.
        warmup: Untimed calls per variant before timing.
        throughput_images: Images per variant run asynchronously with the THROUGHPUT hint (0: skip).
        threads: OpenVINO CPU threads (default: OpenVINO's, every core).
        max_images: Use only the first N images (sorted by path); default all.
        min_speedup: A variant replaces the FP32 IR at f32 only if it is at least this many times faster.
        write: Write the choice beside the FP32 IR (``false``: report only).
        progress: Show progress bars.
    """

    model: str
    images: str | None = None
    masks: str | None = None
    tolerance: float = 0.0
    runs: int = 10
    warmup: int = 2
    throughput_images: int = 16
    threads: int | None = None
    max_images: int | None = None
    min_speedup: float = 1.05
    write: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        """Refuse bad input with one line naming the option, before any work."""
        model = Path(self.model).expanduser()
        if not model.exists():
            msg = f"{model}: MODEL does not exist; give the folder of an OpenVINO export or its .xml"
            raise AnogenInputError(msg)
        if model.is_file() and model.suffix != ".xml":
            msg = f"{model}: MODEL must be a folder or an OpenVINO .xml file (got a {model.suffix or 'file'})"
            raise AnogenInputError(msg)
        if not self.images:
            msg = "--images is required: a folder of your own images (normal and defective)"
            raise AnogenInputError(msg)
        for option, value in (("images", self.images), ("masks", self.masks)):
            if value is not None and not Path(value).expanduser().is_dir():
                msg = f"{Path(value).expanduser()}: --{option} is not a folder"
                raise AnogenInputError(msg)
        check_number("--tolerance", self.tolerance, UNIT_INTERVAL_OPEN_RIGHT, "share of decisions allowed to differ")
        check_number("--runs", self.runs, between(1, MAX_DEPLOY_RUNS))
        check_number("--warmup", self.warmup, between(0, MAX_DEPLOY_RUNS))
        check_number("--throughput_images", self.throughput_images, between(0, MAX_THROUGHPUT_IMAGES), "0: skip")
        check_threads(self.threads)
        if self.max_images is not None:
            check_number("--max_images", self.max_images, at_least(2), "decisions need at least 2 images")
        check_number("--min_speedup", self.min_speedup, between(1, MAX_MIN_SPEEDUP, integer=False))


# ----------------------------------------------------------------------------------------------- exports


@dataclass(frozen=True)
class Exported:
    """One OpenVINO IR found in MODEL.

    Attributes:
        path: its ``.xml``.
        kind: ``FP32``, ``FP16`` (weights stored in f16) or ``INT8`` (NNCF-quantised).
        label: how reports name it (``INT8 IR``, or with its folder when there are several of a kind).
    """

    path: Path
    kind: str
    label: str


def ir_kind(network: openvino.Model) -> str:
    """``INT8`` for a quantised IR (FakeQuantize, or int8 weights), ``FP16`` for f16 weights, else ``FP32``."""
    import openvino as ov

    constants: set[Any] = set()
    for op in network.get_ops():
        name = op.get_type_name()
        if name in ("FakeQuantize", "FakeConvert"):
            return "INT8"
        if name == "Constant":
            constants.add(op.get_output_element_type(0))
    if constants & {ov.Type.i8, ov.Type.u8, ov.Type.i4, ov.Type.u4}:
        return "INT8"
    return "FP16" if ov.Type.f16 in constants else "FP32"


def _output_names(network: openvino.Model) -> set[str]:
    return {name for output in network.outputs for name in output.get_names()}


def find_exports(model: Path) -> tuple[Exported, list[Exported], list[str]]:
    """The FP32 reference IR, the other IRs (FP16, INT8) of MODEL, and notes on the files left out.

    Raises:
        AnogenInputError: no deployable FP32 IR, several, or IRs that do not take the same input.
    """
    import openvino as ov

    core = ov.Core()
    if model.is_file():
        candidates = [model]
    else:
        candidates = sorted(
            path
            for path in model.rglob("*.xml")
            if "openvino_cache" not in path.parts
            and not any(is_ignored(Path(part)) for part in path.relative_to(model).parts)
        )
    notes: list[str] = []
    found: list[tuple[Path, str, Any]] = []
    for path in candidates:
        if not path.with_suffix(".bin").is_file():
            notes.append(f"{path}: no {path.with_suffix('.bin').name} beside it, left out")
            continue
        try:
            network = core.read_model(path)
        except RuntimeError as error:
            if model.is_file():
                msg = f"{path}: not a readable OpenVINO IR ({str(error).splitlines()[0]})"
                raise AnogenInputError(msg) from error
            notes.append(f"{path}: not an OpenVINO IR, left out")
            continue
        missing = [name for name in OUTPUTS if name not in _output_names(network)]
        if missing:
            notes.append(f"{path}: no {', '.join(missing)} output (not anomalib's deployable export), left out")
            continue
        found.append((path, ir_kind(network), network))
    where = model if model.is_dir() else model.parent
    if not found:
        msg = (
            f"{model}: no deployable OpenVINO export found (an .xml with .bin and outputs {', '.join(OUTPUTS)}); "
            "export with `anomalib export ... --export_type openvino`"
        )
        raise AnogenInputError(msg)
    if model.is_file():
        path, kind, _ = found[0]
        return Exported(path, kind, f"{kind} IR"), [], notes
    fp32 = [item for item in found if item[1] == "FP32"]
    if len(fp32) != 1:
        names = ", ".join(str(item[0].relative_to(where)) for item in fp32) or "none"
        msg = (
            f"{model}: needs exactly one FP32 IR as the reference, found {len(fp32)} ({names}); "
            "give the folder of one model, or its FP32 .xml"
        )
        raise AnogenInputError(msg)
    reference_shape = fp32[0][2].input(0).get_partial_shape()
    kinds = [kind for _, kind, _ in found]
    exports = []
    for path, kind, network in found:
        if network.input(0).get_partial_shape() != reference_shape:
            msg = (
                f"{path}: input {network.input(0).get_partial_shape()} differs from the FP32 IR's {reference_shape}: "
                "not an export of the same model; keep one model's exports in MODEL"
            )
            raise AnogenInputError(msg)
        label = f"{kind} IR" if kinds.count(kind) == 1 else f"{kind} IR {path.relative_to(where)}"
        exports.append(Exported(path, kind, label))
    reference = next(item for item in exports if item.kind == "FP32")
    return reference, [item for item in exports if item is not reference], notes


# ----------------------------------------------------------------------------------------------- graph tools


def _constant_branch(node: Any) -> Any | None:
    """The input a Select with a constant, uniform condition passes on (``None`` if the condition varies)."""
    condition = node.input_value(0).get_node()
    if condition.get_type_name() != "Constant":
        return None
    values = np.asarray(condition.get_data())
    if values.all():
        return node.input_value(1)
    if not values.any():
        return node.input_value(2)
    return None


def raw_output_nodes(network: openvino.Model) -> dict[str, Any]:
    """The raw values behind ``anomaly_map`` and ``pred_score``: before anomalib's normalisation and clamp.

    Walks back from each output over the folded post-processing: element-wise steps whose other operands are
    constants (subtract the threshold, divide by the range, add 0.5, clamp) and selects whose condition is a
    constant (anomalib's "normalise only when statistics exist"); returns the output port reached. An output
    whose producer is not such a step maps to itself (its value is raw already).
    """
    import openvino as ov

    raw = {}
    for output in network.outputs:
        names = output.get_names()
        name = next((n for n in ("anomaly_map", "pred_score") if n in names), None)
        if name is None:
            continue
        port = output.get_node().input_value(0)
        while True:
            node = port.get_node()
            kind = node.get_type_name()
            if kind == "Select" and (branch := _constant_branch(node)) is not None:
                port = branch
                continue
            if kind not in _POST_PROCESSING_OPS:
                break
            variable = [
                value
                for value in node.input_values()
                if value.get_node().get_type_name() != "Constant" and value.get_element_type() == ov.Type.f32
            ]
            if len(variable) != 1:
                break
            port = variable[0]
        raw[name] = port
    return raw


def raw_network(network: openvino.Model) -> openvino.Model:
    """The part of ``network`` that computes the raw anomaly map and score (``raw_anomaly_map``, ``raw_pred_score``).

    The outputs are :func:`raw_output_nodes`; anomalib's post-processing after them is left out. A separate
    model rather than extra outputs of the deployed one: an extra output in the middle of an INT8 graph can make
    OpenVINO's low-precision transformations fail on the post-processing behind it.
    """
    import openvino as ov

    copy = network.clone()
    results = []
    for name, port in raw_output_nodes(copy).items():
        result = ov.opset13.result(port)
        result.output(0).get_tensor().set_names({f"raw_{name}"})
        results.append(result)
    if not results:
        msg = "raw_network: the model has neither an anomaly_map nor a pred_score output"
        raise ValueError(msg)
    return ov.Model(results, copy.get_parameters(), "raw")


def narrow_layers(network: openvino.Model, max_channels: int = NARROW_CHANNELS) -> list[str]:
    """Friendly names of the narrow layers: convolutions with at most ``max_channels`` input or output channels.

    In these models they are the layers that touch image-like tensors: the first convolution of each network (it
    reads the image), DRAEM's reconstruction (3 channels out) and its discriminative network's first convolution
    (image and reconstruction, 6 channels in), the logits (1-2 channels out) and DraemWeak's pooled score. On a
    real bf16 CPU they carry the largest single shares of bf16's difference (docs/deploy.md section 9: DRAEM
    compares the image with its reconstruction, and rounding either to 8 significant bits shows up in that
    comparison); their compute is small, so keeping them in f32 costs little. Upsamplings are left out: the CPU
    plugin runs an Interpolate between bf16 layers in bf16 whatever its hint (measured on a DraemWeak of widths
    8/4), so a hint on it would promise what does not happen.
    """
    names = []
    for node in network.get_ordered_ops():
        if node.get_type_name() in ("Convolution", "GroupConvolution", "ConvolutionBackpropData"):
            weights = node.input_value(1).get_partial_shape()
            if weights.rank.is_dynamic or weights[0].is_dynamic or weights[1].is_dynamic:
                continue
            if min(weights[0].get_length(), weights[1].get_length()) <= max_channels:  # (out, in) channels
                names.append(node.get_friendly_name())
    return names


def mark_f32(network: openvino.Model, names: Sequence[str]) -> openvino.Model:
    """Mark the nodes ``names`` of ``network`` (in place) with OpenVINO's per-node "keep f32" hint; returns it.

    The hint is ``ov::disable_fp16_compression``, which OpenVINO's CPU plugin also honours at bf16. Python has no
    setter for the typed runtime attribute: it is set under its serialised name, and takes effect once the
    model has gone through OpenVINO's IR writer and reader (:func:`with_hints`, ``load_inferencer``), which
    turn it into the typed one; :func:`runtime_precisions` shows what really runs.

    Raises:
        ValueError: a name that no node has.
    """
    wanted = set(names)
    found = set()
    for node in network.get_ops():
        if node.get_friendly_name() in wanted:
            node.get_rt_info()["precise_0"] = ""
            found.add(node.get_friendly_name())
    missing = wanted - found
    if missing:
        msg = f"no node named {', '.join(sorted(missing))} in the model"
        raise ValueError(msg)
    return network


def with_hints(network: openvino.Model, names: Sequence[str]) -> openvino.Model:
    """A copy of ``network`` whose nodes ``names`` OpenVINO's CPU plugin keeps in f32 at bf16/f16 precision."""
    import tempfile

    import openvino as ov

    copy = mark_f32(network.clone(), names)
    with tempfile.TemporaryDirectory(prefix="anogen_hints_") as folder:
        xml = Path(folder) / "model.xml"
        ov.save_model(copy, xml, compress_to_fp16=False)
        return ov.Core().read_model(xml.read_bytes(), xml.with_suffix(".bin").read_bytes())


def runtime_precisions(compiled: openvino.CompiledModel, names: Sequence[str]) -> dict[str, str]:
    """The precision each of ``names`` really runs in, from OpenVINO's runtime (executable) graph."""
    wanted = set(names)
    found: dict[str, str] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        original = str(info["originalLayersNames"].value) if "originalLayersNames" in info else ""
        layers = set(original.split(",")) if original else {node.get_friendly_name()}
        for name in layers & wanted:
            found[name] = str(info["runtimePrecision"].value) if "runtimePrecision" in info else "?"
    return found


# ----------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Sample:
    """One of the user's images and its ground-truth mask (``None``: no mask found, a normal image)."""

    image: Path
    mask: Path | None


def _files(folder: Path, skip: Path | None = None) -> list[Path]:
    """Image files below ``folder`` (sorted), leaving out hidden ones and anything below ``skip``."""
    found = []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(folder)
        if any(is_ignored(Path(part)) for part in relative.parts):
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        found.append(path)
    return sorted(found)


def find_samples(images: Path, masks: Path | None, max_images: int | None) -> tuple[list[Sample], list[str]]:
    """The images and the mask of each (by relative path, else by a unique file name); notes on what did not match.

    A mask is ``<stem>_mask.<ext>`` or ``<stem>.<ext>`` at the image's path relative to ``images`` (MVTec AD's
    ``ground_truth/<defect>/<stem>_mask.png``), or the only file of that name anywhere below ``masks``.
    """
    mask_root = masks.resolve() if masks else None
    files = _files(images, skip=mask_root)
    if max_images is not None:
        files = files[:max_images]
    if len(files) < 2:
        msg = f"{images}: --images holds {len(files)} image(s); deploy-check needs at least 2 (normal and defective)"
        raise AnogenInputError(msg)
    notes: list[str] = []
    if masks is None:
        return [Sample(path, None) for path in files], notes
    mask_files = _files(masks)
    by_relative = {path.relative_to(masks).with_suffix("").as_posix(): path for path in mask_files}
    by_name: dict[str, list[Path]] = {}
    for path in mask_files:
        by_name.setdefault(path.stem, []).append(path)
    samples, used = [], set()
    for path in files:
        stem = path.relative_to(images).with_suffix("").as_posix()
        candidates = [by_relative.get(f"{stem}_mask"), by_relative.get(stem)]
        candidates += [named[0] for key in (f"{path.stem}_mask", path.stem) if len(named := by_name.get(key, [])) == 1]
        mask = next((candidate for candidate in candidates if candidate is not None), None)
        if mask is not None:
            used.add(mask)
        samples.append(Sample(path, mask))
    if not used:
        msg = (
            f"{masks}: --masks matched none of the {len(files)} images (expected <name>_mask.png or <name>.png at "
            f"the image's path relative to {images}, or a unique name)"
        )
        raise AnogenInputError(msg)
    unused = len(mask_files) - len(used)
    if unused and max_images is None:
        notes.append(f"{unused} mask(s) in {masks} matched no image")
    return samples, notes


def load_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """``path`` as a float32 1 x 3 x H x W array in [0, 1], resized to ``size`` (H, W) when given."""
    from PIL import Image

    image = load_rgb(path)
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def load_mask(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """The mask as a bool H x W array at ``size`` (nearest neighbour); all False without a mask."""
    from PIL import Image

    if path is None:
        return np.zeros(size, dtype=bool)
    mask = load_mask_array(path)
    if mask.shape != size:
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
        mask = np.asarray(resized) > 127
    return mask


# ----------------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Variant:
    """One way to run the model: an IR at an inference precision, optionally with nodes kept in f32.

    Attributes:
        export: the IR.
        precision: OpenVINO's ``INFERENCE_PRECISION_HINT`` (``f32``, ``bf16``, ``f16``).
        keep_f32: friendly names of nodes kept in f32 (per-node hint); empty for none.
    """

    export: Exported
    precision: str
    keep_f32: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """How reports name it, e.g. ``INT8 IR at f32`` or ``FP32 IR at bf16, narrow layers f32``."""
        hint = ", narrow layers f32" if self.keep_f32 else ""
        return f"{self.export.label} at {self.precision}{hint}"


@dataclass
class VariantResult:
    """What one variant measured, and how it compares with the FP32 IR at f32 on the same images.

    Attributes:
        name: the variant's name (:attr:`Variant.name`).
        ir: its ``.xml``.
        kind: ``FP32``, ``FP16`` or ``INT8``.
        precision: the inference precision asked for.
        ran_in: the precision OpenVINO reports it compiled to.
        keep_f32: nodes kept in f32.
        latency_ms: median batch-1 latency.
        latency_ratio: ``latency_ms`` over the reference's.
        images_per_s: THROUGHPUT-hint images/s (``None``: not measured).
        decisions_agree: share of images whose ``pred_label`` equals the reference's.
        decisions_changed: how many differ.
        max_raw_map_difference: largest |raw anomaly map - reference's| (raw: before normalisation).
        relative_raw_map_difference: that over the reference's raw map range.
        max_raw_score_difference: largest |raw image score - reference's|.
        pixel_ap: pixel average precision in points (with masks).
        image_auroc: image AUROC in points (with masks holding both normal and defective images).
        pixel_ap_difference: ``pixel_ap`` minus the reference's, points.
        image_auroc_difference: ``image_auroc`` minus the reference's, points.
    """

    name: str
    ir: str
    kind: str
    precision: str
    ran_in: str
    keep_f32: list[str]
    latency_ms: float = float("nan")
    latency_ratio: float = float("nan")
    images_per_s: float | None = None
    decisions_agree: float = float("nan")
    decisions_changed: int = 0
    max_raw_map_difference: float = float("nan")
    relative_raw_map_difference: float = float("nan")
    max_raw_score_difference: float = float("nan")
    pixel_ap: float | None = None
    image_auroc: float | None = None
    pixel_ap_difference: float | None = None
    image_auroc_difference: float | None = None


def supported_precisions(info: CpuInfo) -> tuple[list[str], list[str]]:
    """The inference precisions this CPU runs natively, and one line for each it does not."""
    precisions, skipped = ["f32"], []
    flags = " ".join(info.flags) or "unknown"
    if info.native_bf16:
        precisions.append("bf16")
    else:
        skipped.append(f"bf16: not supported by this CPU (no AVX-512 BF16 or AMX; flags: {flags}); skipped")
    if "FP16" in info.capabilities:
        precisions.append("f16")
    else:
        skipped.append("f16: not supported by this CPU (no AVX-512 FP16 or AMX-FP16); skipped")
    return precisions, skipped


def _compile(
    core: openvino.Core,
    network: openvino.Model,
    variant: Variant,
    shape: list[int],
    hint: str,
    threads: int | None,
) -> openvino.CompiledModel:
    network = network.clone()
    network.reshape({network.input(0): shape})  # a line PC's fixed batch-1 input: static shapes fuse more
    if variant.keep_f32:
        network = with_hints(network, variant.keep_f32)
    properties: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if threads:
        properties["INFERENCE_NUM_THREADS"] = threads
    try:
        return core.compile_model(network, "CPU", openvino_config(variant.precision, **properties))
    except RuntimeError as error:
        msg = f"{variant.export.path}: OpenVINO cannot compile it at {variant.precision} ({str(error).splitlines()[0]})"
        raise AnogenInputError(msg) from error


def _bar(iterable: Any, total: int, description: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, dynamic_ncols=True, disable=not enabled, leave=False)


def _scalar(value: Any) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def _compare(
    core: openvino.Core,
    networks: dict[Exported, openvino.Model],
    variants: list[Variant],
    samples: list[Sample],
    size: tuple[int, int],
    options: DeployCheckOptions,
    notes: list[str],
) -> tuple[dict[Variant, dict[str, Any]], dict[Variant, openvino.CompiledModel], np.ndarray]:
    """Run every variant on every image (variants in turn per image): its deployed outputs and its raw ones.

    Returns per variant its outputs, the compiled deployed models (for the latency), and the masks.
    """
    shape = [1, 3, *size]
    deployed = {v: _compile(core, networks[v.export], v, shape, "LATENCY", options.threads) for v in variants}
    raw = {}
    for variant in variants:
        try:
            raw[variant] = _compile(core, raw_network(networks[variant.export]), variant, shape, "LATENCY", None)
        except (AnogenInputError, ValueError) as error:
            notes.append(f"{variant.name}: no raw outputs ({error}); its normalised map and score are compared")
    requests = {variant: model.create_infer_request() for variant, model in deployed.items()}
    raw_requests = {variant: model.create_infer_request() for variant, model in raw.items()}
    keep_maps = options.masks is not None
    outputs: dict[Variant, dict[str, Any]] = {
        variant: {"labels": [], "scores": [], "raw_scores": [], "maps": [], "raw_maps": []} for variant in variants
    }
    masks = []
    for sample in _bar(samples, len(samples), "compare", options.progress):
        image = load_image(sample.image, size)
        masks.append(load_mask(sample.mask, size) if keep_maps else None)
        for variant, request in requests.items():
            result = request.infer({0: image})
            found = outputs[variant]
            anomaly_map = np.asarray(result["anomaly_map"], dtype=np.float32).reshape(size)
            found["labels"].append(bool(_scalar(result["pred_label"])))
            found["scores"].append(_scalar(result["pred_score"]))
            raw_map, raw_score = anomaly_map, result["pred_score"]
            if variant in raw_requests:  # a deployable IR has both outputs, so its raw network has both
                raw_result = raw_requests[variant].infer({0: image})
                raw_map, raw_score = raw_result["raw_anomaly_map"], raw_result["raw_pred_score"]
            found["raw_maps"].append(np.asarray(raw_map, dtype=np.float32).reshape(size).copy())
            found["raw_scores"].append(_scalar(raw_score))
            if keep_maps:
                found["maps"].append(anomaly_map.copy())
    return outputs, deployed, np.stack(masks) if keep_maps else np.zeros(0)


def _latency(
    compiled: dict[Variant, openvino.CompiledModel],
    image: np.ndarray,
    options: DeployCheckOptions,
) -> dict[Variant, float]:
    """Median batch-1 latency (ms) of each variant, variants interleaved round by round."""
    requests = {variant: model.create_infer_request() for variant, model in compiled.items()}
    for request in requests.values():
        for _ in range(options.warmup + 1):
            request.infer({0: image})
    times: dict[Variant, list[float]] = {variant: [] for variant in requests}
    for _ in _bar(range(options.runs), options.runs, "latency", options.progress):
        for variant, request in requests.items():
            started = time.perf_counter()
            request.infer({0: image})
            times[variant].append(time.perf_counter() - started)
    return {variant: 1000 * statistics.median(values) for variant, values in times.items()}


def throughput(
    compiled: dict[Variant, openvino.CompiledModel], image: np.ndarray, count: int, rounds: int = 4
) -> dict[Variant, float]:
    """Images/s of each variant with the THROUGHPUT hint: the median of ``rounds`` rounds of asynchronous requests.

    ``count`` requests per variant in all, the variants in turn each round, so a busy machine slows them alike.
    """
    import openvino as ov

    queues = {}
    for variant, model in compiled.items():
        queue = ov.AsyncInferQueue(model, model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        for _ in range(len(queue)):  # warm-up: one call per request
            queue.start_async({0: image})
        queue.wait_all()
        queues[variant] = queue
    per_round = max(1, count // rounds)
    rates: dict[Variant, list[float]] = {variant: [] for variant in queues}
    for _ in range(min(rounds, count)):
        for variant, queue in queues.items():
            started = time.perf_counter()
            for _ in range(per_round):
                queue.start_async({0: image})
            queue.wait_all()
            rates[variant].append(per_round / (time.perf_counter() - started))
    return {variant: statistics.median(values) for variant, values in rates.items()}


def _points(metric: Callable[..., Any], scores: Any, targets: Any) -> float:
    return 100 * float(metric(scores, targets))


# ----------------------------------------------------------------------------------------------- the command


@dataclass
class DeployReport:
    """What ``anogen deploy-check`` found, measured and chose.

    Attributes:
        cpu: the CPU measured on.
        reference: the FP32 IR (the variant ``FP32 IR at f32`` is the reference of every comparison).
        images: images compared; ``anomalous``: how many have a non-empty mask (``None`` without masks).
        input_size: the IR's input (H, W) the images were resized to.
        results: one per variant, the reference first.
        chosen: the recommended variant's name.
        reason: why it was chosen.
        choice_file: where the choice was written (``None``: not written).
        notes: files left out, precisions this CPU does not run, and other remarks.
    """

    cpu: CpuInfo
    reference: Path
    images: int
    anomalous: int | None
    input_size: tuple[int, int]
    results: list[VariantResult]
    chosen: str
    reason: str
    choice_file: Path | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The results as a fixed-width table, one row per variant."""
        with_masks = self.anomalous is not None
        header = ["variant", "ran in", "ms", "x f32", "img/s", "same decisions", "max raw map diff"]
        if with_masks:
            header += ["pixel AP", "d AP", "img AUROC", "d AUROC"]
        rows = [header]
        for result in self.results:
            changed = f" ({result.decisions_changed} differ)" if result.decisions_changed else ""
            row = [
                ("* " if result.name == self.chosen else "  ") + result.name,
                result.ran_in,
                f"{result.latency_ms:.1f}",
                f"{result.latency_ratio:.3f}",
                "-" if result.images_per_s is None else f"{result.images_per_s:.2f}",
                f"{100 * result.decisions_agree:.1f} %{changed}",
                f"{result.max_raw_map_difference:.2e} ({100 * result.relative_raw_map_difference:.2f} %)",
            ]
            if with_masks:
                row += [_pts(result.pixel_ap), _pts(result.pixel_ap_difference, signed=True)]
                row += [_pts(result.image_auroc), _pts(result.image_auroc_difference, signed=True)]
            rows.append(row)
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        """The full report: CPU, images, notes, table, choice."""
        masks = f", {self.anomalous} with a defect in their mask" if self.anomalous is not None else ", no masks"
        lines = [
            f"CPU: {self.cpu}",
            f"reference: {self.reference} (FP32 IR at f32)",
            f"images: {self.images}{masks}; resized to {self.input_size[0]}x{self.input_size[1]}, the IR's input",
            *(f"note: {note}" for note in self.notes),
            "",
            self.table(),
            "",
            "raw map diff: largest |anomaly map - the reference's| before anomalib's normalisation (in % of the "
            "reference's raw map range); latency: median batch 1; img/s: THROUGHPUT hint, asynchronous",
            f"chosen: {self.chosen}: {self.reason}",
        ]
        if self.choice_file is not None:
            lines.append(f"wrote {self.choice_file}: load_inferencer() on the FP32 IR now runs this choice")
        else:
            lines.append("choice not written (--write false)")
        return "\n".join(lines)


def _pts(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _variants(reference: Exported, others: list[Exported], precisions: list[str], narrow: list[str]) -> list[Variant]:
    variants = [Variant(reference, "f32")]
    for export in [reference, *others]:
        for precision in precisions:
            variant = Variant(export, precision)
            if variant not in variants:
                variants.append(variant)
            if precision != "f32" and export.kind != "INT8" and narrow:
                variants.append(Variant(export, precision, tuple(narrow)))
    return variants


def _choose(results: list[VariantResult], tolerance: float, min_speedup: float) -> tuple[VariantResult, str]:
    reference = results[0]
    allowed = [result for result in results if 1 - result.decisions_agree <= tolerance + 1e-12]
    fastest = min(allowed, key=lambda result: result.latency_ms)
    agree = "every decision agrees" if tolerance == 0 else f"decisions agree within --tolerance {tolerance:g}"
    excluded = [result.name for result in results if result not in allowed]
    also = f"; left out for changed decisions: {', '.join(excluded)}" if excluded else ""
    if fastest is reference or fastest.latency_ms * min_speedup > reference.latency_ms:
        why = (
            f"no variant whose {agree.replace('every decision agrees', 'decisions all agree')} is "
            f"{min_speedup:g}x faster than it{also}"
        )
        return reference, why
    speed = reference.latency_ms / fastest.latency_ms
    return fastest, f"the fastest variant where {agree} with the reference: {speed:.2f}x faster at batch 1{also}"


def deploy_check(options: DeployCheckOptions) -> DeployReport:
    """Measure every exported variant of a model at every precision this CPU runs, and choose one (see module doc).

    Raises:
        AnogenInputError: bad input (no export, no images, unreadable files); nothing is written then.
    """
    import openvino as ov
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    model = Path(options.model).expanduser()
    images_folder = Path(str(options.images)).expanduser()
    masks_folder = Path(options.masks).expanduser() if options.masks else None
    reference, others, notes = find_exports(model)
    samples, sample_notes = find_samples(images_folder, masks_folder, options.max_images)
    notes += sample_notes
    info = cpu_info()
    precisions, skipped = supported_precisions(info)
    notes += skipped
    core = ov.Core()
    networks = {export: core.read_model(export.path) for export in [reference, *others]}
    shape = networks[reference].input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or shape[2].is_dynamic or shape[3].is_dynamic:
        size = tuple(load_rgb(samples[0].image).size[::-1])
        notes.append(f"the IR takes any image size; all images resized to the first one's, {size[0]}x{size[1]}")
    else:
        size = (shape[2].get_length(), shape[3].get_length())
    narrow = narrow_layers(networks[reference]) if len(precisions) > 1 else []
    variants = _variants(reference, others, precisions, narrow)
    names = ", ".join(variant.name for variant in variants)
    logger.info("deploy-check: %d variant(s) on %d image(s): %s", len(variants), len(samples), names)

    logger.info("deploy-check: [1/3] every variant on every image")
    found, compiled, masks = _compare(core, networks, variants, samples, size, options, notes)
    ran_in = {variant: compiled_precision(model) for variant, model in compiled.items()}
    logger.info("deploy-check: [2/3] latency, %d run(s) per variant after %d warm-up", options.runs, options.warmup)
    first_image = load_image(samples[0].image, size)
    latency = _latency(compiled, first_image, options)
    del compiled
    rates: dict[Variant, float] = {}
    if options.throughput_images:
        logger.info("deploy-check: [3/3] throughput, %d images per variant", options.throughput_images)
        compiled = {
            v: _compile(core, networks[v.export], v, [1, 3, *size], "THROUGHPUT", options.threads) for v in variants
        }
        rates = throughput(compiled, first_image, options.throughput_images)
        del compiled

    base = found[variants[0]]
    base_raw = np.stack(base["raw_maps"])
    raw_range = float(base_raw.max() - base_raw.min())
    labels = torch.tensor([bool(mask.any()) for mask in masks]) if masks.size else None
    two_classes = labels is not None and 0 < int(labels.sum()) < len(labels)
    if labels is not None and not two_classes:
        notes.append("image AUROC needs normal and defective images among the masked ones: not computed")
    if labels is not None and not bool(masks.any()):
        notes.append("no mask has a defect pixel: pixel AP not computed")
    results = []
    for variant in variants:
        mine = found[variant]
        same = np.array(mine["labels"]) == np.array(base["labels"])
        raw_difference = float(np.abs(np.stack(mine["raw_maps"]) - base_raw).max())
        result = VariantResult(
            name=variant.name,
            ir=str(variant.export.path),
            kind=variant.export.kind,
            precision=variant.precision,
            ran_in=ran_in[variant],
            keep_f32=list(variant.keep_f32),
            latency_ms=latency[variant],
            latency_ratio=latency[variant] / latency[variants[0]],
            images_per_s=rates.get(variant),
            decisions_agree=float(same.mean()),
            decisions_changed=int((~same).sum()),
            max_raw_map_difference=raw_difference,
            relative_raw_map_difference=raw_difference / raw_range if raw_range > 0 else float("inf"),
            max_raw_score_difference=float(np.abs(np.array(mine["raw_scores"]) - np.array(base["raw_scores"])).max()),
        )
        if labels is not None:
            if masks.any():
                maps = torch.from_numpy(np.stack(mine["maps"]).reshape(-1))
                result.pixel_ap = _points(binary_average_precision, maps, torch.from_numpy(masks.reshape(-1)).long())
            if two_classes:
                result.image_auroc = _points(binary_auroc, torch.tensor(mine["scores"]), labels.long())
        results.append(result)
    for result in results:
        if result.pixel_ap is not None:
            result.pixel_ap_difference = result.pixel_ap - results[0].pixel_ap
        if result.image_auroc is not None:
            result.image_auroc_difference = result.image_auroc - results[0].image_auroc
    chosen, reason = _choose(results, options.tolerance, options.min_speedup)
    report = DeployReport(
        cpu=info,
        reference=reference.path,
        images=len(samples),
        anomalous=int(labels.sum()) if labels is not None else None,
        input_size=size,
        results=results,
        chosen=chosen.name,
        reason=reason,
        notes=notes,
    )
    if options.write:
        chosen_variant = variants[results.index(chosen)]
        report.choice_file = write_choice(reference, chosen_variant, chosen, report, options)
    return report


def write_choice(
    reference: Exported,
    variant: Variant,
    result: VariantResult,
    report: DeployReport,
    options: DeployCheckOptions,
) -> Path:
    """Write ``<reference>.deploy.json`` atomically (see :mod:`anomalib_anogen.deploy.choice`); returns its path."""
    import os

    import openvino as ov

    file = choice_path(reference.path)
    folder = file.parent
    data = {
        "format": CHOICE_FORMAT,
        "variant": variant.name,
        "ir": Path(os.path.relpath(variant.export.path.resolve(), folder.resolve())).as_posix(),
        "kind": variant.export.kind,
        "precision": variant.precision,
        "keep_f32": list(variant.keep_f32),
        "tolerance": options.tolerance,
        "cpu": cpu_record(report.cpu),
        "openvino": ov.get_version(),
        "made": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "images": report.images,
        "measured": asdict(result),
        "reference": asdict(report.results[0]),
        "files_sha256": files_sha256(folder, sorted({reference.path, variant.export.path})),
    }
    write_atomic(file, (json.dumps(data, indent=2) + "\n").encode())
    return file


def deploy_check_command(options: DeployCheckOptions) -> DeployReport:
    """``anogen deploy-check``: measure, print the table and the choice (written beside the FP32 IR)."""
    report = deploy_check(options)
    print(report)
    return report
