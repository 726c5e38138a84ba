"""What every model of this plugin shares, as a mixin placed before ``AnomalibModule``.

``DraemWeak`` borrows anomalib's ``Draem`` methods (its constructor would build a full-width network and
download DTD) and ``Destseg`` is its own network, so the two share training on synthetic anomalies through
this mixin rather than a common base model.
"""

import math
import warnings
from pathlib import Path
from typing import Any

from anomalib import LearningType
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from torch import nn

from anomalib_anogen.arguments import note_plugin_model
from anomalib_anogen.data.generators import GeneratorSpec, resolve_generator
from anomalib_anogen.metrics import anogen_evaluator

# A normalisation range narrower than this share of the values' magnitude amplifies rounding noise
# (another CPU, OpenVINO bf16) by 1 / width: 1e-3 means more than a thousandfold.
DEGENERATE_RELATIVE_WIDTH = 1e-3
# The ONNX opset torch's exporter produces natively (see ``to_onnx``).
ONNX_OPSET = 18


def checked_generator(
    generator: str | dict[str, Any],
    *,
    dtd_dir: Path | str | None,
    anomaly_probability: float,
    beta: float | tuple[float, float],
    bank_dir: Path | str | None,
    bank_probability: float,
    exclude_defects: list[str] | None,
    allow_incomplete_bank: bool,
    **fixed: Any,
) -> GeneratorSpec:
    """A weak model's generator arguments resolved to a spec, checked by the generator class (no file is read).

    ``fixed`` are settings the model decides, not the user (DestsegWeak's ``clean_share``).
    """
    return resolve_generator(
        generator,
        dtd_dir=dtd_dir,
        probability=anomaly_probability,
        blend_factor=beta,
        bank_dir=bank_dir,
        bank_probability=bank_probability,
        exclude_defects=exclude_defects or [],
        allow_incomplete_bank=allow_incomplete_bank,
        **fixed,
    )


def degenerate_normalisation(post_processor: PostProcessor | None) -> str | None:
    """Why the post-processor's normalisation statistics are degenerate, or ``None`` when they are usable.

    anomalib normalises scores as ``(x - threshold) / (max - min) + 0.5`` with ``min``/``max`` from the
    validation set. When ``max - min`` is ~0 (a model barely trained, or validated on too few or
    identical images), any tiny numeric difference becomes a large change of the normalised output.
    """
    if not isinstance(post_processor, PostProcessor) or not post_processor.enable_normalization:
        return None
    problems = []
    for level in ("image", "pixel"):
        low = float(getattr(post_processor, f"{level}_min"))
        high = float(getattr(post_processor, f"{level}_max"))
        if math.isnan(low) or math.isnan(high):
            continue  # never validated: anomalib leaves the outputs unnormalised
        width = high - low
        if width <= DEGENERATE_RELATIVE_WIDTH * max(abs(low), abs(high), 1e-12):
            amplification = f"x{1 / width:.0e}" if width > 0 else "to a 0/0.5/1 step"
            span = f"[{low:.6g}, {high:.6g}]"
            problems.append(f"{level} scores span only {span} (normalisation amplifies {amplification})")
    if not problems:
        return None
    return (
        "degenerate normalisation statistics: "
        + "; ".join(problems)
        + ". Normalised scores, maps and decisions then change with any rounding difference (another CPU, "
        "OpenVINO bf16). Cause: the model is barely trained or was validated on too few or too similar "
        "images; train longer and validate on normal and anomalous images before exporting."
    )


class SyntheticAnomalyModel:
    """One-class training on synthetic anomalies, evaluated with the metrics AnoGen reports.

    The synthetic-anomaly generator is a training-time part: the model checks its choice when it is built
    (``generator_spec``, no file read) and builds it (reads the bank, checks the DTD folder) at the start of
    fitting, or on first use of ``augmenter``. A model built for test, predict or export, or loaded from a
    checkpoint whose bank or DTD folder has moved, never needs them.
    """

    post_processor: PostProcessor | None
    generator_spec: GeneratorSpec
    _modules: dict[str, nn.Module]

    def __new__(cls, *args: Any, **kwargs: Any) -> "SyntheticAnomalyModel":
        """Note that one of the plugin's models is in use (anomalib's CLI then words checkpoint errors in one line)."""
        note_plugin_model()
        return super().__new__(cls)

    @property
    def augmenter(self) -> nn.Module:
        """The synthetic-anomaly generator, built on first use (an assigned module replaces it)."""
        if "augmenter" not in self._modules:
            self._modules["augmenter"] = self.generator_spec.build()
        return self._modules["augmenter"]

    def setup(self, stage: str) -> None:
        """Build the generator when fitting starts, so a missing bank or DTD folder fails before the first step."""
        if stage == "fit":
            self.augmenter  # noqa: B018 - built for its checks
        super().setup(stage)  # type: ignore[misc]

    @property
    def learning_type(self) -> LearningType:
        """One-class: trains on normal images only, anomalies are synthesized."""
        return LearningType.ONE_CLASS

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image and pixel AUROC, AP and F1, plus pixel AUPRO: the metrics AnoGen reports."""
        return anogen_evaluator()

    def warn_if_degenerate_normalisation(self) -> None:
        """Warn, naming the cause, when the normalisation statistics would amplify numeric noise."""
        problem = degenerate_normalisation(self.post_processor)
        if problem:
            warnings.warn(f"{type(self).__name__}: {problem}", UserWarning, stacklevel=2)

    def on_train_end(self) -> None:
        """Release what the synthetic-anomaly generator holds (the anogen bank's reader processes)."""
        close = getattr(getattr(self, "augmenter", None), "close", None)
        if callable(close):
            close()

    def on_validation_epoch_end(self) -> None:
        """After the post-processor (a callback, called first) has computed its statistics: check them."""
        self.warn_if_degenerate_normalisation()

    def to_onnx(self, export_root: Path | str, *args: Any, **kwargs: Any) -> Path:
        """Anomalib's ONNX export (also the first step of OpenVINO export), after checking the statistics.

        The default ONNX opset is 18 instead of anomalib's 14: torch's exporter writes opset 18 and
        down-converting it to 14 fails (harmlessly, but with a long onnxscript traceback on every export).
        """
        self.warn_if_degenerate_normalisation()
        kwargs.setdefault("opset_version", ONNX_OPSET)
        return super().to_onnx(export_root, *args, **kwargs)  # type: ignore[misc]
