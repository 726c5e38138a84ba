"""``anogen generate``: put defects into normal images at sampled boxes and write an anomaly bank (AnoGen stage 2).

The work list is every normal image x every defect type x ``per_image`` records (``samples_per_box`` samples
per box), in that order, cut into fixed chunks of ``batch_size``. A chunk is one sampler call, so its
composition never depends on what was already done: a resumed run, a single device and several devices
(Lightning Fabric, ``chunks[rank::world_size]``) all compute each record in the same batch and write the same
bytes. Every record's box and noise come from seeds derived from (``seed``, its id), never from a shared RNG.

The options are checked before anything is written; then the bank's lock is taken (one writer per bank, see
:class:`~anomalib_anogen.generation.bank_writer.BankLock`) and the inputs are checked before the bank is touched;
see docs/generate.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomalib_anogen.generation.boxes import (
    AUTO_MARGIN,
    AUTO_MIN_COMPONENT,
    DEFAULT_PRIORS,
    MAX_TRIES,
    MIN_FOREGROUND,
    MVTEC_TEXTURES,
    BoxPrior,
    PlacedBox,
    box_mask,
    composite,
    derive_prior,
    derived_seed,
    feather_alpha,
    foreground_mask,
    load_priors,
    sample_box,
)
from anomalib_anogen.generation.checks import SEED_MAX, check_number
from anomalib_anogen.generation.devices import check_precision
from anomalib_anogen.generation.errors import AnogenInputError
from anomalib_anogen.generation.placement import Placement, load_placement
from anomalib_anogen.generation.support import IMAGE_SUFFIXES, _is_ignored, load_rgb, sha256_file
from anomalib_anogen.generation.threads import torch_threads

logger = logging.getLogger(__name__)

BACKENDS = ("diffusion", "paste")
FOREGROUNDS = ("auto", "otsu", "all")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
MIN_RESOLUTION, MAX_RESOLUTION = 8, 4096  # output side in pixels; 4096 is 48 MiB per RGB image already
TRIES_LIMIT = 10_000  # each try rasterises a box: more would stall a run on an object too small for its priors


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


@dataclass
class DefectSources:
    """What the backend draws each defect from: embeddings (diffusion) or cut-out support anomalies (paste)."""

    names: list[str]
    embeddings: dict[str, Any] = field(default_factory=dict)
    cutouts: dict[str, list[Any]] = field(default_factory=dict)
    where: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def list_normals(folder: str | Path, max_images: int | None = None) -> list[NormalImage]:
    """The normal images directly in ``folder`` (sorted by name), each decoded once so bad files fail now."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise AnogenInputError(f"{root}: normal image folder not found")
    files = []
    for path in sorted(root.iterdir()):
        if path.is_dir() or _is_ignored(path):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise AnogenInputError(f"{path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
        files.append(path)
    if not files:
        raise AnogenInputError(f"{root}: no normal images found")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise AnogenInputError(f"{path}: same name as {stems[path.stem].name}; record ids would collide")
        stems[path.stem] = path
    files = files[:max_images] if max_images else files
    return [NormalImage(i, p, sha256_file(p), load_rgb(p).size) for i, p in enumerate(files)]


def _discover_embeddings(folder: str | None) -> DefectSources:
    from anomalib_anogen.generation.embeddings import is_finished, load_embedding

    if folder is None:
        raise AnogenInputError("--embeddings is required for --backend diffusion (or use --backend paste --support)")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise AnogenInputError(f"{root}: embeddings folder not found")
    found = {p.name: load_embedding(p) for p in sorted(root.iterdir()) if p.is_dir() and is_finished(p)}
    if not found:
        raise AnogenInputError(f"{root}: no learned embeddings (expected <defect>/learned_embeds.safetensors)")
    return DefectSources(names=sorted(found), embeddings=found, where=f"embedding in {root}")


def _discover_cutouts(folder: str | None) -> DefectSources:
    from anomalib_anogen.generation.paste import cut
    from anomalib_anogen.generation.support import discover_support, load_support

    if folder is None:
        raise AnogenInputError("--support is required for --backend paste")
    found = discover_support(folder)
    loaded = load_support(found)
    cutouts = {defect: [cut(pair) for pair in pairs] for defect, pairs in loaded.items()}
    return DefectSources(names=sorted(cutouts), cutouts=cutouts, where=f"support anomaly in {found.root}")


def _match_defects(
    sources: DefectSources, priors: dict[str, BoxPrior], priors_name: str, wanted: list[str] | None
) -> list[str]:
    """The defect types to generate: those with both a prior and an embedding/support set, or a clear error."""
    if wanted:
        for defect in wanted:
            if defect not in priors:
                raise AnogenInputError(f"--defects {defect}: no box prior in {priors_name}")
            if defect not in sources.names:
                raise AnogenInputError(f"--defects {defect}: no {sources.where}")
        return sorted(set(wanted))
    no_source = sorted(set(priors) - set(sources.names))
    if no_source:
        raise AnogenInputError(
            f"{priors_name} names defect(s) {', '.join(no_source)} without an {sources.where} "
            f"(have: {', '.join(sources.names)}); remove them from the priors or pass --defects"
        )
    no_prior = sorted(set(sources.names) - set(priors))
    if no_prior:
        raise AnogenInputError(
            f"defect(s) {', '.join(no_prior)} have an {sources.where} but no box prior in {priors_name} "
            f"(it names: {', '.join(sorted(priors))}); add them or pass --defects"
        )
    return sorted(priors)


@dataclass
class Priors:
    """The box priors of a run, what they are called in messages and, for derived ones, how they were derived."""

    table: dict[str, BoxPrior]
    category: str | None
    name: str
    derived: dict[str, Any] | None = None  # recorded in bank.json as settings["priors_auto"]


def _shipped_category(category: str | None, normal: Path) -> str | None:
    """The category of the shipped MVTec priors for this run, or ``None`` when they have none for it."""
    import json

    table = json.loads(DEFAULT_PRIORS.read_text())
    if category is None:
        category = next((part for part in reversed(normal.parts) if part in table), None)
    return category if category in table else None


def _support_masks(sources: DefectSources, support: str | None, backend: str) -> tuple[dict[str, list[Any]], Path]:
    """Each defect's support pairs (decoded): the paste backend's own, or (diffusion) those of ``--support``."""
    from anomalib_anogen.generation.support import discover_support, load_support

    if backend == "paste":
        pairs = {name: [c.source for c in cutouts] for name, cutouts in sources.cutouts.items()}
        return pairs, Path(str(support)).expanduser()
    if support is None:
        raise AnogenInputError(
            "--priors auto derives the box sizes from the support masks: pass --support (the folder given to "
            "`anogen learn`), or a --priors file"
        )
    found = discover_support(support)
    learned = [name for name in found.defects if name in sources.names]  # support folders without an embedding
    found.pairs = {name: found.pairs[name] for name in learned}  # are not generated: no prior needed for them
    return load_support(found), found.root


def _priors(
    priors: str | None,
    category: str | None,
    normal: Path,
    sources: DefectSources,
    support: str | None,
    backend: str,
    margin: float,
    rotate: bool,
) -> Priors:
    """The shipped MVTec priors, a user's file, or priors derived from the support masks (``--priors auto``).

    Without ``--priors``, a category that the shipped table does not have (or none found in the ``--normal``
    path) falls back to ``auto``, with a log line; an explicit file always wins.
    """
    auto = priors == "auto"
    if priors is None:
        shipped = _shipped_category(category, normal)
        if shipped is None:
            what = f"category {category!r}" if category else f"{normal} (no MVTec category in the path)"
            if backend == "diffusion" and support is None:
                raise AnogenInputError(
                    f"the shipped MVTec box priors have none for {what}: pass --priors FILE, or --priors auto with "
                    "--support (the support set, whose masks give the box sizes)"
                )
            logger.info(
                "the shipped MVTec box priors have none for %s: deriving them from the support masks (--priors auto)",
                what,
            )
            auto = True
        else:
            category = shipped
    if not auto and (margin != AUTO_MARGIN or not rotate):
        raise AnogenInputError(
            "--priors_margin and --priors_rotate apply to priors derived from the support masks (--priors auto) only"
        )
    if not auto:
        table, found = load_priors(priors, category, normal)
        name = str(Path(priors).expanduser()) if priors else "the MVTec priors (configs/anogen/mvtec_box_ranges.json)"
        return Priors(table, found, name)
    pairs, root = _support_masks(sources, support, backend)
    table = {
        defect: derive_prior([p.mask for p in loaded], margin, rotate, f"{root / defect}")
        for defect, loaded in sorted(pairs.items())
    }
    for defect, prior in table.items():
        logger.info(
            "--priors auto: %s: width %.3f-%.3f, height %.3f-%.3f of the image side, rotate %s (from %d support masks)",
            defect,
            *prior.width,
            *prior.height,
            str(prior.rotate).lower(),
            len(pairs[defect]),
        )
    derived = {
        "margin": margin,
        "rotate": rotate,
        "min_component": AUTO_MIN_COMPONENT,
        "masks": {d: [sha256_file(p.pair.mask) for p in loaded] for d, loaded in sorted(pairs.items())},
    }
    return Priors(table, category, f"the priors derived from the support masks in {root}", derived)


def _load_model(spec: str | None, revision: str | None, sources: DefectSources) -> Any:
    """The backbone the embeddings were learned on (recorded in their metadata), checked by weight hash."""
    from anomalib_anogen.generation.backbones import load_backbone

    recorded = {name: (e.metadata.get("backbone") or {}) for name, e in sources.embeddings.items()}
    ids = {str(info["id"]) for info in recorded.values() if info.get("id")}
    if spec is None:
        if len(ids) != 1:
            found = ", ".join(sorted(ids)) or "none recorded"
            raise AnogenInputError(f"pass --backbone: the embeddings do not name one backbone ({found})")
        spec = ids.pop()
    seeds = {info.get("seed") for info in recorded.values() if info.get("id") == spec and info.get("seed") is not None}
    model = load_backbone(spec, revision=revision, seed=int(seeds.pop()) if len(seeds) == 1 else 0)
    for name, info in recorded.items():
        expected = info.get("weights_sha256")
        if expected and expected != model.fingerprint():
            raise AnogenInputError(
                f"{sources.embeddings[name].path}: learned on backbone {info.get('id')!r} with other weights "
                f"than --backbone {spec!r}; generate with the backbone it was learned on"
            )
    return model


def _tokens(sources: DefectSources) -> dict[str, str]:
    """One distinct token per defect (released embeddings all use ``*``; those are renamed per defect)."""
    tokens = {name: sources.embeddings[name].token for name in sources.names}
    counts: dict[str, int] = {}
    for token in tokens.values():
        counts[token] = counts.get(token, 0) + 1
    return {name: token if counts[token] == 1 else f"<anogen-{name}>" for name, token in tokens.items()}


def _check_options(
    backend: str,
    blend: str,
    foreground: str,
    precision: str,
    accelerator: str,
    devices: int | str,
    numbers: dict[str, Any],
) -> None:
    """Choices and numeric ranges, before any work and before any output exists (see docs/generate.md)."""
    if backend not in BACKENDS:
        raise AnogenInputError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    from anomalib_anogen.generation.paste import BLENDS

    if blend not in BLENDS:
        raise AnogenInputError(f"--blend must be one of {', '.join(BLENDS)} (got {blend!r})")
    if foreground not in FOREGROUNDS:
        raise AnogenInputError(f"--foreground must be one of {', '.join(FOREGROUNDS)} (got {foreground!r})")
    check_precision(precision)
    if accelerator not in ACCELERATORS:
        raise AnogenInputError(f"--accelerator must be one of {', '.join(ACCELERATORS)} (got {accelerator!r})")
    if devices != "auto":
        check_number("devices", devices, 1, integer=True, note="or auto for every GPU")
    check_number("per_image", numbers["per_image"], 1, integer=True)
    # more samples per box than --per_image is allowed: every record of an image and defect then shares one box
    check_number("samples_per_box", numbers["samples_per_box"], 1, integer=True)
    check_number("steps", numbers["steps"], 1, integer=True)  # the backbone's maximum is checked once it is loaded
    check_number("guidance", numbers["guidance"], 1, note="1 turns guidance off, the paper uses 10")
    if numbers["feather"] is not None:
        check_number("feather", numbers["feather"], 0, note="pixels inside the box edge, 0 for a hard edge")
    if numbers["resolution"] is not None:
        check_number("resolution", numbers["resolution"], MIN_RESOLUTION, MAX_RESOLUTION, integer=True)
    check_number("min_foreground", numbers["min_foreground"], 0, 1, note="a share of the box")
    check_number("max_tries", numbers["max_tries"], 1, TRIES_LIMIT, integer=True)
    check_number("seed", numbers["seed"], 0, SEED_MAX, integer=True)
    if numbers["max_images"] is not None:
        check_number("max_images", numbers["max_images"], 1, integer=True, note="or leave it out for every image")
    check_number("batch_size", numbers["batch_size"], 1, integer=True)
    check_number("priors_margin", numbers["priors_margin"], 0, 10, note="a share added to the measured box sizes")
    if numbers["threads"] is not None:
        cpus = os.cpu_count() or 1
        check_number("threads", numbers["threads"], 1, cpus, integer=True, note="this machine's CPUs")


def _check_for_model(model: Any, steps: int, resolution: int) -> None:
    """The ranges that depend on the backbone: DDIM steps and the VAE's downsampling factor."""
    limit = int(model.noise_scheduler.config.num_train_timesteps)
    check_number("steps", steps, 1, limit, integer=True, note=f"the training timesteps of backbone {model.spec}")
    factor = model.vae_scale_factor
    if resolution % factor:
        raise AnogenInputError(
            f"--resolution must be a multiple of {factor}, the VAE factor of backbone {model.spec} (got {resolution})"
        )


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
        """Where boxes may go: the Otsu foreground, or everything for a texture."""
        if source.index not in self.masks:
            image = self.image(source)
            if self.foreground == "all":
                self.masks[source.index] = np.ones(image.shape[:2], bool)
            else:
                self.masks[source.index] = foreground_mask(image)
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
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> Path:
    """Generate anomalies into normal images at sampled boxes and write an anomaly bank (AnoGen stage 2).

    Args:
        normal: Folder of normal images (e.g. ../shared/data/MVTecAD/bottle/train/good); images of another size
            than --resolution are resized (bicubic), with a warning.
        output: Bank folder: images/<defect>/<id>.png, masks/<defect>/<id>_mask.png, manifest.jsonl, bank.json;
            bank.lock while a run writes it (a second run on the same bank is refused).
        embeddings: Folder of learned embeddings (<defect>/learned_embeds.safetensors, from `anogen learn`).
        backbone: The backbone the embeddings were learned on (default: the one their metadata names).
        revision: Hub revision when --backbone is a hub id.
        backend: diffusion (the paper: blended latent diffusion with the learned tokens) | paste (real support
            anomalies cut by their masks and blended in; no model weights).
        support: Support folder for --backend paste (the layout of `anogen learn`).
        priors: Box-prior json, {category: {defect: [[w_min, w_max], [h_min, h_max], rotate]}} or {defect: ...};
            or auto: derived from the support masks (needs --support, also for the diffusion backend). Default:
            the paper's MVTec priors (configs/anogen/mvtec_box_ranges.json), or auto for a category they lack.
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
        foreground: auto (all foreground for MVTec textures, else otsu) | otsu | all.
        min_foreground: Share of a box that must lie on the foreground, 0 to 1 (paper: 0.75).
        max_tries: Boxes drawn (1 to 10000) before the best one seen is used (logged, recorded as box_fallback).
        seed: Seed of every box, noise and jitter, 0 to 2**32 - 1 (each record's derives from it and its id).
        max_images: Only the first N >= 1 normal images (by name).
        batch_size: Records per UNet call (the same --batch_size is needed for a byte-identical --resume).
        precision: auto (fp16 on a GPU, diffusers' convention: bf16's rounding is amplified by the guidance
            scale, see docs/benchmarks.md bench_precision; fp32 on a CPU) | 32 | bf16 | fp16; a CPU always runs fp32.
        accelerator: auto | cpu | gpu | cuda.
        devices: GPUs to split the work list over, >= 1 (auto: all).
        resume: Continue an interrupted bank with the same settings.
        overwrite: Replace a bank in --output (refused otherwise).
        progress: Show a progress bar with images/s and ETA.
        threads: CPU threads for torch, 1 to the machine's CPUs (default: 1 for the tiny backbones and paste, else
            torch's default).
    """
    from anomalib_anogen.generation.bank_writer import BankLock, check_output, check_target

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
    }
    if placement is None and not placement_foreground:
        raise AnogenInputError("--placement_foreground false applies only with --placement")
    _check_options(backend, blend, foreground, precision, accelerator, devices, numbers)
    output_path = Path(output).expanduser()
    first = _is_first_process()
    if first:  # refuse a file or a stranger's folder before the lock file goes there
        check_target(output_path, resume, overwrite)
    # One writer per bank: the lock is taken before any work and released however the run ends (see BankLock).
    with BankLock(output_path) if first else nullcontext():
        normals = list_normals(normal, max_images)
        normal_root = Path(normal).expanduser().resolve()
        sources = _discover_embeddings(embeddings) if backend == "diffusion" else _discover_cutouts(support)
        chosen = _priors(priors, category, normal_root, sources, support, backend, priors_margin, priors_rotate)
        priors_table, category = chosen.table, chosen.category
        names = _match_defects(sources, priors_table, chosen.name, defects)
        regions = load_placement(placement, names, sources.names, category, placement_foreground) if placement else None
        sources.names = names
        model = _load_model(backbone, revision, sources) if backend == "diffusion" else None
        if resolution is None:
            resolution = model.resolution if model is not None else normals[0].size[0]
        check_number("resolution", resolution, MIN_RESOLUTION, MAX_RESOLUTION, integer=True)
        if model is not None:
            _check_for_model(model, steps, resolution)
        resized = [n for n in normals if n.size != (resolution, resolution)]
        if resized:
            sizes = sorted({f"{n.size[0]}x{n.size[1]}" for n in resized})
            logger.warning(
                "%d of %d normal images (%s) are resized to %dx%d; the bank records the resized copies in normal/",
                len(resized),
                len(normals),
                ", ".join(sizes[:4]),
                resolution,
                resolution,
            )
        foreground_rule = foreground if foreground != "auto" else ("all" if category in MVTEC_TEXTURES else "otsu")
        feather_px = float(feather) if feather is not None else max(1.0, resolution / 64)
        settings: dict[str, Any] = {
            "backend": backend,
            "normal": str(normal_root),
            "sources": len(normals),
            "sources_sha256": [n.sha256 for n in normals],
            "defects": names,
            "priors": {name: priors_table[name].describe() for name in names},
            "foreground": foreground_rule,
            "min_foreground": min_foreground,
            "max_tries": max_tries,
            "per_image": per_image,
            "samples_per_box": samples_per_box,
            "resolution": resolution,
            "seed": seed,
            "keep_outside": keep_outside,
            "feather": feather_px,
        }
        # Only when used, so that a bank made before these options keeps its settings (and --resume works).
        if chosen.derived is not None:
            settings["priors_auto"] = chosen.derived
        if regions is not None:
            settings["placement"] = regions.describe()
        if model is not None:
            import torch

            from anomalib_anogen.generation.devices import resolve_precision
            from anomalib_anogen.generation.support import sha256_file as file_sha

            settings.update(
                backbone=model.spec,
                backbone_sha256=model.fingerprint(),
                embeddings={name: file_sha(sources.embeddings[name].path) for name in names},
                steps=steps,
                guidance=guidance,
                eta=0.0,
                batch_size=batch_size,
                precision=resolve_precision(precision, torch.device("cuda" if _wants_cuda(accelerator) else "cpu")),
            )
        else:
            settings.update(
                support={
                    name: [
                        [sha256_file(c.source.pair.image), sha256_file(c.source.pair.mask)]
                        for c in sources.cutouts[name]
                    ]
                    for name in names
                },
                blend=blend,
            )
        mode = check_output(output_path, settings, resume, overwrite) if first else "worker"  # workers never prepare
        items = work_list(normals, names, per_image, samples_per_box)
        with torch_threads(_cpu_threads(threads, backend, model)):
            return _run(
                model, sources, items, priors_table, settings, output_path, mode, accelerator, devices, progress,
                regions,
            )  # fmt: skip


def _is_first_process() -> bool:
    """False in the worker processes that Lightning Fabric (or torchrun) starts for ranks > 0 of a multi-GPU run.

    Those run ``generate`` from the start again while rank 0 holds the bank's lock and prepares the bank, so they
    neither take the lock nor judge the output folder (rank 0 did both); they only write their chunks.
    """
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _wants_cuda(accelerator: str) -> bool:
    import torch

    return accelerator in {"auto", "gpu", "cuda"} and torch.cuda.is_available()


def _cpu_threads(threads: int | None, backend: str, model: Any) -> int | None:
    """One torch thread for ops too small to split (tiny backbones, paste) unless told otherwise."""
    if threads is not None or backend == "paste" or (model is not None and model.spec in {"tiny", "tiny-ldm"}):
        return threads or 1
    return None


def _run(
    model: Any,
    sources: DefectSources,
    items: list[WorkItem],
    priors: dict[str, BoxPrior],
    settings: dict[str, Any],
    output: Path,
    mode: str,
    accelerator: str,
    devices: int | str,
    progress: bool,
    placement: Placement | None = None,
) -> Path:
    from lightning.fabric import Fabric

    from anomalib_anogen.generation.bank_writer import BankWriter
    from anomalib_anogen.generation.learn import _plan_devices

    batch = settings.get("batch_size") or 1
    chunks = chunks_of(items, batch)
    kind, count = _plan_devices(accelerator, devices, len(chunks)) if model is not None else ("cpu", 1)
    fabric = Fabric(accelerator=kind, devices=count, strategy="ddp" if count > 1 else "auto")
    fabric.launch()
    order = {item.record_id: item.order for item in items}
    writer = BankWriter(output, settings)
    if fabric.global_rank == 0:
        writer.prepare(mode, order)
    fabric.barrier()
    done = writer.done_ids()
    mine = [c for c in chunks[fabric.global_rank :: fabric.world_size] if any(i.record_id not in done for i in c)]
    pending = sum(1 for c in mine for i in c if i.record_id not in done)
    maker = (
        _DiffusionMaker(model, sources, settings, fabric.device)
        if model is not None
        else _PasteMaker(sources, settings)
    )
    cache = SourceCache(settings["resolution"], settings["foreground"], placement)
    bar = _bar(pending, progress, fabric.global_rank, fabric.world_size)
    start, written, fallbacks = time.perf_counter(), 0, 0
    try:
        for chunk in mine:
            cache.forget_before(chunk[0].source.index)
            boxes = [_box(item, cache, priors, settings) for item in chunk]
            made = maker.make(chunk, boxes, cache)
            for item, placed, (image, mask, extra) in zip(chunk, boxes, made, strict=True):
                if item.record_id in done:
                    continue
                record = _record(item, placed, settings, writer, cache, extra)
                writer.write(record, image, mask)
                fallbacks += int(record["box_fallback"])
                written += 1
                bar.update(1)
    finally:
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
        logger.info("%s: bank of %d records (%s)", output, len(records), ", ".join(settings["defects"]))
    return output


def _bar(total: int, enabled: bool, rank: int, world: int) -> Any:
    from tqdm.auto import tqdm

    description = "generate" if world == 1 else f"generate rank {rank}"
    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True, disable=not enabled, position=rank)


def _box(item: WorkItem, cache: SourceCache, priors: dict[str, BoxPrior], settings: dict[str, Any]) -> PlacedBox:
    """The record's box: shared by the samples of one box, drawn from (seed, image, defect, box index)."""
    box_index = item.box_index
    key = (item.source.index, item.defect, box_index)
    if key not in cache.boxes:
        rng = np.random.default_rng(derived_seed(settings["seed"], "box", item.source.stem, item.defect, box_index))
        placed = sample_box(
            priors[item.defect],
            settings["resolution"],
            cache.region(item.source, item.defect),
            rng,
            settings["min_foreground"],
            settings["max_tries"],
        )
        if cache.placement is not None:  # accepted on the placement region; the foreground share is recorded too
            inside = box_mask(placed.box, settings["resolution"]) > 0
            share = float(cache.object_mask(item.source)[inside].mean())
            placed = replace(placed, foreground=share, placement=placed.foreground)
        if placed.fallback:
            logger.warning(
                "%s / %s box %d: no box with >= %.0f%% %s in %d tries; using the best (%.0f%%)",
                item.source.path.name,
                item.defect,
                box_index,
                100 * settings["min_foreground"],
                "on the placement region" if cache.placement is not None else "foreground",
                settings["max_tries"],
                100 * (placed.placement if placed.placement is not None else placed.foreground),
            )
        cache.boxes[key] = placed
    return cache.boxes[key]


def _record(
    item: WorkItem,
    placed: PlacedBox,
    settings: dict[str, Any],
    writer: Any,
    cache: SourceCache,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The manifest record (less the image and mask hashes, which the writer adds)."""
    resolution = settings["resolution"]
    if item.source.size == (resolution, resolution):
        source, source_sha = str(item.source.path.resolve()), item.source.sha256
        original: dict[str, Any] = {}
    else:
        source, source_sha = writer.normal_copy(item.source.stem, cache.image(item.source))
        original = {"source_original": str(item.source.path.resolve()), "source_original_sha256": item.source.sha256}
    diffusion = settings["backend"] == "diffusion"
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
        "seed": settings["seed"],
        "record_seed": derived_seed(settings["seed"], item.record_id),
        "backend": settings["backend"],
        "backbone": settings.get("backbone"),
        "embedding_sha256": settings["embeddings"][item.defect] if diffusion else None,
        "steps": settings["steps"] if diffusion else None,
        "guidance": settings["guidance"] if diffusion else None,
        "keep_outside": settings["keep_outside"],
        "resolution": resolution,
        **extra,
    }


def _placement_fields(item: WorkItem, placed: PlacedBox, settings: dict[str, Any]) -> dict[str, Any]:
    """With --placement: the template a record's box was placed on and the box's share on the placement region."""
    if "placement" not in settings:
        return {}
    template = settings["placement"]["templates"][item.defect]["file"]
    return {"placement": template, "placement_fraction": round(float(placed.placement or 0.0), 4)}


# ----------------------------------------------------------------------------------------------------------------
# Backends: make the images of one chunk


class _PasteMaker:
    """Paste backend: one support anomaly per record, jittered from the record's seed."""

    def __init__(self, sources: DefectSources, settings: dict[str, Any]) -> None:
        self.cutouts = sources.cutouts
        self.settings = settings

    def make(
        self, chunk: list[WorkItem], boxes: list[PlacedBox], cache: SourceCache
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        from anomalib_anogen.generation.paste import paste

        for item, placed in zip(chunk, boxes, strict=True):
            normal = cache.image(item.source)
            mask = box_mask(placed.box, self.settings["resolution"])
            rng = np.random.default_rng(derived_seed(self.settings["seed"], item.record_id))
            image, cutout = paste(normal, placed.box, mask, self.cutouts[item.defect], rng, self.settings["blend"])
            extra = {"support_image": str(cutout.source.pair.image.resolve()), "blend": self.settings["blend"]}
            yield image, mask, extra


class _DiffusionMaker:
    """Diffusion backend: one blended-DDIM call per chunk, normal latents encoded once per image."""

    def __init__(self, model: Any, sources: DefectSources, settings: dict[str, Any], device: Any) -> None:
        from anomalib_anogen.generation.embeddings import apply_embedding
        from anomalib_anogen.generation.sampling import BlendedSampler

        model.to(device)
        tokens = _tokens(sources)
        for name in settings["defects"]:
            apply_embedding(model, sources.embeddings[name], token=tokens[name])
        self.model = model
        self.settings = settings
        self.sampler = BlendedSampler(model, settings["steps"], settings["guidance"], settings["precision"])
        # One prompt per defect, embedded alone so that its states never depend on a batch.
        self.prompts = {name: self.sampler.embed_prompts([tokens[name]]) for name in settings["defects"]}

    def _latent(self, source: NormalImage, cache: SourceCache) -> Any:
        if source.index not in cache.latents:
            cache.latents[source.index] = self.sampler.encode(cache.image(source)[None])
        return cache.latents[source.index]

    def make(
        self, chunk: list[WorkItem], boxes: list[PlacedBox], cache: SourceCache
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        import torch

        from anomalib_anogen.generation.sampling import BoxBatch

        resolution = self.settings["resolution"]
        masks = np.stack([box_mask(placed.box, resolution) for placed in boxes])
        masked = None
        if self.model.inpainting:  # the normal image with the box blanked, encoded per record
            blanked = [
                np.where(m[..., None] > 0, 127, cache.image(i.source)) for i, m in zip(chunk, masks, strict=True)
            ]
            masked = torch.cat([self.sampler.encode(b[None].astype(np.uint8)) for b in blanked])
        batch = BoxBatch(
            normal_latents=torch.cat([self._latent(item.source, cache) for item in chunk]),
            latent_masks=self.sampler.latent_mask(masks),
            prompt_embeds=torch.cat([self.prompts[item.defect] for item in chunk]),
            seeds=[derived_seed(self.settings["seed"], item.record_id) for item in chunk],
            masked_latents=masked,
        )
        decoded = self.sampler.decode(self.sampler.sample(batch))
        for item, mask, image in zip(chunk, masks, decoded, strict=True):
            if self.settings["keep_outside"]:
                image = composite(cache.image(item.source), image, feather_alpha(mask, self.settings["feather"]))
            yield image, mask, {}
