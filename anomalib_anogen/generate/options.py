"""``anogen generate``'s options: one typed object that the CLI (jsonargparse) and Python callers build alike.

Building it checks every choice and range that needs no file (exit code 2 from the CLI, before any work and
before any output exists); what depends on the inputs (the backbone's timesteps, its VAE factor) is checked by
:mod:`~anomalib_anogen.generate.inputs` once they are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anomalib_anogen.core.checks import (
    MAX_GENERATE_RESOLUTION,
    MAX_PRIORS_MARGIN,
    MAX_WRITERS,
    MIN_RESOLUTION,
    SEEDS,
    TRIES_LIMIT,
    UNIT_INTERVAL,
    at_least,
    between,
    check_choice,
    check_number,
    check_threads,
)
from anomalib_anogen.core.devices import check_devices, check_precision
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.generate.boxes import AUTO_MARGIN, MAX_TRIES, MIN_FOREGROUND
from anomalib_anogen.generate.foreground import FOREGROUND_RULES
from anomalib_anogen.generate.quality import check_limits

BACKENDS = ("diffusion", "paste")
BLENDS = ("feather", "poisson")  # the paste backend's blends (backends/paste.py)


@dataclass
class GenerateOptions:
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
            the paper's MVTec priors (anomalib_anogen/generate/mvtec_box_ranges.json), or auto for a category
            they lack.
        category: Category of the priors file (default: the part of the --normal path that the file names).
        priors_margin: --priors auto: the measured box sizes widened to [min / (1 + m), max * (1 + m)], 0 to 10.
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
        gate: Mark records whose quality measures (visibility, on_object, leak; docs/quality.md) break the limits
            as rejected, so that the `anogen` generator skips them (false: measure and record only).
        min_visibility: Reject a record whose visibility (its in-box change / the support anomalies' typical
            change) is below this, >= 0 (default: derived from the support anomalies).
        min_on_object: Reject a record with less than this share of its change on the part, 0 to 1 (default:
            derived from the support anomalies).
        max_leak: Reject a record whose mean change outside the box exceeds this share of the image's contrast,
            >= 0 (default 0.1).
    """

    normal: str
    output: str
    embeddings: str | None = None
    backbone: str | None = None
    revision: str | None = None
    backend: str = "diffusion"
    support: str | None = None
    priors: str | None = None
    category: str | None = None
    priors_margin: float = AUTO_MARGIN
    priors_rotate: bool = True
    placement: str | None = None
    placement_foreground: bool = True
    defects: list[str] | None = None
    per_image: int = 4
    samples_per_box: int = 2
    steps: int = 50
    guidance: float = 10.0
    keep_outside: bool = False
    feather: float | None = None
    blend: str = "feather"
    resolution: int | None = None
    foreground: str = "auto"
    min_foreground: float = MIN_FOREGROUND
    max_tries: int = MAX_TRIES
    seed: int = 0
    max_images: int | None = None
    batch_size: int = 8
    precision: str = "auto"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    threads: int | None = None
    writers: int = 2
    gate: bool = True
    min_visibility: float | None = None
    min_on_object: float | None = None
    max_leak: float | None = None

    def __post_init__(self) -> None:
        """Every check that needs no file, in the order of the options."""
        check_choice("--backend", self.backend, BACKENDS)
        check_choice("--blend", self.blend, BLENDS)
        check_choice("--foreground", self.foreground, FOREGROUND_RULES)
        check_precision(self.precision)
        check_devices(self.accelerator, self.devices, self.num_nodes)
        if self.placement is None and not self.placement_foreground:
            msg = "--placement_foreground false applies only with --placement"
            raise AnogenInputError(msg)
        if self.resume and self.overwrite:
            msg = "--resume and --overwrite exclude each other"
            raise AnogenInputError(msg)
        check_number("--per_image", self.per_image, at_least(1))
        # more samples per box than --per_image is allowed: every record of an image and defect then shares one box
        check_number("--samples_per_box", self.samples_per_box, at_least(1))
        check_number("--steps", self.steps, at_least(1))  # the backbone's maximum is checked once it is loaded
        check_number("--guidance", self.guidance, at_least(1, integer=False), "1 turns guidance off, the paper uses 10")
        if self.feather is not None:
            check_number(
                "--feather", self.feather, at_least(0, integer=False), "pixels inside the box edge, 0 for a hard edge"
            )
        if self.resolution is not None:
            check_number("--resolution", self.resolution, between(MIN_RESOLUTION, MAX_GENERATE_RESOLUTION))
        check_number("--min_foreground", self.min_foreground, UNIT_INTERVAL, "a share of the box")
        check_number("--max_tries", self.max_tries, between(1, TRIES_LIMIT))
        check_number("--seed", self.seed, SEEDS)
        if self.max_images is not None:
            check_number("--max_images", self.max_images, at_least(1), "or leave it out for every image")
        check_number("--batch_size", self.batch_size, at_least(1))
        check_number(
            "--priors_margin",
            self.priors_margin,
            between(0, MAX_PRIORS_MARGIN, integer=False),
            "a share added to the measured box sizes",
        )
        check_threads(self.threads)
        check_number("--writers", self.writers, between(0, MAX_WRITERS), "0 or 1: no writer threads")
        check_limits(self.min_visibility, self.min_on_object, self.max_leak)

    @property
    def output_path(self) -> Path:
        """``--output`` with ``~`` expanded."""
        return Path(self.output).expanduser()

    def feather_pixels(self, resolution: int) -> float:
        """The feather width at ``resolution``: ``--feather``, or resolution / 64 and at least 1 pixel."""
        return float(self.feather) if self.feather is not None else max(1.0, resolution / 64)
