"""Anomalib's ``OpenVINOInferencer`` without its ``./openvino_cache``: what :func:`load_inferencer` returns.

Imported only when an inferencer is made (it imports anomalib and OpenVINO).
"""

from pathlib import Path
from typing import Any

from anomalib.deploy import OpenVINOInferencer


class Inferencer(OpenVINOInferencer):
    """``OpenVINOInferencer`` that compiles the model with its ``config`` and nothing else.

    anomalib's ``load_model`` also creates ``openvino_cache`` in the current directory and makes it OpenVINO's
    ``CACHE_DIR``; here the cache is whatever ``config["CACHE_DIR"]`` says (``load_inferencer``: beside the
    model), so the current directory is neither written nor needed. Everything else is anomalib's.
    """

    def load_model(self, path: str | Path | tuple[bytes, bytes]) -> tuple[Any, Any, Any]:
        """Read the model (``.xml`` with its ``.bin``, ``.bin``, ``.onnx``, or bytes) and compile it with ``config``."""
        import openvino as ov

        core = ov.Core()
        if isinstance(path, tuple):
            model = core.read_model(model=path[0], weights=path[1])
        else:
            path = Path(path)
            if path.suffix not in {".bin", ".xml", ".onnx"}:
                msg = f"Path must be .onnx, .bin or .xml file. Got {path.suffix}"
                raise ValueError(msg)
            model = core.read_model(path.with_suffix(".xml") if path.suffix == ".bin" else path)
        compiled = core.compile_model(model=model, device_name=self.device, config=self.config)
        return compiled.input(0), compiled.output(0), compiled
