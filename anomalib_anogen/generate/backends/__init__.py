"""The backends that make a bank's pixels, side by side behind one small protocol.

* ``diffusion`` (the paper): blended latent diffusion with the learned tokens, :class:`DiffusionMaker`;
* ``paste``: real support anomalies cut by their masks and blended in, no model weights, :class:`PasteMaker`.

The run loop (``generate/run.py``) hands a backend one chunk of the work list at a time with each record's
box; the backend returns each record's image, box mask and the fields it adds to the record. Backends know
the work items and the source cache (``generate/work.py``), never the run loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from anomalib_anogen.generate.boxes import PlacedBox, Shape
    from anomalib_anogen.generate.work import SourceCache, WorkItem


class Maker(Protocol):
    """A backend: makes the records of one chunk."""

    def make(
        self, chunk: list[WorkItem], boxes: list[PlacedBox], cache: SourceCache
    ) -> Iterable[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        """Each record of ``chunk``: its image (uint8 R x R x 3), mask (uint8 R x R, 0/255) and added fields.

        ``boxes`` are the records' boxes, in the order of ``chunk``; ``cache`` holds their normal images.
        """
        ...

    def box_shape(self, item: WorkItem) -> Shape | None:
        """The shape ``item``'s box must have (the defect it will hold), or ``None``: the priors' own draw."""
        ...
