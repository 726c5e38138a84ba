"""``anogen evaluate``: a bank judged by a U-Net trained on it alone and tested on real anomalies.

options -> the bank and the test set read and checked (nothing trained yet) -> the pixels in memory at
``--image_size`` -> one network per seed (:mod:`~anomalib_anogen.evaluate.train`), seeds spread over the GPUs
when there are several -> a table per seed with the mean and spread (max - min) -> JSON, written atomically.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import check_writable_folder, write_atomic
from anomalib_anogen.core.threads import torch_threads
from anomalib_anogen.evaluate.inputs import BankPairs, TestSet, find_test_set, image_array, mask_array, read_bank
from anomalib_anogen.evaluate.options import EvaluateOptions
from anomalib_anogen.evaluate.train import METRICS, Arrays, Schedule, SeedResult, train_seed

logger = logging.getLogger(__name__)

# torch's CPU threads when --threads is not given. One: the U-Net's ops are small, and on a shared 2-core machine
# (load average 9) a step of batch 16 at 128 px took 1.6 s on one thread and 5.3 s on two (OpenMP threads wait
# for each other whenever one of them is descheduled); see docs/evaluate.md.
CPU_THREADS = 1


@dataclass
class Evaluation:
    """What ``anogen evaluate`` measured: per seed, the mean and spread over seeds, and what it ran on."""

    seeds: list[SeedResult]
    mean: dict[str, float | None]
    spread: dict[str, float | None]
    report: dict[str, Any]  # everything that goes into the JSON

    def to_json(self) -> str:
        """The JSON that ``--output`` gets."""
        return json.dumps(self.report, indent=2) + "\n"


def evaluate(options: EvaluateOptions) -> Evaluation:
    """Train a U-Net per seed on ``options.bank`` and test it on ``options.test``; print and write the metrics.

    Every input is read and checked before the first step; see
    :class:`~anomalib_anogen.evaluate.options.EvaluateOptions`.
    """
    import torch

    start = time.perf_counter()
    bank = read_bank(options.bank)
    test = find_test_set(
        options.test, options.category, options.abnormal_dir, options.mask_dir, options.normal_test_dir
    )
    output = Path(options.output).expanduser()
    check_writable_folder(output.parent, "--output")
    devices = _devices(options)
    logger.info(
        "bank %s: %d records (%d rejected, left out), %d defect types, %d normal source images",
        bank.folder,
        len(bank.records),
        bank.rejected,
        len(bank.defects),
        len(bank.sources),
    )
    logger.info(
        "test %s (%s layout): %d anomalous, %d normal images", test.folder, test.layout, test.anomalous, test.normal
    )
    if not test.normal:
        logger.warning("no normal test images: image AUROC is not computed")
    arrays = load_arrays(bank, test, options.image_size)
    if not bool(arrays.test_masks.any()):
        msg = f"{test.folder}: every test mask is empty; pixel metrics need anomalous pixels"
        raise AnogenInputError(msg)
    schedule = Schedule(
        steps=options.total_steps(len(bank.records)),
        bank_per_batch=options.bank_images_per_batch,
        normal_per_batch=options.normal_per_batch,
        width=options.width,
        lr=options.lr,
        p_cutoff=options.p_cutoff,
        average_last=options.average_last,
    )
    logger.info(
        "%d seed(s) on %s: %d steps of %d bank + %d normal images at %d px, U-Net width %d, lr %g",
        len(options.seeds),
        ", ".join(str(d) for d in devices),
        schedule.steps,
        schedule.bank_per_batch,
        schedule.normal_per_batch,
        options.image_size,
        options.width,
        options.lr,
    )
    threads = options.threads if options.threads is not None or devices[0].type == "cuda" else CPU_THREADS
    with torch_threads(threads), _deterministic(devices):
        results = _run_seeds(arrays, schedule, options, devices)
    mean, spread = summarise(results)
    report = {
        "bank": str(bank.folder),
        "records": len(bank.records),
        "rejected": bank.rejected,
        "defects": bank.defects,
        "normal_images": len(bank.sources),
        "test": str(test.folder),
        "test_layout": test.layout,
        "test_images": {"anomalous": test.anomalous, "normal": test.normal},
        "settings": {
            "image_size": options.image_size,
            "steps": schedule.steps,
            "batch_size": options.batch_size,
            "bank_per_batch": schedule.bank_per_batch,
            "normal_per_batch": schedule.normal_per_batch,
            "width": options.width,
            "lr": options.lr,
            "normal_share": options.normal_share,
            "p_cutoff": options.p_cutoff,
            "average_last": options.average_last,
            "evaluated_after_steps": schedule.evaluation_steps(),
        },
        "device": ", ".join(_describe(d) for d in devices),
        "threads": torch.get_num_threads() if threads is None else threads,
        "seeds": [
            {"seed": r.seed, **r.metrics, "wall_s": round(r.wall_s, 2), "evaluations": r.evaluations} for r in results
        ],
        "mean": mean,
        "spread": spread,
        "wall_s": round(time.perf_counter() - start, 2),
    }
    evaluation = Evaluation(seeds=results, mean=mean, spread=spread, report=report)
    print(format_table(evaluation))
    try:
        write_atomic(output, evaluation.to_json().encode())
    except OSError as error:
        msg = f"{output}: cannot write the results ({error.strerror or error})"
        raise AnogenInputError(msg) from error
    logger.info("%s written (%.0f s)", output, report["wall_s"])
    return evaluation


def load_arrays(bank: BankPairs, test: TestSet, size: int) -> Arrays:
    """The bank's images and masks, its normal sources and the test set, as uint8 tensors at ``size``."""
    import torch

    def stack(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays))

    return Arrays(
        bank_images=stack([image_array(r.image, size) for r in bank.records]),
        bank_masks=stack([mask_array(r.mask, size)[None] for r in bank.records]).to(torch.uint8),
        normals=stack([image_array(path, size) for path in bank.sources]),
        test_images=stack([image_array(item.image, size) for item in test.images]),
        test_masks=stack([mask_array(item.mask, size) for item in test.images]).to(torch.uint8),
        test_labels=torch.tensor([item.anomalous for item in test.images], dtype=torch.uint8),
    )


def summarise(results: list[SeedResult]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Mean and spread (max - min) over the seeds of every metric (``None`` where a metric was not computed)."""
    mean, spread = {}, {}
    for name in METRICS:
        values = [r.metrics[name] for r in results if r.metrics[name] is not None]
        mean[name] = sum(values) / len(values) if values else None
        spread[name] = max(values) - min(values) if values else None
    return mean, spread


def format_table(evaluation: Evaluation) -> str:
    """Per seed one line of the four metrics and the wall time, then the mean and the spread over the seeds."""
    header = f"{'seed':>10}" + "".join(f"{name:>13}" for name in METRICS) + f"{'wall s':>9}"

    def cells(values: dict[str, float | None]) -> str:
        return "".join(f"{'n/a' if values[n] is None else f'{values[n]:.4f}':>13}" for n in METRICS)

    lines = [header]
    lines += [f"{r.seed:>10}{cells(r.metrics)}{r.wall_s:>9.0f}" for r in evaluation.seeds]
    lines.append(f"{'mean':>10}{cells(evaluation.mean)}")
    if len(evaluation.seeds) > 1:
        lines.append(f"{'spread':>10}{cells(evaluation.spread)}")
    return "\n".join(lines)


def _devices(options: EvaluateOptions) -> list[Any]:
    """The torch devices the seeds run on: GPUs (at most one per seed), else the CPU."""
    import torch

    from anomalib_anogen.core.devices import plan_devices

    kind, count = plan_devices(options.accelerator, options.devices, len(options.seeds))
    if kind == "cuda":
        return [torch.device("cuda", index) for index in range(count)]
    return [torch.device("cpu")]


def _describe(device: Any) -> str:
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


class _deterministic:  # noqa: N801 (a context manager used like a function)
    """cuDNN's deterministic kernels on a GPU, restored afterwards (a CPU run is deterministic already)."""

    def __init__(self, devices: list[Any]) -> None:
        self.gpu = any(d.type == "cuda" for d in devices)

    def __enter__(self) -> None:
        import torch

        if self.gpu:
            self.before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.gpu:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.before


def _run_seeds(arrays: Arrays, schedule: Schedule, options: EvaluateOptions, devices: list[Any]) -> list[SeedResult]:
    """Every seed, one after another on each device (several GPUs: one thread per GPU)."""
    from tqdm.auto import tqdm

    def run(position: int, seed: int, device: Any) -> SeedResult:
        bar = tqdm(
            total=schedule.steps, desc=f"seed {seed}", unit="step", position=position, disable=not options.progress
        )

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            if step % 10 == 0 or step == schedule.steps:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        try:
            result = train_seed(arrays, schedule, seed, device, on_step)
        finally:
            bar.close()
        logger.info(
            "seed %d: %s (%.0f s)",
            seed,
            ", ".join(f"{n} {'n/a' if result.metrics[n] is None else f'{result.metrics[n]:.4f}'}" for n in METRICS),
            result.wall_s,
        )
        return result

    if len(devices) == 1:
        return [run(0, seed, devices[0]) for seed in options.seeds]
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        futures = [
            pool.submit(run, index, seed, devices[index % len(devices)]) for index, seed in enumerate(options.seeds)
        ]
        return [future.result() for future in futures]
