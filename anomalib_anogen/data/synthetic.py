"""What a synthetic-anomaly source hands to a weakly-supervised model for one training batch."""

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from anomalib_anogen.arguments import ModelArgumentError


class SyntheticBatch(NamedTuple):
    """A batch of synthetic anomalies.

    Attributes:
        image: Images with anomalies pasted in, ``(B, 3, H, W)``: the model's input.
        mask: Anomaly masks ``(B, 1, H, W)``, 1 = anomalous: exact for Perlin/DTD, a box for generated ones.
        is_box: ``(B,)`` bool, True where ``mask`` is a box (weak supervision) rather than exact.
        target: The anomaly-free image the reconstruction should match, ``(B, 3, H, W)``.
    """

    image: torch.Tensor
    mask: torch.Tensor
    is_box: torch.Tensor
    target: torch.Tensor


def resolve_dtd_dir(dtd_dir: Path | str | None, argument: str = "dtd_dir") -> Path | None:
    """Check a folder of anomaly-source textures; never download anything.

    Returns ``None`` for ``None`` (Perlin noise alone). Raises ``ModelArgumentError`` (a ``ValueError``)
    naming ``argument`` when the folder is missing or holds no images, so that a typo never turns into a
    silent switch to noise-only anomalies or into a download.
    """
    if dtd_dir is None:
        return None
    path = Path(dtd_dir).expanduser()
    hint = (
        f"Point {argument} at a folder of texture images (for example ../shared/data/dtd/images, or DTD's "
        f"dtd/images), or set {argument}: null to use Perlin noise alone. anomalib-anogen never downloads DTD."
    )
    if not path.is_dir():
        msg = f"{argument}: folder '{path}' does not exist. {hint}"
        raise ModelArgumentError(msg)
    if not any(next(path.rglob(f"*{extension}"), None) for extension in IMG_EXTENSIONS):
        msg = f"{argument}: folder '{path}' holds no images ({', '.join(sorted(IMG_EXTENSIONS))}). {hint}"
        raise ModelArgumentError(msg)
    return path


def bound_arguments(cls: type, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` of ``cls(...)`` with its signature's defaults filled in (a ``TypeError`` if they do not fit)."""
    bound = inspect.signature(cls).bind_partial(**arguments)
    bound.apply_defaults()
    return dict(bound.arguments)
