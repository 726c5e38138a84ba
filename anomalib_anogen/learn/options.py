"""The options of ``anogen learn`` and ``anogen import-embedding``: typed objects that the CLI and Python build alike.

Building one checks every choice and range that needs no file (exit code 2 from the CLI, before any work and
before any output exists).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from anomalib_anogen.core.checks import (
    MAX_LEARN_BATCH_SIZE,
    MAX_LEARN_RESOLUTION,
    MAX_LEARN_STEPS,
    MAX_LR,
    MIN_RESOLUTION,
    SEEDS,
    UNIT_INTERVAL,
    Allowed,
    between,
    check_number,
    check_threads,
)
from anomalib_anogen.core.devices import check_devices, check_precision
from anomalib_anogen.core.errors import AnogenInputError

DEFAULT_TOKEN = "<anogen-{defect}>"


@dataclass
class LearnConfig:
    """Hyper-parameters of one masked textual-inversion run (defaults: the paper's)."""

    steps: int = 6000
    lr: float = 5e-3  # base learning rate, per sample (see effective_lr)
    scale_lr: bool = True
    batch_size: int = 4
    resolution: int | None = None  # None: the backbone's native resolution
    seed: int = 0
    init_word: str = "defect"
    hflip_p: float = 0.5
    weight_decay: float = 0.01  # torch.optim.AdamW's default, which the LDM code uses
    precision: str = "auto"  # auto | 32 | bf16 | fp16 (autocast; the learned vector stays fp32)
    loss_window: int = 50  # at most this many steps (and a tenth of them) are averaged for the start/end loss

    def __post_init__(self) -> None:
        """Refuse settings that cannot train, or not sensibly (input errors, exit code 2), naming the range."""
        check_number("--steps", self.steps, between(1, MAX_LEARN_STEPS))
        check_number("--batch_size", self.batch_size, between(1, MAX_LEARN_BATCH_SIZE))
        check_number("--lr", self.lr, Allowed(low=0, low_open=True, high=MAX_LR))
        check_number("--hflip_p", self.hflip_p, UNIT_INTERVAL)
        check_number("--seed", self.seed, SEEDS)
        check_precision(self.precision)
        if self.resolution is not None and not (
            between(MIN_RESOLUTION, MAX_LEARN_RESOLUTION).admits(self.resolution) and self.resolution % 8 == 0
        ):
            msg = (
                f"--resolution must be a multiple of 8 in [{MIN_RESOLUTION}, {MAX_LEARN_RESOLUTION}], or null for "
                f"the backbone's native one (got {self.resolution})"
            )
            raise AnogenInputError(msg)

    def effective_lr(self, num_devices: int = 1, grad_accumulation: int = 1) -> float:
        """The paper's rule (LDM ``main.py``): lr = base_lr x batch_size x devices x accumulation, if scale_lr.

        Each defect is learned on one device, so ``num_devices`` is 1 here whatever the number of GPUs.
        """
        if not self.scale_lr:
            return self.lr
        return self.lr * self.batch_size * num_devices * grad_accumulation


@dataclass
class LearnOptions:
    """Learn one anomaly embedding per defect type found in a support folder (AnoGen stage 1).

    A rerun into the same --output keeps each finished defect learned with the same settings (checked: the
    embedding's sha256, every hyper-parameter, the prompt templates, the support files' content, the backbone's
    weights) and learns the others; other settings are refused unless --overwrite, which relearns every defect.

    Args:
        support: Support folder: <defect>/<name>.png with <defect>/<name>_mask.png, or an MVTec category
            (test/<defect>/ with ground_truth/<defect>/), from which --shots images per defect are drawn.
        output: Folder that receives <defect>/learned_embeds.safetensors and <defect>/anogen_embedding.json.
        backbone: tiny | tiny-ldm (built in, random weights) | a diffusers SD 1.x/2.x or LDMTextToImagePipeline
            folder or hub id.
        revision: Hub revision (branch, tag or commit) when --backbone is a hub id.
        defects: Only these defect types (default: every one found).
        shots: Support images per defect, 1 or more (default: all in the support layout, 3 in the MVTec layout).
        steps: Optimisation steps per defect, 1 to 1000000 (paper: 6000).
        lr: Base learning rate per sample, in (0, 1]; the rate used is lr x batch_size when --scale_lr (as the
            paper's code).
        scale_lr: Multiply --lr by the batch size (the LDM textual-inversion rule).
        batch_size: Support samples per step, 1 to 1024 (drawn with replacement across epochs of shuffled images).
        resolution: Training resolution in pixels, a multiple of 8 in [8, 2048] (default: the backbone's native one).
        seed: Seed of the support selection, flips, noise, timesteps and prompts (and of random-weight backbones),
            0 to 2**32 - 1.
        token: Placeholder token; {defect} is replaced by the defect name.
        init_word: Word whose embedding initialises the token (must be one token).
        hflip_p: Probability of a horizontal flip in [0, 1], applied to image and mask together.
        precision: auto (bf16 autocast on a GPU, fp16 with a gradient scaler where bf16 is missing; fp32 on a
            CPU) | 32 | bf16 | fp16; a CPU always trains in fp32.
        accelerator: auto | cpu | gpu.
        devices: GPUs to spread the defects over, 1 or more (auto: all, at most one per defect).
        num_nodes: Machines to spread the defects over, each started by torchrun or SLURM (docs/learn.md); 1 or more.
        overwrite: Replace finished embeddings in --output (refused otherwise).
        progress: Show a progress bar with the current loss.
        threads: CPU threads for torch, 1 to the machine's core count (default: 1 for the tiny backbones, whose
            ops are too small to split across threads, else torch's default).
    """

    support: str
    output: str
    backbone: str
    revision: str | None = None
    defects: list[str] | None = None
    shots: int | None = None
    steps: int = 6000
    lr: float = 5e-3
    scale_lr: bool = True
    batch_size: int = 4
    resolution: int | None = None
    seed: int = 0
    token: str = DEFAULT_TOKEN
    init_word: str = "defect"
    hflip_p: float = 0.5
    precision: str = "auto"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    overwrite: bool = False
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        """Every check that needs no file, with the range of each option."""
        self.config()  # the hyper-parameters' ranges
        if self.shots is not None:
            check_number("--shots", self.shots, Allowed(integer=True, low=1, text="an integer, at least 1"))
        check_devices(self.accelerator, self.devices, self.num_nodes)
        check_threads(self.threads)

    def config(self) -> LearnConfig:
        """The hyper-parameters of textual inversion (what each learned embedding records)."""
        return LearnConfig(
            steps=self.steps,
            lr=self.lr,
            scale_lr=self.scale_lr,
            batch_size=self.batch_size,
            resolution=self.resolution,
            seed=self.seed,
            init_word=self.init_word,
            hflip_p=self.hflip_p,
            precision=self.precision,
        )


@dataclass
class ImportEmbeddingOptions:
    """Convert the authors' released embeddings.pt files into the anogen format for the LDM backbone.

    Args:
        input: A released .pt file or a folder of them (e.g. ../shared/data/anogen_reference/released_embeddings);
            several as a list: --input '[a.pt, b.pt]'.
        output: Folder that receives <defect>/learned_embeds.safetensors and <defect>/anogen_embedding.json.
        token: Token name in the written file (the release uses "*").
        category: Only <category>_*.pt in input folders, and strip "<category>_" from the defect names.
        defect: Defect name for a single input file (default: the file name, less "<category>_").
        overwrite: Replace finished embeddings in --output (refused otherwise).
    """

    input: str | list[str]
    output: str
    token: str = "*"
    category: str | None = None
    defect: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        """A --defect must be usable as a folder name."""
        defect = self.defect
        if defect is not None and (not defect or defect.startswith(".") or "/" in defect or os.sep in defect):
            msg = f"--defect {defect!r} must be a folder name (not empty, no '/', not starting with '.')"
            raise AnogenInputError(msg)

    @property
    def inputs(self) -> list[str]:
        """``--input`` as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)
