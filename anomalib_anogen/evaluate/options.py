"""``anogen evaluate``'s options: one typed object that the CLI (jsonargparse) and Python callers build alike.

Building it checks every choice and range that needs no file (exit code 2 from the CLI, before any work); the bank
and the test set are read and checked by :mod:`~anomalib_anogen.evaluate.inputs` before training starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from anomalib_anogen.core.checks import (
    EVALUATE_SIZE_STEP,
    MAX_EVALUATE_BATCH_SIZE,
    MAX_EVALUATE_SIZE,
    MAX_EVALUATE_STEPS,
    MAX_EVALUATE_WIDTH,
    MAX_LR,
    SEEDS,
    UNIT_INTERVAL_OPEN_RIGHT,
    Allowed,
    at_least,
    between,
    check_number,
    check_threads,
)
from anomalib_anogen.core.devices import check_devices
from anomalib_anogen.core.errors import AnogenInputError

# The default schedule, chosen by measurement on 2 CPU cores at 128 px (docs/evaluate.md, "Defaults and why").
DEFAULT_STEPS = 300
DEFAULT_BATCH_SIZE = 16
DEFAULT_WIDTH = 16
DEFAULT_LR = 2e-3
DEFAULT_NORMAL_SHARE = 0.25
DEFAULT_AVERAGE_LAST = 3


@dataclass
class EvaluateOptions:
    """Judge an anomaly bank: train a small U-Net on its images and box masks only, test it on real anomalies.

    The anchors' protocol (AnomalyDiffusion, DualAnoDiff, SeaS): a plain segmentation network trained on generated
    image/mask pairs and tested on real anomalous images with their masks. Here the network is anomalib's U-Net
    (DRAEM's discriminative sub-network), box masks get the detectors' weak rule, and the bank's normal source
    images join the training with empty masks. Prints pixel AP, pixel AUROC, PRO and image AUROC (maximum of the
    map) per seed, their mean and spread, and writes them as JSON.

    Args:
        bank: Bank folder made by `anogen generate` (records its manifest marks `rejected` are left out).
        test: Real anomalies with masks: an MVTec AD category folder (test/<defect>/*.png with
            ground_truth/<defect>/<name>_mask.png, test/good normal), an MVTec AD root with --category, or a folder
            in anomalib's Folder layout (--abnormal_dir with --mask_dir, optional --normal_test_dir).
        category: The category under an MVTec AD root given as --test.
        abnormal_dir: Folder layout: the anomalous test images under --test (sub-folders included).
        mask_dir: Folder layout: their masks under --test, at the same relative path, named <name>_mask.<ext> or
            <name>.<ext>.
        normal_test_dir: Folder layout: normal test images under --test (optional; image AUROC needs them).
        seeds: One seed or a list ([0, 1, 2]); each trains its own network (0 to 2**32 - 1).
        image_size: Side in pixels that training and testing run at, a multiple of 32 (32 to 1024).
        steps: Training steps (batches).
        epochs: Instead of --steps: passes over the bank's records (steps = epochs x records / bank images per
            batch, rounded up).
        batch_size: Images per step: bank records and normal images together.
        width: Base width of the U-Net (DRAEM's discriminative sub-network: 64).
        lr: Adam learning rate (peak of the warm-up and cosine decay).
        normal_share: Share of each batch that is a normal image (the bank's sources) with an empty mask, in [0, 1).
        p_cutoff: The weak rule: in-box pixels that the network already scores below this anomaly probability get
            no loss (the detectors' rule, paper: 0.1); outside the box every pixel is normal.
        average_last: Metrics are the mean of this many evaluations, at the last steps spaced evenly over the last
            tenth of the schedule (1: the final network only).
        accelerator: auto (a GPU when there is one) | cpu | gpu | cuda.
        devices: GPUs to spread the seeds over (auto: every GPU, at most one per seed).
        threads: CPU threads for torch, 1 to the machine's CPUs (default: 1 on a CPU, where the U-Net's ops are too
            small to gain from more on a shared machine; see docs/evaluate.md).
        output: JSON file to write the results to.
        progress: Show a progress bar per seed.
    """

    bank: str
    test: str | None = None
    category: str | None = None
    abnormal_dir: str = "anomalous"
    mask_dir: str = "masks"
    normal_test_dir: str | None = "test_normal"
    seeds: list[int] | int = field(default_factory=lambda: [0])
    image_size: int = 128
    steps: int = DEFAULT_STEPS
    epochs: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    width: int = DEFAULT_WIDTH
    lr: float = DEFAULT_LR
    normal_share: float = DEFAULT_NORMAL_SHARE
    p_cutoff: float = 0.1
    average_last: int = DEFAULT_AVERAGE_LAST
    accelerator: str = "auto"
    devices: int | str = "auto"
    threads: int | None = None
    output: str = "evaluate.json"
    progress: bool = True

    def __post_init__(self) -> None:
        """Every check that needs no file, in the order of the options."""
        if not self.test:
            msg = (
                "--test is required: real anomalous images with masks (an MVTec AD category folder such as "
                "../shared/data/MVTecAD/bottle, or a folder in anomalib's Folder layout)"
            )
            raise AnogenInputError(msg)
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]
        if not self.seeds:
            msg = "--seeds must name at least one seed"
            raise AnogenInputError(msg)
        for seed in self.seeds:
            check_number("--seeds", seed, SEEDS)
        if len(set(self.seeds)) != len(self.seeds):
            msg = f"--seeds must be distinct (got {self.seeds})"
            raise AnogenInputError(msg)
        size = check_number("--image_size", self.image_size, between(EVALUATE_SIZE_STEP, MAX_EVALUATE_SIZE), "pixels")
        if size % EVALUATE_SIZE_STEP:
            msg = (
                f"--image_size must be a multiple of {EVALUATE_SIZE_STEP} (the U-Net halves the side 5 times; "
                f"got {size})"
            )
            raise AnogenInputError(msg)
        check_number("--steps", self.steps, between(1, MAX_EVALUATE_STEPS))
        if self.epochs is not None:
            check_number("--epochs", self.epochs, Allowed(low=0, low_open=True, high=10_000), "passes over the bank")
        check_number("--batch_size", self.batch_size, between(1, MAX_EVALUATE_BATCH_SIZE))
        check_number("--width", self.width, between(1, MAX_EVALUATE_WIDTH), "DRAEM's discriminative sub-network: 64")
        check_number("--lr", self.lr, Allowed(low=0, low_open=True, high=MAX_LR))
        check_number("--normal_share", self.normal_share, UNIT_INTERVAL_OPEN_RIGHT, "a share of each batch")
        if self.bank_images_per_batch < 1:
            msg = (
                f"--batch_size {self.batch_size} with --normal_share {self.normal_share} leaves no bank image in a "
                "batch; raise --batch_size or lower --normal_share"
            )
            raise AnogenInputError(msg)
        check_number("--p_cutoff", self.p_cutoff, UNIT_INTERVAL_OPEN_RIGHT, "paper: 0.1")
        check_number("--average_last", self.average_last, at_least(1), "1: the final network only")
        check_devices(self.accelerator, self.devices, 1)
        check_threads(self.threads)
        if Path(self.output).expanduser().is_dir():
            msg = f"{self.output}: --output is a folder; give the JSON file to write"
            raise AnogenInputError(msg)

    @property
    def normal_per_batch(self) -> int:
        """Normal images in each batch."""
        return round(self.batch_size * self.normal_share)

    @property
    def bank_images_per_batch(self) -> int:
        """Bank records in each batch."""
        return self.batch_size - self.normal_per_batch

    def total_steps(self, records: int) -> int:
        """The training steps: --steps, or --epochs over ``records`` bank records."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * records / self.bank_images_per_batch))
