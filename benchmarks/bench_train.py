"""Training-step time and peak memory of DraemWeak and DestsegWeak against anomalib's own Draem.

A training step is what Lightning runs for each batch: the model's own ``training_step(batch, 0)`` (synthetic
anomalies from its augmenter/generator, forward, loss), then backward and the optimiser step of its
``configure_optimizers()`` (automatic optimisation: Draem, DraemWeak). DestsegWeak optimises by hand, two phases
with one SGD optimiser each; its ``training_step`` does backward and step itself, so the script only hands it its
optimisers (no Trainer is attached: ``optimizers()`` returns them, ``manual_backward`` is ``loss.backward``) and
picks the phase through ``de_st_steps``. Both phases are timed; the published schedule (DeSTSeg: 1000 student
steps of 5000) spends 80% of its steps in the segmentation phase, so the schedule-weighted mean (0.2 x student +
0.8 x segmentation) is printed too, as ``destseg_weak_schedule``.

Models, all given the same anomalib ``ImageBatch`` (the first ``--batch_size`` real bottle training images,
resized to ``--image_size``) and the local DTD subset ../shared/data/dtd/images as Perlin texture source (nothing
is downloaded):
  draem                      anomalib's ``Draem`` (the reference; widths 128/64)
  draem_weak_perlin          ``DraemWeak(generator="perlin")``, widths 128/64
  draem_weak_anogen          ``DraemWeak(generator="anogen")``, widths 128/64, bank below
  destseg_weak_student       ``DestsegWeak(generator="anogen")``, student phase
  destseg_weak_segmentation  the same model, segmentation phase
The bank is made with ``anogen generate --backend paste`` from the bottle 3-shot support set (40 normal images,
or ``--bank``). DestsegWeak's frozen teacher is random (``pretrained_weights="random"``): there are no ImageNet
weights on this machine, and weights do not change the time of a step.

Time: after ``--warmup`` rounds, ``--steps`` rounds in which the models take turns (A B C D E A B C D E ...),
median seconds per step and its ratio to ``draem``. On CUDA each step is bracketed by ``synchronize``. On CPU
also the median CPU time of the step (``process_time``: this process, all its threads; the bank workers are not
included), which other load on a shared machine disturbs far less than wall-clock time.

Peak memory: each model runs ``--memory_steps`` steps in its own fresh process, one after the other, after the
timing. That process first makes every import and the batch and notes its peak so far (the baseline), then builds
the model and its optimisers and runs the steps; printed: the baseline and each model's peak minus its process's
baseline. On CPU the peak is the resident set size (``VmHWM`` of /proc/self/status) of the main process only:
the anogen generator's bank-reading DataLoader workers are separate processes and not counted. On CUDA it is
``torch.cuda.max_memory_allocated`` (the baseline is then the batch). Either way the number is the model:
weights, gradients, optimiser state, activations and allocator slack. The segmentation-phase process runs no
student step first, so it holds no student momentum (a real run would: 94 MiB).

Defaults: on CUDA 256 px, batch 8 (DRAEM's); on CPU 128 px, batch 4, so that the run finishes in ~10 minutes on
a quiet 2-core machine (a full-width DRAEM step at 256 px batch 8 takes ~2 minutes there); other load stretches
that (~23 minutes with two other benchmarks running).

    python benchmarks/bench_train.py                       # CPU: 128 px, batch 4; CUDA: 256 px, batch 8
    python benchmarks/bench_train.py --image_size 256 --batch_size 8 --steps 3
    python benchmarks/bench_train.py --smoke               # seconds: 64 px, DRAEM widths 8/4, one step, no warm-up

``--smoke`` gives every DRAEM (anomalib's too, as ``AnomalibDraem`` of _training.py) widths 8/4, runs
one torch thread and measures memory for ``draem_weak_anogen`` only, alongside the timing; its numbers only show
that the script works.

Target printed next to the result: ``draem_weak_anogen`` at most 1.05x the step time of ``draem``.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import (
    DTD,
    SMOKE_WIDTHS,
    add_device,
    add_widths,
    make_paste_bank,
    parse,
    parser,
    pick_device,
    quiet,
    report,
    take_turns,
    widths,
)
from _training import AnomalibDraem, Trainee, load_batch

MODELS = ("draem", "draem_weak_perlin", "draem_weak_anogen", "destseg_weak_student", "destseg_weak_segmentation")
REFERENCE = "draem"
TARGET_MODEL, TARGET_RATIO = "draem_weak_anogen", 1.05
MIB = 2**20
SMOKE = {"image_size": 64, "batch_size": 2, "steps": 1, "warmup": 0, "memory_steps": 1, **SMOKE_WIDTHS}


def build(name: str, args, bank: Path, cache: dict) -> Trainee:
    """The ``Trainee`` for ``name``; both DestsegWeak phases share one model (``cache``), as in a real run."""
    from anomalib_anogen.models import DestsegWeak, DraemWeak

    common = {"dtd_dir": DTD, "visualizer": False}  # dtd_dir given: anomalib's download is never reached
    if name == "draem":
        module = AnomalibDraem(**widths(args), **common)  # smoke: anomalib's network at the smaller widths
    elif name == "draem_weak_perlin":
        module = DraemWeak(generator="perlin", **widths(args), **common)
    elif name == "draem_weak_anogen":
        module = DraemWeak(generator="anogen", bank_dir=bank, **widths(args), **common)
    elif name.startswith("destseg_weak_"):
        if "destseg_weak" not in cache:
            cache["destseg_weak"] = DestsegWeak(
                pretrained_weights="random", generator="anogen", bank_dir=bank, **common
            )
        return Trainee(cache["destseg_weak"].to(args.device), phase=name.removeprefix("destseg_weak_"))
    else:
        msg = f"unknown model {name!r}; one of {', '.join(MODELS)}."
        raise ValueError(msg)
    return Trainee(module.to(args.device))


def peak_bytes(device: str) -> int:
    """The peak so far of this process: CUDA memory allocated on CUDA, resident set size on CPU."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    # VmHWM: the peak RSS of this process image. ru_maxrss is not used: after fork + exec it starts at the
    # parent's peak (here, a parent that holds every model), so a child could never report less.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def memory_child(args) -> int:
    """Hidden ``--_memory NAME``: imports and batch (baseline peak), then the model's steps (peak); prints JSON."""
    import torch

    quiet()
    if args.smoke:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    import anomalib_anogen.models  # noqa: F401 - every import that building a model makes, before the baseline

    batch = load_batch(args.image_size, args.batch_size, args.device)
    baseline = peak_bytes(args.device)
    trainee = build(args._memory, args, args.bank, {})
    for _ in range(args.memory_steps):
        trainee.step(batch)
    print(json.dumps({"baseline": baseline, "peak": peak_bytes(args.device)}))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (bank workers, allocator): the numbers are out


def start_memory(name: str, args, bank: Path) -> subprocess.Popen:
    """Start the memory process for ``name``."""
    command = [sys.executable, __file__, "--_memory", name, "--bank", str(bank), "--device", args.device]
    for option in ("image_size", "batch_size", "memory_steps", "reconstructive_width", "discriminative_width"):
        command += [f"--{option}", str(getattr(args, option))]
    if args.smoke:
        command.append("--smoke")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_memory(name: str, process: subprocess.Popen) -> tuple[int, int]:
    """The baseline and peak bytes that the memory process printed."""
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith('{"baseline"')]
    if process.returncode or not lines:
        msg = f"memory run for {name} failed (exit {process.returncode}):\n{stderr[-3000:]}"
        raise RuntimeError(msg)
    numbers = json.loads(lines[-1])
    return int(numbers["baseline"]), int(numbers["peak"])


def add_times(results: dict, kind: str, samples: dict[str, list[float]]) -> float:
    """Median step seconds and ratios to ``draem`` into ``results``; returns the target model's ratio."""
    median = {name: statistics.median(values) for name, values in samples.items()}
    # DeSTSeg's schedule: 1000 student steps, then 4000 segmentation steps.
    median["destseg_weak_schedule"] = 0.2 * median["destseg_weak_student"] + 0.8 * median["destseg_weak_segmentation"]
    for name, value in median.items():
        results[f"step_{kind}s_{name}"] = value
    for name, value in median.items():
        if name != REFERENCE:
            results[f"{kind}ratio_{name}_over_draem"] = value / median[REFERENCE]
    return median[TARGET_MODEL] / median[REFERENCE]


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the table."""
    parser_ = parser(__doc__)
    parser_.add_argument("--bank", type=Path, help="an anomaly bank (default: make a paste bank)")
    add_device(parser_)
    parser_.add_argument("--image_size", type=int, help="default: 256 on CUDA, 128 on CPU (a multiple of 32)")
    parser_.add_argument("--batch_size", type=int, help="default: 8 on CUDA, 4 on CPU")
    parser_.add_argument("--steps", type=int, help="timed steps per model (default: 20 on CUDA, 5 on CPU)")
    parser_.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser_.add_argument("--memory_steps", type=int, default=2, help="steps per memory process")
    parser_.add_argument("--no_memory", action="store_true", help="skip the peak-memory processes")
    add_widths(parser_)
    parser_.add_argument("--_memory", help=__import__("argparse").SUPPRESS)
    args = parse(parser_, argv, SMOKE)
    if args._memory:
        return memory_child(args)

    import torch

    quiet()
    torch.manual_seed(0)
    args.device = pick_device(args.device)
    cuda = args.device.startswith("cuda")
    if args.smoke:  # one thread: numbers do not matter here, and a busy CI machine makes OpenMP threads wait
        torch.set_num_threads(1)
    args.image_size = args.image_size or (256 if cuda else 128)
    args.batch_size = args.batch_size or (8 if cuda else 4)
    args.steps = args.steps or (20 if cuda else 5)
    memory_names = [] if args.no_memory else (["draem_weak_anogen"] if args.smoke else list(MODELS))

    with tempfile.TemporaryDirectory() as scratch:
        bank = args.bank or make_paste_bank(Path(scratch) / "bank", limit=8 if args.smoke else 40)
        # Smoke: memory processes run alongside the timing (their numbers are not the point there).
        early = {name: start_memory(name, args, bank) for name in memory_names} if args.smoke else {}

        batch = load_batch(args.image_size, args.batch_size, args.device)
        cache: dict = {}
        trainees = {name: build(name, args, bank, cache) for name in MODELS}
        steps = {name: (lambda trainee=trainee: trainee.step(batch)) for name, trainee in trainees.items()}
        watches = take_turns(steps, args.steps, args.warmup, args.device)
        times = {name: [watch.wall for watch in values] for name, values in watches.items()}
        cpu_times = {name: [watch.cpu for watch in values] for name, values in watches.items()}
        for trainee in trainees.values():  # stop the bank workers before the memory processes start
            close = getattr(trainee.module.augmenter, "close", None)
            if callable(close):
                close()
        del trainees, steps, cache

        results: dict[str, float | int | str] = {
            "device": torch.cuda.get_device_name(args.device) if cuda else f"cpu, {torch.get_num_threads()} threads",
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "timed_steps_per_model": args.steps,
        }
        ratio = {}
        for kind, samples in [("", times)] if cuda else [("", times), ("cpu_", cpu_times)]:
            ratio[kind] = add_times(results, kind, samples)
        verdict = "met" if ratio[""] <= TARGET_RATIO else "MISSED"
        verdict = "not judged in --smoke" if args.smoke else verdict
        cpu_note = "" if cuda else f"; CPU time {ratio['cpu_']:.3f}x"
        results[f"target_{TARGET_MODEL}_<={TARGET_RATIO}x_draem"] = f"{verdict} ({ratio['']:.3f}x{cpu_note})"

        if memory_names:
            peaks = {name: finish_memory(name, process) for name, process in early.items()}
            for name in [] if args.smoke else memory_names:  # one at a time, nothing else running
                peaks[name] = finish_memory(name, start_memory(name, args, bank))
            what = "cuda_max_allocated" if cuda else "peak_rss"
            results[f"{what}_MiB_baseline (imports + batch)"] = statistics.median([b for b, _ in peaks.values()]) / MIB
            for name in memory_names:
                baseline, peak = peaks[name]
                results[f"{what}_MiB_{name} (minus baseline)"] = (peak - baseline) / MIB

    report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
