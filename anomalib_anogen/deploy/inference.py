"""``load_inferencer``: anomalib's OpenVINO inferencer with an explicit precision, or ``anogen deploy-check``'s choice.

Above :mod:`.openvino` (the precision config), :mod:`.choice` (the choice file) and :mod:`.check` (the per-node f32
hints), so none of them imports this.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .openvino import cpu_info, openvino_config

if TYPE_CHECKING:
    from anomalib.deploy import OpenVINOInferencer

CACHE_FOLDER = "openvino_cache"  # OpenVINO's compiled-model cache, beside the model it caches


def load_inferencer(path: str | Path, precision: str | None = None, device: str = "CPU") -> OpenVINOInferencer:
    """Anomalib's ``OpenVINOInferencer`` for ``path`` with the inference precision set explicitly.

    Args:
        path: the model's ``.xml`` (the FP32 IR that ``anomalib export`` writes).
        precision: ``f32``, ``bf16`` or ``f16``. ``None`` (default): the choice that ``anogen deploy-check``
            wrote beside ``path`` (``<model>.deploy.json``: which IR, at which precision, nodes kept in f32),
            logged, with a warning when it was measured on another CPU; ``f32`` when there is none. An
            explicit precision always wins and runs ``path`` itself.
        device: OpenVINO device.

    OpenVINO's compiled-model cache goes beside the model that runs (``<model folder>/openvino_cache``, OpenVINO's
    ``CACHE_DIR`` in the compile config) instead of anomalib's ``./openvino_cache`` of the current directory:
    nothing is written to the current directory, and the working directory is never changed (a program with
    threads may rely on it).
    """
    from ._inferencer import Inferencer

    path = Path(path).resolve()
    model: Path | tuple[bytes, bytes] = path
    if precision is None:
        from .choice import read_choice

        choice = read_choice(path)
        precision = "f32"
        if choice is not None:
            path, model, precision = choice.ir, choice.ir, choice.precision
            if choice.keep_f32:
                model = _hinted_ir(choice.ir, choice.keep_f32)
            _report_choice(choice)
    config = openvino_config(precision, CACHE_DIR=str(path.parent / CACHE_FOLDER))
    return Inferencer(path=model, device=device, config=config)


def _report_choice(choice: Any) -> None:
    """Log the deploy-check choice in use; warn when it was measured on another CPU class."""
    import logging
    import warnings

    from .choice import same_cpu_class

    kept = f", {len(choice.keep_f32)} node(s) kept in f32" if choice.keep_f32 else ""
    measured = choice.cpu.get("name", "an unknown CPU")
    logging.getLogger("anomalib_anogen.deploy").info(
        "load_inferencer: deploy-check's choice %s: %s (%s at %s%s), measured on %s, %s",
        choice.file,
        choice.variant,
        choice.ir,
        choice.precision,
        kept,
        measured,
        choice.made,
    )
    info = cpu_info()
    if not same_cpu_class(choice.cpu, info):
        flags = " ".join(choice.cpu.get("flags", [])) or "unknown"
        warnings.warn(
            f"{choice.file}: this precision choice ({choice.variant}) was made on another CPU ({measured}; "
            f"OpenVINO default {choice.cpu.get('default_precision')}; flags: {flags}), not on this one ({info}). "
            "Run `anogen deploy-check` on this PC to choose from its own measurements.",
            UserWarning,
            stacklevel=3,
        )


def _hinted_ir(xml: Path, keep_f32: tuple[str, ...]) -> tuple[bytes, bytes]:
    """The IR ``xml`` as (xml, bin) bytes with the nodes ``keep_f32`` marked to stay in f32 (per-node hint)."""
    import tempfile

    import openvino as ov

    from .check import mark_f32

    network = mark_f32(ov.Core().read_model(xml), keep_f32)
    with tempfile.TemporaryDirectory(prefix="anogen_hints_") as folder:
        target = Path(folder) / "model.xml"
        ov.save_model(network, target, compress_to_fp16=False)
        return target.read_bytes(), target.with_suffix(".bin").read_bytes()
