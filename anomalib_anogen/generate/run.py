"""``anogen generate``'s work: the work list, its fixed chunks, the per-image cache, and the loop that writes a bank.

The work list is every normal image x every defect type x ``per_image`` records, image-major, cut into fixed
chunks of ``batch_size``; a chunk is one backend call (``PasteMaker`` in paste.py, ``DiffusionMaker`` in
sampling.py), so its composition never depends on what was already done. Lightning Fabric splits the chunks
over devices (``chunks[rank::world_size]``); the bank writer appends records in work-list order.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomalib_anogen.core.images import load_rgb
from anomalib_anogen.generate.bank_writer import BankWriter, NormalCopy
from anomalib_anogen.generate.boxes import BoxPrior, PlacedBox, box_mask, derived_seed, sample_box
from anomalib_anogen.generate.foreground import foreground_mask
from anomalib_anogen.generate.inputs import DefectSources, NormalImage
from anomalib_anogen.generate.placement import Placement
from anomalib_anogen.generate.settings import GenerateSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One record to make: which image, which defect, which box and which sample of that box."""

    order: int
    record_id: str
    source: NormalImage
    defect: str
    box_index: int
    sample_index: int


# ----------------------------------------------------------------------------------------------------------------
# Work list


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


def is_first_process() -> bool:
    """False in the worker processes that Lightning Fabric (or torchrun) starts for ranks > 0 of a multi-GPU run.

    Those run ``generate`` from the start again while rank 0 holds the bank's lock and prepares the bank, so they
    neither take the lock nor judge the output folder (rank 0 did both); they only write their chunks.
    """
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def cpu_threads(threads: int | None, backend: str, model: Any) -> int | None:
    """One torch thread for ops too small to split (tiny backbones, paste) unless told otherwise."""
    if threads is not None or backend == "paste" or (model is not None and model.spec in {"tiny", "tiny-ldm"}):
        return threads or 1
    return None


def run(
    model: Any,
    sources: DefectSources,
    items: list[WorkItem],
    priors: dict[str, BoxPrior],
    settings: GenerateSettings,
    output: Path,
    mode: str,
    accelerator: str,
    devices: int | str,
    progress: bool,
    placement: Placement | None = None,
    writers: int = 0,
    num_nodes: int = 1,
) -> Path:
    from anomalib_anogen.core.devices import launch_fabric

    batch = settings.batch_size or 1
    chunks = chunks_of(items, batch)
    if model is None:  # paste: one CPU process per node
        accelerator, devices = "cpu", 1
    fabric = launch_fabric(accelerator, devices, len(chunks), num_nodes)
    order = {item.record_id: item.order for item in items}
    writer = BankWriter(output, settings.to_json(), writers)
    if fabric.global_rank == 0:
        writer.prepare(mode, order)
    fabric.barrier()
    done = writer.done_ids()
    assigned = chunks_for_rank(chunks, fabric.global_rank, fabric.world_size)
    mine = [c for c in assigned if any(i.record_id not in done for i in c)]
    pending = sum(1 for c in mine for i in c if i.record_id not in done)
    if model is not None:
        from anomalib_anogen.generate.backends.diffusion import DiffusionMaker

        maker: Any = DiffusionMaker(model, sources, settings, fabric.device)
    else:
        from anomalib_anogen.generate.backends.paste import PasteMaker

        maker = PasteMaker(sources, settings)
    cache = SourceCache(settings.resolution, settings.foreground, placement)
    bar = _bar(pending, progress, fabric.global_rank, fabric.world_size)
    start, written, fallbacks = time.perf_counter(), 0, 0
    resolution = settings.resolution
    try:
        for chunk in mine:
            cache.forget_before(chunk[0].source.index)
            boxes = [_box(item, cache, priors, settings) for item in chunk]
            made = maker.make(chunk, boxes, cache)
            for item, placed, (image, mask, extra) in zip(chunk, boxes, made, strict=True):
                if item.record_id in done:
                    continue
                resized = item.source.size != (resolution, resolution)
                copy = writer.normal_copy(item.source.stem, cache.image(item.source)) if resized else None
                record = _record(item, placed, settings, copy, extra)
                writer.submit(record, image, mask, copy)  # encoded and written while the next images are made
                fallbacks += int(record["box_fallback"])
                written += 1
                bar.update(1)
        writer.drain()
    finally:
        writer.close()  # the writer threads end (and stop writing) however the loop ends
        bar.close()
    seconds = time.perf_counter() - start
    if written:
        logger.info(
            "rank %d: %d images in %.1f s (%.2f images/s)", fabric.global_rank, written, seconds, written / seconds
        )
    if fallbacks:
        logger.warning("%d records use a fallback box (below the foreground share after the tries)", fallbacks)
    fabric.barrier()
    if fabric.global_rank == 0:
        records = writer.finish(order)
        logger.info("%s: bank of %d records (%s)", output, len(records), ", ".join(settings.defects))
    return output


def _bar(total: int, enabled: bool, rank: int, world: int) -> Any:
    from tqdm.auto import tqdm

    description = "generate" if world == 1 else f"generate rank {rank}"
    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True, disable=not enabled, position=rank)


def _box(item: WorkItem, cache: SourceCache, priors: dict[str, BoxPrior], settings: GenerateSettings) -> PlacedBox:
    """The record's box: shared by the samples of one box, drawn from (seed, image, defect, box index)."""
    box_index = item.box_index
    key = (item.source.index, item.defect, box_index)
    if key not in cache.boxes:
        rng = np.random.default_rng(derived_seed(settings.seed, "box", item.source.stem, item.defect, box_index))
        placed = sample_box(
            priors[item.defect],
            settings.resolution,
            cache.region(item.source, item.defect),
            rng,
            settings.min_foreground,
            settings.max_tries,
        )
        if cache.placement is not None:  # accepted on the placement region; the foreground share is recorded too
            inside = box_mask(placed.box, settings.resolution) > 0
            share = float(cache.object_mask(item.source)[inside].mean())
            placed = replace(placed, foreground=share, placement=placed.foreground)
        if placed.fallback:
            logger.warning(
                "%s / %s box %d: no box with >= %.0f%% %s in %d tries; using the best (%.0f%%)",
                item.source.path.name,
                item.defect,
                box_index,
                100 * settings.min_foreground,
                "on the placement region" if cache.placement is not None else "foreground",
                settings.max_tries,
                100 * (placed.placement if placed.placement is not None else placed.foreground),
            )
        cache.boxes[key] = placed
    return cache.boxes[key]


def _record(
    item: WorkItem,
    placed: PlacedBox,
    settings: GenerateSettings,
    copy: NormalCopy | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The manifest record, less the image and mask hashes and a resized ``copy``'s hash, which the writer adds."""
    resolution = settings.resolution
    if copy is None:
        source, source_sha = str(item.source.path.resolve()), item.source.sha256
        original: dict[str, Any] = {}
    else:
        source, source_sha = copy.relative, None  # the copy's sha256 once it is written (BankWriter.submit)
        original = {"source_original": str(item.source.path.resolve()), "source_original_sha256": item.source.sha256}
    return {
        "id": item.record_id,
        "defect": item.defect,
        "source": source,
        "source_sha256": source_sha,
        **original,
        "box": placed.box.describe(),
        "box_index": item.box_index,
        "sample_index": item.sample_index,
        "foreground_fraction": round(placed.foreground, 4),
        "box_tries": placed.tries,
        "box_fallback": placed.fallback,
        **_placement_fields(item, placed, settings),
        "seed": settings.seed,
        "record_seed": derived_seed(settings.seed, item.record_id),
        "backend": settings.backend,
        "backbone": settings.backbone,
        "embedding_sha256": settings.embeddings[item.defect] if settings.embeddings else None,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "keep_outside": settings.keep_outside,
        "resolution": resolution,
        **extra,
    }


def _placement_fields(item: WorkItem, placed: PlacedBox, settings: GenerateSettings) -> dict[str, Any]:
    """With --placement: the template a record's box was placed on and the box's share on the placement region."""
    if settings.placement is None:
        return {}
    template = settings.placement["templates"][item.defect]["file"]
    return {"placement": template, "placement_fraction": round(float(placed.placement or 0.0), 4)}
