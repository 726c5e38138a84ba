"""The hard checks of every image a backend makes, before it is written: never a non-finite, flat or unchanged one.

A bank never holds a record whose image is non-finite, one flat colour, or unchanged inside the box that its mask
marks as the anomaly.

Such an image is never a defect a detector should learn; it comes from settings that make nonsense (a guidance
scale that overflows the sampler, a feather wider than the box, a precision that overflows). So the run stops at
the first one with :class:`OutputCheckError` (an input error: exit code 2), naming the record, what is wrong and
the settings that caused it; the records written before it are kept, and nothing of the bad one is written.

These checks are cheap (one pass over each image) and run on every record; softer judgements of a record (is
the defect visible, on the object) belong to a quality gate, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.generate.settings import GenerateSettings

AGAIN = "the records before it are kept; change the setting and run again with --overwrite true"


class OutputCheckError(AnogenInputError):
    """A made image that must not reach the bank (non-finite, flat, unchanged in its box): the run stops."""


def _sampler_settings(settings: GenerateSettings) -> str:
    return (
        f"--guidance {settings.guidance:g} (the paper uses 10), --steps {settings.steps}, "
        f"--precision {settings.precision}"
    )


def check_finite(record_ids: Sequence[str], finite: Sequence[bool], settings: GenerateSettings) -> None:
    """Stop at the first record whose sampled latents or decoded pixels hold NaN or Inf (diffusion backend).

    Cast to 8 bits, such values become a flat black image, or a black box, that looks like a result.
    """
    for record_id, ok in zip(record_ids, finite, strict=True):
        if not ok:
            msg = (
                f"record {record_id}: the diffusion sampler produced NaN/Inf values, which would be written as a "
                f"black image; with {_sampler_settings(settings)}: lower --guidance, or use --precision 32; {AGAIN}"
            )
            raise OutputCheckError(msg)


def _box_depth(inside: np.ndarray) -> float:
    """How far (pixels) the box's innermost pixel lies from its edge."""
    return float(cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3).max())


def check_output(
    record_id: str, image: np.ndarray, mask: np.ndarray, normal: np.ndarray, settings: GenerateSettings
) -> None:
    """Stop unless ``image`` (uint8 R x R x 3) is a usable anomaly: not one flat colour, changed inside ``mask``.

    ``normal`` is the normal image at the output size that ``image`` was made from.
    """
    if image.size and int(image.max()) == int(image.min()):
        made_by = (
            f"the diffusion sampler diverged with {_sampler_settings(settings)}: lower --guidance, or use "
            "--precision 32"
            if settings.diffusion
            else "check the normal image and the support set"
        )
        msg = f"record {record_id}: the generated image is one flat colour (grey level {int(image.min())}); {made_by}; "
        raise OutputCheckError(msg + AGAIN)
    inside = mask > 0
    if not inside.any() or not np.array_equal(image[inside], normal[inside]):
        return
    depth = _box_depth(inside) if settings.keep_outside else 0.0
    if settings.keep_outside and settings.feather > depth:
        cause = (
            f"--keep_outside true with --feather {settings.feather:g} px blends the defect in at "
            f"{depth / settings.feather:.2g} of its strength at most (the box is {depth:.0f} px deep): lower --feather"
        )
    elif settings.diffusion:
        cause = f"with {_sampler_settings(settings)}"
    else:
        cause = (
            f"the pasted support anomaly (--blend {settings.blend}) vanished in a box of {int(inside.sum())} pixels: "
            f"make the boxes larger (--resolution, now {settings.resolution}; --priors or --priors_margin)"
        )
    msg = f"record {record_id}: the generated image is unchanged inside its box, which its mask marks as anomaly; "
    msg = f"{msg}{cause}; {AGAIN}"
    raise OutputCheckError(msg)
