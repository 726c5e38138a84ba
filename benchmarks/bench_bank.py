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
from pathlib import Path

from _common import SMOKE_WIDTHS, Stopwatch, add_widths, make_paste_bank, parse, parser, report, take_turns, widths

SMOKE = {"image_size": 64, "batch_size": 2, "samples": 16, "steps": 1, **SMOKE_WIDTHS}


def samples_per_second(bank: Path, size: int, workers: int, count: int) -> float:
    """Read ``count`` bank samples through the generator's own read-ahead loader."""
    from anomalib_anogen.data.generators import AnoGenAnomalyGenerator

    generator = AnoGenAnomalyGenerator(bank, num_workers=workers)
    generator.draw(8, (size, size))  # start the workers
    with Stopwatch() as watch:
        generator.draw(count, (size, size))
    return count / watch.wall


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the table."""
    parser_ = parser(__doc__)
    parser_.add_argument("--bank", type=Path, help="an anomaly bank (default: make a paste bank)")
    parser_.add_argument("--image_size", type=int, default=256)
    parser_.add_argument("--batch_size", type=int, default=8)
    parser_.add_argument("--workers", type=int, default=2)
    parser_.add_argument("--samples", type=int, default=256, help="bank samples to read per loader measurement")
    parser_.add_argument("--steps", type=int, default=3, help="timed training steps per generator")
    add_widths(parser_)
    args = parse(parser_, argv, SMOKE)

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

        models = {
            "perlin": DraemWeak(generator="perlin", **widths(args)),
            "anogen": DraemWeak(generator="anogen", bank_dir=bank, **widths(args)),
        }
        models["anogen"].augmenter.num_workers = args.workers
        models["anogen"].model.load_state_dict(models["perlin"].model.state_dict())
        images = torch.rand(args.batch_size, 3, size, size)
        generate_times: dict[str, list[float]] = {name: [] for name in models}
        optimizers = {name: torch.optim.Adam(model.model.parameters(), lr=1e-4) for name, model in models.items()}

        def step(name: str) -> None:
            """Synthesis (timed on its own too), forward, loss, backward and Adam."""
            model = models[name]
            with Stopwatch() as synthesis:
                synthetic = model.synthesize(images)
            generate_times[name].append(synthesis.wall)
            reconstruction, prediction = model.model(synthetic.image)
            loss = model.loss(synthetic.target, reconstruction, synthetic.mask, prediction, synthetic.is_box)
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()

        for model in models.values():  # warm-up: workers started, kernels chosen
            model.synthesize(images)
        step_times = take_turns({name: (lambda name=name: step(name)) for name in models}, args.steps)
        for name in models:
            results[f"generate_s_{name}"] = statistics.median(generate_times[name])
            results[f"step_s_{name}"] = statistics.median(watch.wall for watch in step_times[name])
        results["step_ratio_anogen_over_perlin"] = results["step_s_anogen"] / results["step_s_perlin"]

    report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
