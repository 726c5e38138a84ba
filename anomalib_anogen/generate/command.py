"""``anogen generate``: put defects into normal images at sampled boxes and write an anomaly bank (AnoGen stage 2).

The work list is every normal image x every defect type x ``per_image`` records (``samples_per_box`` samples
per box), in that order, cut into fixed chunks of ``batch_size``. A chunk is one sampler call, so its
composition never depends on what was already done: a resumed run, a single device and several devices
(Lightning Fabric, ``chunks[rank::world_size]``) all compute each record in the same batch and write the same
bytes. Every record's box and noise come from seeds derived from (``seed``, its id), never from a shared RNG.

The options are checked before anything is written; then the bank's lock is taken (one writer per bank, see
:class:`~anomalib_anogen.generate.bank_writer.BankLock`) and the inputs are checked before the bank is touched;
see docs/generate.md.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from anomalib_anogen.core.checks import check_number
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import sha256_file
from anomalib_anogen.core.threads import torch_threads
from anomalib_anogen.generate.bank_writer import BankLock, check_bank_output, check_target
from anomalib_anogen.generate.boxes import AUTO_MARGIN, MAX_TRIES, MIN_FOREGROUND
from anomalib_anogen.generate.foreground import resolve_rule
from anomalib_anogen.generate.inputs import (
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    check_for_model,
    check_options,
    choose_priors,
    discover_cutouts,
    discover_embeddings,
    list_normals,
    load_model,
    match_defects,
)
from anomalib_anogen.generate.placement import load_placement
from anomalib_anogen.generate.run import cpu_threads, is_first_process, run, work_list
from anomalib_anogen.generate.settings import GenerateSettings

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# The command


def generate(
    normal: str,
    output: str,
    embeddings: str | None = None,
    backbone: str | None = None,
    revision: str | None = None,
    backend: str = "diffusion",
    support: str | None = None,
    priors: str | None = None,
    category: str | None = None,
    priors_margin: float = AUTO_MARGIN,
    priors_rotate: bool = True,
    placement: str | None = None,
    placement_foreground: bool = True,
    defects: list[str] | None = None,
    per_image: int = 4,
    samples_per_box: int = 2,
    steps: int = 50,
    guidance: float = 10.0,
    keep_outside: bool = False,
    feather: float | None = None,
    blend: str = "feather",
    resolution: int | None = None,
    foreground: str = "auto",
    min_foreground: float = MIN_FOREGROUND,
    max_tries: int = MAX_TRIES,
    seed: int = 0,
    max_images: int | None = None,
    batch_size: int = 8,
    precision: str = "auto",
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    writers: int = 2,
) -> Path:
    """Generate anomalies into normal images at sampled boxes and write an anomaly bank (AnoGen stage 2).

    Args:
        normal: Folder of normal images (e.g. ../shared/data/MVTecAD/bottle/train/good); images of another size
            than --resolution are resized (bicubic), with a warning.
        output: Bank folder: images/<defect>/<id>.png, masks/<defect>/<id>_mask.png, manifest.jsonl, bank.json;
            bank.lock while a run writes it (a second run on the same bank is refused).
        embeddings: Folder of learned embeddings (<defect>/learned_embeds.safetensors, from `anogen learn`).
        backbone: The backbone the embeddings were learned on (default: the one their metadata names): tiny |
            tiny-ldm (built in, random weights) | a diffusers SD 1.x/2.x or LDMTextToImagePipeline folder or hub id.
        revision: Hub revision when --backbone is a hub id.
        backend: diffusion (the paper: blended latent diffusion with the learned tokens) | paste (real support
            anomalies cut by their masks and blended in; no model weights).
        support: Support folder for --backend paste (the layout of `anogen learn`).
        priors: Box-prior json, {category: {defect: [[w_min, w_max], [h_min, h_max], rotate]}} or {defect: ...};
            or auto: derived from the support masks (needs --support, also for the diffusion backend). Default:
            the paper's MVTec priors (anomalib_anogen/generate/mvtec_box_ranges.json), or auto for a category
            they lack.
        category: Category of the priors file (default: the part of the --normal path that the file names).
        priors_margin: --priors auto: the measured box sizes widened to [min / (1 + m), max * (1 + m)], >= 0.
        priors_rotate: --priors auto: boxes may be rotated (false: axis-aligned).
        placement: Where each defect type may go: a folder of <defect>/mask.png (or <category>/<defect>/mask.png,
            the AnoGen authors' templates) or one mask image for every defect (a region of interest); white
            marks the allowed area, any size (resized with nearest neighbour).
        placement_foreground: With --placement, also require the image's foreground (false: the template only).
        defects: Only these defect types (default: every one, which must match the priors exactly).
        per_image: Anomalies per normal image and defect type (paper: 4 = 2 boxes x 2 samples).
        samples_per_box: Samples drawn in each box (per_image / samples_per_box boxes per image and defect).
        steps: DDIM steps (eta 0; paper: 50), 1 to the backbone's training timesteps (usually 1000).
        guidance: Classifier-free guidance scale, at least 1 (paper: 10; 1 turns it off).
        keep_outside: Composite the decoded image onto the normal one, so that outside the (inwards feathered)
            box its pixels stay exact; default false: the paper's raw decode, where every pixel has passed through
            the VAE (otherwise VAE texture inside the box only is a shortcut a detector can learn).
        feather: Feather width in pixels inside the box edge, >= 0 (default: resolution / 64, at least 1).
        blend: paste backend: feather | poisson (cv2.seamlessClone).
        resolution: Output side in pixels, 8 to 4096 (default: the backbone's native one; paste: the first image's
            width); diffusion: a multiple of the VAE factor.
        foreground: auto (all for MVTec textures, else border) | border | otsu | all (see generate/foreground.py).
        min_foreground: Share of a box that must lie on the foreground, 0 to 1 (paper: 0.75).
        max_tries: Boxes drawn (1 to 10000) before the best one seen is used (logged, recorded as box_fallback).
        seed: Seed of every box, noise and jitter, 0 to 2**32 - 1 (each record's derives from it and its id).
        max_images: Only the first N >= 1 normal images (by name).
        batch_size: Records per UNet call (the same --batch_size is needed for a byte-identical --resume).
        precision: auto (fp16 on a GPU, diffusers' convention: bf16's rounding is amplified by the guidance
            scale, see docs/benchmarks.md bench_precision; fp32 on a CPU) | 32 | bf16 | fp16; a CPU always runs fp32.
        accelerator: auto | cpu | gpu | cuda.
        devices: GPUs to split the work list over, >= 1 (auto: all).
        num_nodes: Machines to split the work list over, each started by torchrun or SLURM (docs/generate.md); >= 1.
        resume: Continue an interrupted bank with the same settings.
        overwrite: Replace a bank in --output (refused otherwise).
        progress: Show a progress bar with images/s and ETA.
        threads: CPU threads for torch, 1 to the machine's CPUs (default: 1 for the tiny backbones and paste, else
            torch's default).
        writers: Threads that PNG-encode, hash and write the bank's files while the next images are made, 0 to 32
            (0 or 1: one after another in the generation loop). The same bank either way; not part of its
            settings, so a --resume may use another value.
    """
    numbers = {
        "per_image": per_image,
        "samples_per_box": samples_per_box,
        "steps": steps,
        "guidance": guidance,
        "feather": feather,
        "resolution": resolution,
        "min_foreground": min_foreground,
        "max_tries": max_tries,
        "seed": seed,
        "max_images": max_images,
        "batch_size": batch_size,
        "threads": threads,
        "priors_margin": priors_margin,
        "writers": writers,
    }
    if placement is None and not placement_foreground:
        msg = "--placement_foreground false applies only with --placement"
        raise AnogenInputError(msg)
    check_options(backend, blend, foreground, precision, accelerator, devices, num_nodes, numbers)
    output_path = Path(output).expanduser()
    first = is_first_process()
    if first:  # refuse a file or a stranger's folder before the lock file goes there
        check_target(output_path, resume, overwrite)
    # One writer per bank: the lock is taken before any work and released however the run ends (see BankLock).
    with BankLock(output_path) if first else nullcontext():
        normals = list_normals(normal, max_images)
        normal_root = Path(normal).expanduser().resolve()
        sources = discover_embeddings(embeddings) if backend == "diffusion" else discover_cutouts(support)
        chosen = choose_priors(priors, category, normal_root, sources, support, backend, priors_margin, priors_rotate)
        priors_table, category = chosen.table, chosen.category
        names = match_defects(sources, priors_table, chosen.name, defects)
        regions = load_placement(placement, names, sources.names, category, placement_foreground) if placement else None
        sources.names = names
        model = load_model(backbone, revision, sources) if backend == "diffusion" else None
        if resolution is None:
            resolution = model.resolution if model is not None else normals[0].size[0]
        check_number("resolution", resolution, MIN_RESOLUTION, MAX_RESOLUTION, integer=True)
        if model is not None:
            check_for_model(model, steps, resolution)
        resized = [n for n in normals if n.size != (resolution, resolution)]
        if resized:
            sizes = sorted({f"{n.size[0]}x{n.size[1]}" for n in resized})
            stretched = sum(n.size[0] != n.size[1] for n in resized)
            logger.warning(
                "%d of %d normal images (%s) are resized to %dx%d%s; the bank records the resized copies in normal/",
                len(resized),
                len(normals),
                ", ".join(sizes[:4]),
                resolution,
                resolution,
                f" ({stretched} not square: stretched, the aspect ratio is not kept)" if stretched else "",
            )
        common: dict[str, Any] = {
            "backend": backend,
            "normal": str(normal_root),
            "sources": len(normals),
            "sources_sha256": [n.sha256 for n in normals],
            "defects": names,
            "priors": {name: priors_table[name].describe() for name in names},
            "foreground": resolve_rule(foreground, category),
            "min_foreground": min_foreground,
            "max_tries": max_tries,
            "per_image": per_image,
            "samples_per_box": samples_per_box,
            "resolution": resolution,
            "seed": seed,
            "keep_outside": keep_outside,
            "feather": float(feather) if feather is not None else max(1.0, resolution / 64),
            "priors_auto": chosen.derived,
            "placement": regions.describe() if regions is not None else None,
        }
        if model is not None:
            import torch

            from anomalib_anogen.core.devices import resolve_precision, wants_cuda

            device = torch.device("cuda" if wants_cuda(accelerator) else "cpu")
            settings = GenerateSettings(
                **common,
                backbone=model.spec,
                backbone_sha256=model.fingerprint(),
                embeddings={name: sha256_file(sources.embeddings[name].path) for name in names},
                steps=steps,
                guidance=guidance,
                eta=0.0,
                batch_size=batch_size,
                precision=resolve_precision(precision, device),
            )
        else:
            support_files = {
                name: [
                    [sha256_file(c.source.pair.image), sha256_file(c.source.pair.mask)] for c in sources.cutouts[name]
                ]
                for name in names
            }
            settings = GenerateSettings(**common, support=support_files, blend=blend)
        # Workers never prepare the bank.
        mode = check_bank_output(output_path, settings.to_json(), resume, overwrite) if first else "worker"
        items = work_list(normals, names, per_image, samples_per_box)
        with torch_threads(cpu_threads(threads, backend, model)):
            return run(
                model, sources, items, priors_table, settings, output_path, mode, accelerator, devices, progress,
                regions, writers, num_nodes,
            )  # fmt: skip
