"""What ``anogen generate`` makes: the work list of records, its fixed chunks, and the cache of the images in use.

The work list is every normal image x every defect type x ``per_image`` records, image-major, cut into fixed
chunks of ``batch_size``; a chunk is one backend call, so its composition never depends on what was already
done, and Lightning Fabric splits the chunks over devices (``chunks[rank::world_size]``). This module is what
the backends and the run loop share; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomalib_anogen.core.images import load_rgb
from anomalib_anogen.generate.boxes import PlacedBox
from anomalib_anogen.generate.foreground import foreground_mask
from anomalib_anogen.generate.placement import Placement


@dataclass(frozen=True)
class NormalImage:
    """A normal image of the work list: its file, content hash and size on disk."""

    index: int
    path: Path
    sha256: str
    size: tuple[int, int]

    @property
    def stem(self) -> str:
        """The file name without suffix (part of every record id made from it)."""
        return self.path.stem


@dataclass(frozen=True)
class WorkItem:
    """One record to make: which image, which defect, which box and which sample of that box."""

    order: int
    record_id: str
    source: NormalImage
    defect: str
    box_index: int
    sample_index: int


def work_list(normals: list[NormalImage], defects: list[str], per_image: int, samples_per_box: int) -> list[WorkItem]:
    """Every image x defect x record, image-major (so each normal image is loaded and encoded once)."""
    items = []
    for source in normals:
        for defect in defects:
            for k in range(per_image):
                record_id = f"{source.stem}_{defect}_{k:02d}"
                items.append(WorkItem(len(items), record_id, source, defect, k // samples_per_box, k % samples_per_box))
    return items


def chunks_of(items: list[WorkItem], size: int) -> list[list[WorkItem]]:
    """Fixed chunks of the whole work list (not of what is left), so a batch is the same on every run."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def chunks_for_rank(chunks: list[list[WorkItem]], rank: int, world_size: int) -> list[list[WorkItem]]:
    """The chunks one of ``world_size`` processes makes: every ``world_size``-th from ``rank`` (each chunk once)."""
    return chunks[rank::world_size]


class SourceCache:
    """Normal images at the output size, their foreground and (diffusion) latent, kept while they are in use."""

    def __init__(self, resolution: int, foreground: str, placement: Placement | None = None) -> None:
        self.resolution = resolution
        self.foreground = foreground
        self.placement = placement
        self.pixels: dict[int, np.ndarray] = {}
        self.masks: dict[int, np.ndarray] = {}
        self.latents: dict[int, Any] = {}
        self.boxes: dict[tuple[int, str, int], PlacedBox] = {}

    def image(self, source: NormalImage) -> np.ndarray:
        """The normal image as uint8 R x R x 3 (resized bicubic when its size differs, as logged up front)."""
        if source.index not in self.pixels:
            image = load_rgb(source.path)
            if image.size != (self.resolution, self.resolution):
                image = image.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
            self.pixels[source.index] = np.asarray(image, dtype=np.uint8)
        return self.pixels[source.index]

    def object_mask(self, source: NormalImage) -> np.ndarray:
        """Where boxes may go: the object's foreground by the run's rule (everything for a texture)."""
        if source.index not in self.masks:
            self.masks[source.index] = foreground_mask(self.image(source), self.foreground)
        return self.masks[source.index]

    def region(self, source: NormalImage, defect: str) -> np.ndarray:
        """Where a box of ``defect`` must lie: the foreground, or (--placement) the template and the foreground."""
        if self.placement is None:
            return self.object_mask(source)
        template = self.placement.region(defect, self.resolution)
        return template & self.object_mask(source) if self.placement.foreground else template

    def forget_before(self, index: int) -> None:
        """Drop images the (image-major) work list has left behind."""
        for table in (self.pixels, self.masks, self.latents):
            for key in [k for k in table if k < index]:
                del table[key]
        for key in [k for k in self.boxes if k[0] < index]:
            del self.boxes[key]
