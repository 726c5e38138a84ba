"""AnoGen's synthetic-anomaly generator: generated anomalies from a bank, mixed with Perlin/DTD ones.

As in the paper's code, each training sample comes from the bank with probability
``bank_probability`` (0.5) and from Perlin/DTD otherwise; of the bank draws, half are the
generated anomaly with its box mask and half the clean normal image it was generated from,
with an empty mask. A bank sample replaces the batch image: its reconstruction target is its
own source image (from the manifest), not the batch image. Random rotation (by default DRAEM's:
p=0.3, within ±90°; the DeSTSeg models set DeSTSeg's per-category rule) turns image, target and
mask together.

Bank files are read and resized by DataLoader worker processes that run ahead of the training
step, so loading stays out of the step's critical path.
"""

import logging
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from anomalib_anogen.arguments import check_argument
from anomalib_anogen.core.checks import NON_NEGATIVE_INT, POSITIVE_INT, UNIT_INTERVAL
from anomalib_anogen.data.bank import BankError, BankRecord, load_bank, unfinished_bank, unfinished_bank_error
from anomalib_anogen.data.generators.perlin import PerlinGenerator
from anomalib_anogen.data.generators.rotation import Rotation
from anomalib_anogen.data.synthetic import SyntheticBatch

NEVER_ENDING = 2**62

logger = logging.getLogger(__name__)


class BankDataset(Dataset):
    """Bank records as ``(anomalous image, box mask, source image)`` at one size, floats in [0, 1].

    Images are resized with antialiased bilinear interpolation and masks with nearest neighbour,
    so a bank made at 512 px serves a model trained at 256 px with its boxes intact.
    """

    def __init__(self, records: list[BankRecord], size: tuple[int, int]) -> None:
        self.records = records
        self.size = list(size)

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, path: Path, mode: ImageReadMode) -> torch.Tensor:
        return decode_image(read_file(str(path)), mode=mode)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        record = self.records[index]
        image = self._read(record.image, ImageReadMode.RGB)
        source = self._read(record.source, ImageReadMode.RGB)
        mask = self._read(record.mask, ImageReadMode.GRAY)
        image = tvf.resize(image, self.size, antialias=True).float() / 255
        source = tvf.resize(source, self.size, antialias=True).float() / 255
        mask = (tvf.resize(mask, self.size, interpolation=InterpolationMode.NEAREST) > 127).float()
        return image, mask, source


class AnoGenAnomalyGenerator(nn.Module):
    """Generated (bank) anomalies with box masks, mixed with Perlin/DTD anomalies.

    Its call follows ``PerlinAnomalyGenerator``'s contract (image or batch in,
    ``(augmented_image, anomaly_mask)`` out), so it can replace a stock ``Draem``'s
    ``augmenter``; ``generate`` also returns which masks are boxes and the reconstruction
    targets, which the weakly-supervised models need.

    Args:
        bank_dir: Anomaly bank made by ``anogen generate``.
        bank_probability: Share of samples drawn from the bank (paper: 0.5).
        clean_share: Share of bank draws that use the clean source image with an empty mask (paper: 0.5).
        exclude_defects: Defect types of the bank to leave out (the paper's code dropped capsule/poke and
            cable/cable_swap).
        dtd_dir: Texture folder for the Perlin fallback, or ``None`` for Perlin noise alone; never downloaded.
        probability: Share of Perlin-fallback samples that get an anomaly (DRAEM: 0.5).
        blend_factor: Perlin blend factor, a number or a ``(low, high)`` range.
        rotation_probability: Chance that a sample is rotated (paper's DRAEM: 0.3).
        rotation_degrees: Rotation angles are drawn from ``[-rotation_degrees, rotation_degrees]``.
        rotation_quarter_turns: Turn a rotated sample first by a random multiple of 90° (DeSTSeg's rule).
        rotation_fill: Grey of the corners a rotation uncovers, in [0, 1] (DeSTSeg: 114/255).
        num_workers: DataLoader worker processes that read the bank ahead of time (0: read in this process).
        prefetch: Bank samples each read-ahead batch holds.
        allow_incomplete_bank: Train on the finished records of a bank whose ``anogen generate`` run did not
            finish (``bank.json``: ``complete: false``), with a warning. Default: refuse such a bank.
    """

    def __init__(
        self,
        bank_dir: Path | str,
        bank_probability: float = 0.5,
        clean_share: float = 0.5,
        exclude_defects: list[str] | tuple[str, ...] = (),
        dtd_dir: Path | str | None = None,
        probability: float = 0.5,
        blend_factor: float | tuple[float, float] | list[float] = (0.2, 1.0),
        rotation_probability: float = 0.3,
        rotation_degrees: float = 90.0,
        rotation_quarter_turns: bool = False,
        rotation_fill: float = 0.0,
        num_workers: int = 2,
        prefetch: int = 8,
        allow_incomplete_bank: bool = False,
    ) -> None:
        super().__init__()
        self.check_arguments(bank_probability, clean_share, num_workers, prefetch)
        self.bank_probability, self.clean_share = float(bank_probability), float(clean_share)
        self.rotation = Rotation(rotation_probability, rotation_degrees, rotation_quarter_turns, rotation_fill)
        self.num_workers, self.prefetch = int(num_workers), int(prefetch)
        progress = unfinished_bank(bank_dir)
        if progress is not None and not allow_incomplete_bank:
            raise unfinished_bank_error(bank_dir, progress)
        self.records = self.accepted(load_bank(bank_dir, exclude_defects), bank_dir)
        if progress is not None:
            warnings.warn(
                f"bank_dir: anomaly bank '{bank_dir}' is unfinished ({progress.describe()} generated); training on "
                f"its {progress.done} finished records because allow_incomplete_bank is set. Finish it with "
                "`anogen generate ... --resume true`.",
                UserWarning,
                stacklevel=2,
            )
        self.bank_dir = Path(bank_dir)
        self.perlin = PerlinGenerator(dtd_dir=dtd_dir, probability=probability, blend_factor=blend_factor)
        self._stream: Iterator | None = None
        self._stream_size: tuple[int, int] | None = None
        self._pending: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque()

    @staticmethod
    def accepted(records: list[BankRecord], bank_dir: Path | str) -> list[BankRecord]:
        """The records the quality gate accepted; says how many it skips, and refuses a bank it rejected whole."""
        rejected = [r for r in records if r.rejected]
        if not rejected:
            return records
        reasons: dict[str, int] = {}
        for record in rejected:
            for reason in record.rejected_for:
                reasons[reason] = reasons.get(reason, 0) + 1
        detail = ", ".join(f"{name} {count}" for name, count in sorted(reasons.items()))
        if len(rejected) == len(records):
            msg = (
                f"bank_dir: the quality gate rejected all {len(records)} records of anomaly bank '{bank_dir}' "
                f"({detail}); see them with `anogen show {bank_dir} --worst 4 --output worst.png` and "
                f"docs/quality.md. To train on them anyway, judge them again without the gate: "
                f"`anogen check {bank_dir} --gate false --write true`."
            )
            raise BankError(msg)
        message = (
            f"bank_dir: anomaly bank '{bank_dir}': skipping {len(rejected)} of {len(records)} records that the "
            f"quality gate rejected ({detail}); training on the other {len(records) - len(rejected)} (docs/quality.md)"
        )
        logger.warning(message)
        return [r for r in records if not r.rejected]

    @staticmethod
    def check_arguments(
        bank_probability: float = 0.5,
        clean_share: float = 0.5,
        num_workers: int = 2,
        prefetch: int = 8,
        rotation_probability: float = 0.3,
        rotation_degrees: float = 90.0,
        rotation_quarter_turns: bool = False,
        rotation_fill: float = 0.0,
        probability: float = 0.5,
        blend_factor: float | tuple[float, float] | list[float] = (0.2, 1.0),
        **_: object,
    ) -> None:
        """Check the numbers without reading the bank (a model checks its generator choice this way when built)."""
        check_argument("bank_probability", bank_probability, UNIT_INTERVAL)
        check_argument("clean_share", clean_share, UNIT_INTERVAL)
        check_argument("num_workers", num_workers, NON_NEGATIVE_INT)
        check_argument("prefetch", prefetch, POSITIVE_INT)
        Rotation(rotation_probability, rotation_degrees, rotation_quarter_turns, rotation_fill)
        PerlinGenerator.check_arguments(probability, blend_factor)

    def __getstate__(self) -> dict[str, Any]:
        """Worker iterators cannot be pickled or deep-copied; a copy starts its own."""
        state = self.__dict__.copy()
        state["_stream"], state["_stream_size"], state["_pending"] = None, None, deque()
        return state

    def _open_stream(self, size: tuple[int, int]) -> None:
        seed = int(torch.randint(0, 2**62, (1,)).item())  # follows the global seed (seed_everything)
        sampler = RandomSampler(
            range(len(self.records)),
            replacement=True,
            num_samples=NEVER_ENDING,
            generator=torch.Generator().manual_seed(seed),
        )
        loader = DataLoader(
            BankDataset(self.records, size),
            batch_size=self.prefetch,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=2 if self.num_workers > 0 else None,
        )
        self._stream, self._stream_size, self._pending = iter(loader), size, deque()

    def close(self) -> None:
        """Stop the bank-reading worker processes now (the next ``draw`` starts new ones).

        Dropping the last reference to the DataLoader iterator shuts its persistent workers down and
        unregisters them from torch's SIGCHLD handler; left to the garbage collector, they linger until
        an arbitrary later moment.
        """
        self._stream, self._stream_size, self._pending = None, None, deque()

    def draw(self, count: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``count`` random bank samples at ``size``: anomalous images, box masks, source images."""
        if self._stream is None or self._stream_size != size:
            self._open_stream(size)
        while len(self._pending) < count:
            images, masks, sources = next(self._stream)  # type: ignore[arg-type]
            self._pending.extend(zip(images, masks, sources, strict=True))
        drawn = [self._pending.popleft() for _ in range(count)]
        return tuple(torch.stack(parts) for parts in zip(*drawn, strict=True))  # type: ignore[return-value]

    def generate(self, images: torch.Tensor) -> SyntheticBatch:
        """Synthetic anomalies for a batch ``(B, 3, H, W)`` of normal images in [0, 1]."""
        batch_size, size = images.shape[0], (int(images.shape[-2]), int(images.shape[-1]))
        from_bank = torch.rand(batch_size) < self.bank_probability
        augmented, target = images.clone(), images.clone()
        mask = images.new_zeros(batch_size, 1, *size)
        is_box = torch.zeros(batch_size, dtype=torch.bool, device=images.device)
        perlin_rows = (~from_bank).nonzero().squeeze(1).to(images.device)
        if len(perlin_rows):  # Perlin/DTD only where the bank is not used: it reads a texture per image
            synthetic = self.perlin.generate(images[perlin_rows])
            augmented[perlin_rows], mask[perlin_rows] = synthetic.image, synthetic.mask
        count = int(from_bank.sum())
        if count:
            anomalous, box, source = (part.to(images.device, images.dtype) for part in self.draw(count, size))
            clean = (torch.rand(count) < self.clean_share).to(images.device)
            keep = clean.view(-1, 1, 1, 1)
            rows = from_bank.nonzero().squeeze(1).to(images.device)
            augmented[rows] = torch.where(keep, source, anomalous)
            mask[rows] = torch.where(keep, torch.zeros_like(box), box)
            target[rows] = source
            is_box[rows] = ~clean
        augmented, target, mask = self.rotation(augmented, target, mask)
        return SyntheticBatch(image=augmented, mask=mask, is_box=is_box, target=target)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``PerlinAnomalyGenerator``'s contract: ``(augmented_image, anomaly_mask)`` for an image or batch."""
        if image.dim() == 3:
            synthetic = self.generate(image.unsqueeze(0))
            return synthetic.image[0], synthetic.mask[0]
        synthetic = self.generate(image)
        return synthetic.image, synthetic.mask
