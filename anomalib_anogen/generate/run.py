"""``anogen generate``'s loop: the chunks of one rank made by a backend, boxed, recorded and written to the bank.

A chunk of the work list (``generate/work.py``) is one backend call (``backends.paste.PasteMaker`` or
``backends.diffusion.DiffusionMaker``); Lightning Fabric splits the chunks over devices
(``chunks[rank::world_size]``) and the bank writer appends records in work-list order, so a bank is the same
however it was split or interrupted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalib_anogen.generate.backends import Maker
from anomalib_anogen.generate.bank_writer import BankWriter, NormalCopy
from anomalib_anogen.generate.boxes import BoxPrior, PlacedBox, box_mask, derived_seed, sample_box
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.placement import Placement
from anomalib_anogen.generate.quality import QualityGate, rejections
from anomalib_anogen.generate.settings import GenerateSettings
from anomalib_anogen.generate.work import SourceCache, WorkItem, chunks_for_rank, chunks_of

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def is_first_process() -> bool:
    """False in the worker processes that Lightning Fabric (or torchrun) starts for ranks > 0 of a multi-GPU run.

    Those run ``generate`` from the start again while rank 0 holds the bank's lock and prepares the bank, so they
    neither take the lock nor judge the output folder (rank 0 did both); they only write their chunks.
    """
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


@dataclass(frozen=True)
class Job:
    """One run, fixed before the bank is touched.

    Attributes:
        settings: The bank's settings (recorded in bank.json).
        items: The whole work list.
        priors: Each defect's box prior.
        placement: ``--placement``'s regions, or ``None``.
        output: The bank folder.
        mode: What happens to the bank first: ``new``, ``resume``, ``overwrite``, or ``worker`` (ranks > 0).
        maker: Builds the backend on the device a rank runs on.
        gate: Measures every record and marks those it rejects (generate/quality.py).
    """

    settings: GenerateSettings
    items: list[WorkItem]
    priors: dict[str, BoxPrior]
    placement: Placement | None
    output: Path
    mode: str
    maker: Callable[[torch.device], Maker]
    gate: QualityGate


def run(job: Job, options: GenerateOptions) -> Path:
    """Make this rank's chunks and write them to the bank; rank 0 prepares the bank first and finishes it last."""
    from anomalib_anogen.core.devices import launch_fabric

    settings = job.settings
    chunks = chunks_of(job.items, settings.batch_size or 1)
    accelerator, devices = (options.accelerator, options.devices) if settings.diffusion else ("cpu", 1)
    fabric = launch_fabric(accelerator, devices, len(chunks), options.num_nodes)  # paste: one CPU process per node
    order = {item.record_id: item.order for item in job.items}
    writer = BankWriter(job.output, settings.to_json(), options.writers, job.gate.summary)
    if fabric.global_rank == 0:
        writer.prepare(job.mode, order)
    fabric.barrier()
    done = writer.done_ids()
    assigned = chunks_for_rank(chunks, fabric.global_rank, fabric.world_size)
    mine = [c for c in assigned if any(i.record_id not in done for i in c)]
    pending = sum(1 for c in mine for i in c if i.record_id not in done)
    maker = job.maker(fabric.device)
    cache = SourceCache(settings.resolution, settings.foreground, job.placement)
    bar = _bar(pending, options.progress, fabric.global_rank, fabric.world_size)
    start, written, fallbacks = time.perf_counter(), 0, 0
    resolution = settings.resolution
    try:
        for chunk in mine:
            cache.forget_before(chunk[0].source.index)
            boxes = [_box(item, cache, job.priors, settings, maker) for item in chunk]
            made = maker.make(chunk, boxes, cache)
            for item, placed, (image, mask, extra) in zip(chunk, boxes, made, strict=True):
                if item.record_id in done:
                    continue
                resized = item.source.size != (resolution, resolution)
                copy = writer.normal_copy(item.source.stem, cache.image(item.source)) if resized else None
                record = _record(item, placed, settings, copy, extra)
                record |= job.gate.judge(
                    item.defect, image, cache.image(item.source), mask, cache.region(item.source, item.defect)
                )
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
        logger.info("%s: bank of %d records (%s)", job.output, len(records), ", ".join(settings.defects))
        rejected = rejections(records)
        if rejected:
            logger.warning("%s; the `anogen` generator skips them (docs/quality.md, `anogen show --worst`)", rejected)
    return job.output


def _bar(total: int, enabled: bool, rank: int, world: int) -> Any:
    from tqdm.auto import tqdm

    description = "generate" if world == 1 else f"generate rank {rank}"
    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True, disable=not enabled, position=rank)


def _box(
    item: WorkItem, cache: SourceCache, priors: dict[str, BoxPrior], settings: GenerateSettings, maker: Maker
) -> PlacedBox:
    """The record's box: shared by the samples of one box, drawn from (seed, image, defect, box index).

    Where the backend says so (paste), the box has the shape of the defect it will hold.
    """
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
            maker.box_shape(item),
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
