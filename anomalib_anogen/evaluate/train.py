"""One seed of ``anogen evaluate``: a U-Net trained on the bank's pairs, tested on the real test set.

The network is anomalib's ``DiscriminativeSubNetwork`` (DRAEM's segmentation U-Net) on the image alone (3 channels
in, 2 classes out). Each step takes a fixed number of bank records (their box masks, under the weak rule of
``DraemWeakLoss``: in-box pixels that the network already scores below ``p_cutoff`` get no loss) and of normal
source images (empty masks), each drawn from its own reshuffled order, so every record is seen once per pass.
Adam, a linear warm-up over the first 5% of the steps, then a cosine decay to zero: the end of the schedule
moves the network little, so the final evaluations do not swing. The metrics are anomalib's ``AUPR``, ``AUROC``
and ``AUPRO`` on every test image at the training side; the image score is the maximum of the anomaly map.

Deterministic for a seed on a given machine and thread count: the weights are initialised from the seed, the
order of the images comes from a generator of the seed, and nothing else is random.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from anomalib.metrics import AUPR, AUPRO, AUROC
from anomalib.models.image.draem.torch_model import DiscriminativeSubNetwork

from anomalib_anogen.models.image.draem_weak.loss import DraemWeakLoss

WARMUP_SHARE = 0.05  # of the steps: linear warm-up of the learning rate
AVERAGE_SPAN = 0.1  # the averaged evaluations spread over this last share of the steps
PREDICT_BATCH = 16
METRICS = ("pixel_AP", "pixel_AUROC", "pixel_PRO", "image_AUROC")

# nn.Module initialisation draws from torch's global generator: one seed's network at a time
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Arrays:
    """Everything a run needs, in memory at the evaluation side (uint8; masks 0/1)."""

    bank_images: torch.Tensor  # (N, 3, S, S)
    bank_masks: torch.Tensor  # (N, 1, S, S)
    normals: torch.Tensor  # (M, 3, S, S)
    test_images: torch.Tensor  # (T, 3, S, S)
    test_masks: torch.Tensor  # (T, S, S)
    test_labels: torch.Tensor  # (T,)


@dataclass(frozen=True)
class Schedule:
    """What one seed's training does."""

    steps: int
    bank_per_batch: int
    normal_per_batch: int
    width: int
    lr: float
    p_cutoff: float
    average_last: int

    def evaluation_steps(self) -> list[int]:
        """The steps after which the test set is evaluated (their metrics are averaged), last one ``steps``."""
        if self.average_last == 1:
            return [self.steps]
        gap = max(1, round(self.steps * AVERAGE_SPAN / (self.average_last - 1)))
        return sorted({max(1, self.steps - i * gap) for i in range(self.average_last)})

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then cosine decay to zero (``step`` counts from 0)."""
        warmup = max(1, round(self.steps * WARMUP_SHARE))
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class SeedResult:
    """One seed's metrics (the mean of its evaluations), each evaluation, and its wall time."""

    seed: int
    metrics: dict[str, float | None]
    evaluations: list[dict[str, float | int | None]] = field(default_factory=list)
    wall_s: float = 0.0
    final_loss: float = 0.0


class _Order:
    """Indices ``0..n-1`` in a fresh random order per pass, drawn from one generator."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator, self.queue = n, generator, torch.empty(0, dtype=torch.long)

    def take(self, count: int) -> torch.Tensor:
        while self.queue.numel() < count:
            self.queue = torch.cat([self.queue, torch.randperm(self.n, generator=self.generator)])
        taken, self.queue = self.queue[:count], self.queue[count:]
        return taken


def build_network(width: int, seed: int) -> DiscriminativeSubNetwork:
    """The U-Net of anomalib's DRAEM: RGB in, (normal, anomalous) logits out, initialised from ``seed``."""
    with _INIT_LOCK:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return DiscriminativeSubNetwork(in_channels=3, out_channels=2, base_width=width)
        finally:
            torch.random.set_rng_state(state)


def train_seed(
    arrays: Arrays,
    schedule: Schedule,
    seed: int,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
) -> SeedResult:
    """Train one network from ``seed`` and return its test metrics (``on_step(step, loss)`` after each step)."""
    start = time.perf_counter()
    network = build_network(schedule.width, seed).to(device)
    network.train()
    loss_function = DraemWeakLoss(p_cutoff=schedule.p_cutoff, weak_scope="box")
    optimizer = torch.optim.Adam(network.parameters(), lr=schedule.lr)
    generator = torch.Generator().manual_seed(seed)
    bank_order = _Order(arrays.bank_images.shape[0], generator)
    normal_order = _Order(max(1, arrays.normals.shape[0]), generator)
    nb, nn_ = schedule.bank_per_batch, schedule.normal_per_batch
    size = arrays.bank_images.shape[-1]
    # on a GPU the whole training set moves there once (uint8: a 480-record bank at 128 px is 24 MiB)
    bank_images, bank_masks = arrays.bank_images.to(device), arrays.bank_masks.to(device)
    normals = arrays.normals.to(device)
    is_box = torch.cat([torch.ones(nb, dtype=torch.bool), torch.zeros(nn_, dtype=torch.bool)]).to(device)
    empty = torch.zeros((nn_, 1, size, size), dtype=torch.uint8, device=device)
    evaluation_steps = set(schedule.evaluation_steps())
    evaluations: list[dict[str, float | int | None]] = []
    loss_value = float("nan")
    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.learning_rate(step)
        records = bank_order.take(nb).to(device)
        parts, masks = [bank_images[records]], [bank_masks[records]]
        if nn_:
            parts.append(normals[normal_order.take(nn_).to(device)])
            masks.append(empty)
        images = torch.cat(parts).float().div_(255)
        targets = torch.cat(masks).float()
        logits = network(images)
        loss = loss_function.segmentation_loss(logits, targets, is_box)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step + 1, loss_value)
        if step + 1 in evaluation_steps:
            evaluations.append({"step": step + 1, **test_metrics(network, arrays, device)})
            network.train()
    averaged = {name: _mean([e[name] for e in evaluations]) for name in METRICS}
    return SeedResult(
        seed=seed,
        metrics=averaged,
        evaluations=evaluations,
        wall_s=time.perf_counter() - start,
        final_loss=loss_value,
    )


def _mean(values: list) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


@torch.no_grad()
def anomaly_maps(network: torch.nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Anomaly probability maps ``(N, S, S)`` (float32, on the CPU) of uint8 images ``(N, 3, S, S)``."""
    network.eval()
    maps = []
    for chunk in images.split(PREDICT_BATCH):
        logits = network(chunk.to(device).float().div_(255))
        maps.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    return torch.cat(maps)


def test_metrics(network: torch.nn.Module, arrays: Arrays, device: torch.device) -> dict[str, float | None]:
    """Pixel AP, pixel AUROC, PRO (anomalib's AUPRO, FPR up to 0.3) and image AUROC (map maximum) on the test set."""
    maps = anomaly_maps(network, arrays.test_images, device)
    return metrics_of(maps, arrays.test_masks, arrays.test_labels)


def metrics_of(maps: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    """Anomalib's metrics of anomaly maps ``(N, S, S)`` against masks ``(N, S, S)`` and image labels ``(N,)``.

    Image AUROC is ``None`` when the test set has only anomalous (or only normal) images.
    """
    batch = SimpleNamespace(
        anomaly_map=maps,
        gt_mask=masks.bool(),
        pred_score=maps.flatten(1).amax(dim=1),
        gt_label=labels.bool(),
    )
    results: dict[str, float | None] = {}
    for name, metric in (
        ("pixel_AP", AUPR(fields=["anomaly_map", "gt_mask"])),
        ("pixel_AUROC", AUROC(fields=["anomaly_map", "gt_mask"])),
        ("pixel_PRO", AUPRO(fields=["anomaly_map", "gt_mask"])),
    ):
        metric.update(batch)
        results[name] = float(metric.compute())
    if 0 < int(labels.sum()) < labels.numel():
        metric = AUROC(fields=["pred_score", "gt_label"])
        metric.update(batch)
        results["image_AUROC"] = float(metric.compute())
    else:
        results["image_AUROC"] = None
    return results
