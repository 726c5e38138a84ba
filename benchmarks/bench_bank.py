"""Anomaly-bank loading speed and what the ``anogen`` generator adds to a DraemWeak training step.

Prints, measured side by side in one run:
1. bank samples/s read and resized to ``--image_size`` by DataLoader workers (``--workers``) and in-process;
2. the time of ``generate`` for one batch: ``anogen`` vs ``perlin``;
3. the time of one DraemWeak training step (synthesis + forward + backward + Adam) with each generator,
   same batch, same size, interleaved, and their ratio.

    python benchmarks/bench_bank.py --bank runs/bottle/bank [--image_size 256 --batch_size 8]
    python benchmarks/bench_bank.py --smoke        # seconds; makes a small paste bank first

Without ``--bank`` it makes one with ``anogen generate --backend paste`` from ../shared/data (40 normal
images x 3 defect types).
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import make_paste_bank, parser, report


def samples_per_second(bank: Path, size: int, workers: int, count: int) -> float:
    """Read ``count`` bank samples through the generator's own read-ahead loader."""
    from anomalib_anogen.data.generators import AnoGenAnomalyGenerator

    generator = AnoGenAnomalyGenerator(bank, num_workers=workers)
    generator.draw(8, (size, size))  # start the workers
    started = time.perf_counter()
    generator.draw(count, (size, size))
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the table."""
    parser_ = parser(__doc__)
    parser_.add_argument("--bank", type=Path, help="an anomaly bank (default: make a paste bank)")
    parser_.add_argument("--image_size", type=int, default=256)
    parser_.add_argument("--batch_size", type=int, default=8)
    parser_.add_argument("--workers", type=int, default=2)
    parser_.add_argument("--samples", type=int, default=256, help="bank samples to read per loader measurement")
    parser_.add_argument("--steps", type=int, default=3, help="timed training steps per generator")
    parser_.add_argument("--reconstructive_width", type=int, default=128, help="DRAEM: 128")
    parser_.add_argument("--discriminative_width", type=int, default=64, help="DRAEM: 64")
    args = parser_.parse_args(argv)
    if args.smoke:
        args.image_size, args.batch_size, args.samples, args.steps = 64, 2, 16, 1
        args.reconstructive_width, args.discriminative_width = 8, 4

    import torch

    from anomalib_anogen.models import DraemWeak

    with tempfile.TemporaryDirectory() as scratch:
        bank = args.bank or make_paste_bank(Path(scratch) / "bank", limit=8 if args.smoke else 40)
        size = args.image_size
        results: dict[str, float | int | str] = {
            "bank": str(bank),
            "image_size": size,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
        }
        results[f"bank_samples_per_s_{args.workers}_workers"] = samples_per_second(
            bank, size, args.workers, args.samples
        )
        results["bank_samples_per_s_in_process"] = samples_per_second(bank, size, 0, args.samples)

        widths = {
            "reconstructive_width": args.reconstructive_width,
            "discriminative_width": args.discriminative_width,
        }
        models = {
            "perlin": DraemWeak(generator="perlin", **widths),
            "anogen": DraemWeak(generator="anogen", bank_dir=bank, **widths),
        }
        models["anogen"].augmenter.num_workers = args.workers
        models["anogen"].model.load_state_dict(models["perlin"].model.state_dict())
        images = torch.rand(args.batch_size, 3, size, size)
        generate_times: dict[str, list[float]] = {name: [] for name in models}
        step_times: dict[str, list[float]] = {name: [] for name in models}
        optimizers = {name: torch.optim.Adam(model.model.parameters(), lr=1e-4) for name, model in models.items()}
        for model in models.values():  # warm-up: workers started, kernels chosen
            model.synthesize(images)
        for _ in range(args.steps):
            for name, model in models.items():
                started = time.perf_counter()
                synthetic = model.synthesize(images)
                generated = time.perf_counter()
                reconstruction, prediction = model.model(synthetic.image)
                loss = model.loss(synthetic.target, reconstruction, synthetic.mask, prediction, synthetic.is_box)
                optimizers[name].zero_grad()
                loss.backward()
                optimizers[name].step()
                finished = time.perf_counter()
                generate_times[name].append(generated - started)
                step_times[name].append(finished - started)
        for name in models:
            results[f"generate_s_{name}"] = statistics.median(generate_times[name])
            results[f"step_s_{name}"] = statistics.median(step_times[name])
        results["step_ratio_anogen_over_perlin"] = results["step_s_anogen"] / results["step_s_perlin"]

    report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
