"""Images/s of ``anogen generate`` against the paper's per-image flow, and the UNet's share of the GPU's peak.

The same work is done two ways, side by side in one run, on the real bottle normal images
(../shared/data/MVTecAD/bottle/train/good, the first ``--images``), every defect type of the bottle
priors, ``--per_image`` records each, same backbone, steps, guidance, resolution and precision:

1. anogen: ONE ``anogen generate`` process over the whole folder, for each ``--batch_sizes`` (the best
   one is run again after the paper's way, so that it brackets it in time);
2. the paper's way: for every normal image a fresh ``anogen generate`` process on a folder holding only
   that image, batch size 1, so every image pays the imports and the model load again.

Both are timed end to end (process start to exit: imports, model build, weight hash, generation,
PNG writing) and the speed-up is anogen's images/s over the paper's. The generation loop's own
images/s (logged by ``generate``) is printed as well, and ``speedup_vs_paper_amortized`` uses it: the
speed-up for a bank large enough that anogen's one start-up no longer counts (the paper's way pays its
start-up per normal image at any size). Each anogen bank is compared with the paper's banks image by
image (``identical``: same PNG bytes; at batch 1 all of them should be).

UNet FLOPs per denoising step are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
forward of the backbone's UNet (built from its config on the meta device: shapes only, no compute) at
the batch the sampler really runs: 2 x batch with classifier-free guidance (guidance != 1). The
achieved UNet FLOP/s is given two ways: (a) all UNet FLOPs of the best batch's run over its generation
loop time (which also holds the VAE, the scheduler and PNG writing: a lower bound), and (b) over the
time of the UNet alone, timed in this process at the same shape, device and precision. Each is also
shown as a share of the dense bf16 peak (``--peak_tflops``; looked up from the GPU's name, ask for it
when the GPU is unknown; on a CPU only when given).

Embeddings are written directly in ``anogen learn``'s format (a vector per defect, the backbone's
description and weight hash), with no training: their values do not change the cost of generation.

    python benchmarks/bench_generate.py                       # CPU, tiny backbone, 64 px (minutes)
    python benchmarks/bench_generate.py --smoke               # seconds: checks the script still works
    python benchmarks/bench_generate.py --device cuda --resolutions 256          # GPU, sd15-random, bf16
    python benchmarks/bench_generate.py --device cuda --resolutions 512 --json out.json

On a GPU the defaults are ``--backbone sd15-random --precision bf16 --batch_sizes 1 4 8 16``. The
paper's way costs a model build per normal image (tens of seconds for SD 1.5's shapes), so run one
resolution per call, and fewer ``--images`` (or batch sizes) at 512 px when a call has a time limit.
Target: anogen >= 20x the paper's per-image flow on the same GPU.
"""

import functools
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _backbones import register
from _common import (
    CATEGORY,
    Stopwatch,
    generate_command,
    link_images,
    median_seconds,
    normal_images,
    parse,
    parser,
    report,
    run_child,
)

TARGET_SPEEDUP = 20.0
# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s by GPU name; the first match wins.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]
LOOP_LINE = re.compile(r"rank 0: (\d+) images in ([\d.]+) s \(([\d.]+) images/s\)")


def peak_for(name: str) -> float | None:
    """The dense bf16 peak of a GPU by name, or None when it is not in the table."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)


def write_embeddings(folder: Path, spec: str) -> dict[str, Any]:
    """One embedding per defect of the bottle priors for ``spec``, in ``anogen learn``'s on-disk format.

    Returns what the FLOP count and the UNet timing need: defects, UNet config, native resolution, VAE
    factor and prompt length.
    """
    from anomalib_anogen import __version__
    from anomalib_anogen.core.backbones import load_backbone
    from anomalib_anogen.generate.boxes import load_priors
    from anomalib_anogen.learn.command import token_for
    from anomalib_anogen.learn.embeddings import METADATA_FORMAT, write_embedding_dir
    from anomalib_anogen.learn.options import DEFAULT_TOKEN

    priors, _ = load_priors(None, CATEGORY)
    model = load_backbone(spec, seed=0)
    described = model.describe()  # includes the weight hash that generate checks
    init = model.token_embedding().weight[model.tokenizer.encode("defect", add_special_tokens=False)[0]]
    defects = sorted(priors)
    for defect in defects:
        token = token_for(DEFAULT_TOKEN, defect)
        metadata = {
            "format": METADATA_FORMAT,
            "anogen_version": __version__,
            "defect": defect,
            "token": token,
            "init_word": "defect",
            "embedding_shape": [1, model.embedding_dim],
            "backbone": described,
            "seed": 0,
            "note": "written by benchmarks/bench_generate.py (not learned)",
        }
        write_embedding_dir(folder, defect, token, init[None].clone(), metadata, overwrite=False)
    return {
        "defects": defects,
        "unet_config": dict(model.unet.config),
        "resolution": model.resolution,
        "vae_factor": model.vae_scale_factor,
        "context": model.max_length,
    }


def run_generate(normal: Path, output: Path, embeddings: Path, batch: int, args: Any, resolution: int) -> dict:
    """One ``anogen generate`` process: wall seconds, loop seconds (from its log) and records written."""
    command = generate_command(
        normal,
        output,
        embeddings=embeddings,
        backbone=args.backbone,
        category=CATEGORY,
        per_image=args.per_image,
        samples_per_box=args.samples_per_box,
        steps=args.steps,
        guidance=args.guidance,
        resolution=resolution,
        batch_size=batch,
        precision=args.precision,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        progress="false",
    )
    with Stopwatch() as watch:
        done = run_child(command)
    wall = watch.wall
    match = LOOP_LINE.search(done.stderr) or LOOP_LINE.search(done.stdout)
    if match is None:
        msg = f"no 'rank 0: N images in S s' line in the log of: {' '.join(command)}"
        raise SystemExit(msg)
    images, seconds, rate = int(match.group(1)), float(match.group(2)), float(match.group(3))
    records = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines() if line.strip()]
    # The log rounds seconds to 0.1 and the rate to 0.01: take whichever is the more precise.
    loop = images / rate if rate > 0 and 0.005 / rate < 0.05 / max(seconds, 0.05) else seconds
    return {
        "wall": wall,
        "loop": max(loop, 1e-3),
        "hashes": {r["id"]: r["image_sha256"] for r in records},
    }


def unet_flops(config: dict[str, Any], batch: int, resolution: int, factor: int, context: int) -> int:
    """FLOPs of one UNet forward at ``batch``, counted on the meta device (the same ops, shapes only)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    side = resolution // factor
    sample = torch.zeros(batch, unet.config.in_channels, side, side, device="meta")
    states = torch.zeros(batch, context, unet.config.cross_attention_dim, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(sample, torch.tensor(500, device="meta"), encoder_hidden_states=states)
    return int(counter.get_total_flops())


def unet_seconds(config: dict[str, Any], batch: int, resolution: int, factor: int, context: int, args: Any) -> float:
    """Median time of one UNet forward at ``batch`` on the device and precision of the run (random weights)."""
    import torch
    from diffusers import UNet2DConditionModel

    from anomalib_anogen.core.devices import dtype_of, resolve_precision

    device = torch.device(args.device)
    dtype = dtype_of(resolve_precision(args.precision, device))
    threads = torch.get_num_threads()
    if device.type == "cpu" and args.backbone in {"tiny", "tiny-ldm"}:
        torch.set_num_threads(1)  # as generate runs the tiny backbones
    try:
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(config).eval()
        if dtype != torch.float32:
            unet.to(dtype)  # as BlendedSampler casts the backbone
        side = resolution // factor
        sample = torch.randn(batch, unet.config.in_channels, side, side, device=device, dtype=dtype)
        states = torch.randn(batch, context, unet.config.cross_attention_dim, device=device, dtype=dtype)
        step = torch.tensor(500, device=device)
        with torch.inference_mode():
            forward = functools.partial(unet, sample, step, encoder_hidden_states=states)
            seconds = median_seconds(forward, args.unet_repeats, warmup=2, device=device.type)
        del unet, forward
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return seconds
    finally:
        torch.set_num_threads(threads)


def identical(anogen: dict[str, str], paper: dict[str, str]) -> str:
    """``k/n``: records whose image bytes equal the paper's."""
    return f"{sum(anogen[key] == paper.get(key) for key in anogen)}/{len(anogen)}"


def measure(resolution: int, args: Any, scratch: Path, embeddings: Path, files: list[Path]) -> dict[str, Any]:
    """Both ways at one resolution; results keyed ``<R>px_...``."""
    tag = f"{resolution}px"
    normal = scratch / "normal"
    runs: dict[int, list[dict]] = {}
    for batch in args.batch_sizes:  # anogen, one process over all images, per batch size
        runs[batch] = [run_generate(normal, scratch / f"{tag}_anogen_b{batch}_0", embeddings, batch, args, resolution)]
    paper: list[dict] = []
    for index, file in enumerate(files):  # the paper's way: one process per normal image, batch 1
        single = link_images(scratch / f"{tag}_paper_normal_{index}", [file])
        paper.append(run_generate(single, scratch / f"{tag}_paper_{index}", embeddings, 1, args, resolution))
    paper_hashes = {key: value for run in paper for key, value in run["hashes"].items()}
    images = len(paper_hashes)

    def rate(batch: int) -> float:
        return len(runs[batch]) * images / sum(run["wall"] for run in runs[batch])

    best = max(args.batch_sizes, key=rate)
    if not args.smoke:  # the best batch again, after the paper's way
        runs[best].append(run_generate(normal, scratch / f"{tag}_anogen_b{best}_1", embeddings, best, args, resolution))

    paper_wall = sum(run["wall"] for run in paper)
    results: dict[str, Any] = {
        f"{tag}_images": images,
        f"{tag}_paper_images_per_s": images / paper_wall,
        f"{tag}_paper_s_per_process": statistics.median(run["wall"] for run in paper),
        f"{tag}_paper_loop_s_per_process": statistics.median(run["loop"] for run in paper),
        f"{tag}_paper_startup_s_per_process": statistics.median(run["wall"] - run["loop"] for run in paper),
    }
    for batch in args.batch_sizes:
        if any(len(run["hashes"]) != images for run in runs[batch]):
            msg = f"{tag} batch {batch}: anogen wrote another number of images than the paper's way"
            raise SystemExit(msg)
        results[f"{tag}_anogen_b{batch}_images_per_s"] = rate(batch)
        results[f"{tag}_anogen_b{batch}_loop_images_per_s"] = images / statistics.mean(r["loop"] for r in runs[batch])
        results[f"{tag}_anogen_b{batch}_identical"] = identical(runs[batch][0]["hashes"], paper_hashes)
    results[f"{tag}_best_batch"] = best
    results[f"{tag}_anogen_images_per_s"] = rate(best)
    results[f"{tag}_speedup_vs_paper"] = rate(best) / results[f"{tag}_paper_images_per_s"]
    if 1 in args.batch_sizes:
        results[f"{tag}_speedup_vs_paper_b1"] = rate(1) / results[f"{tag}_paper_images_per_s"]
    # The limit for a large bank, where anogen's one start-up is negligible and the paper's recurs per image.
    results[f"{tag}_speedup_vs_paper_amortized"] = (
        results[f"{tag}_anogen_b{best}_loop_images_per_s"] / results[f"{tag}_paper_images_per_s"]
    )

    # UNet FLOPs of one denoising step at the batch the sampler runs (x2 with classifier-free guidance).
    config, factor, context = args.unet_config, args.vae_factor, args.context
    guided = args.guidance != 1.0
    unet_batch = best * (2 if guided else 1)
    flops = unet_flops(config, unet_batch, resolution, factor, context)
    total = flops / best * images * args.steps  # FLOPs scale with the batch; per record flops / best
    loop = statistics.mean(run["loop"] for run in runs[best])
    forward = unet_seconds(config, unet_batch, resolution, factor, context, args)
    results[f"{tag}_unet_batch"] = unet_batch
    results[f"{tag}_unet_gflop_per_step"] = flops / 1e9
    results[f"{tag}_unet_tflops_in_loop"] = total / loop / 1e12
    results[f"{tag}_unet_tflops_alone"] = flops / forward / 1e12
    results[f"{tag}_unet_ms_per_step_alone"] = forward * 1e3
    for kind in ("in_loop", "alone"):
        achieved = results[f"{tag}_unet_tflops_{kind}"]
        results[f"{tag}_unet_share_of_peak_{kind}"] = achieved / args.peak_tflops if args.peak_tflops else "n/a"
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser_ = parser(__doc__)
    parser_.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser_.add_argument("--backbone", help="default: tiny on cpu, sd15-random on cuda")
    parser_.add_argument("--resolutions", type=int, nargs="+", help="default: the backbone's native one")
    parser_.add_argument("--batch_sizes", type=int, nargs="+", help="anogen's; default 1 8 (cpu), 1 4 8 16 (cuda)")
    parser_.add_argument("--precision", help="default: 32 on cpu, bf16 on cuda")
    parser_.add_argument("--images", type=int, default=8, help="normal images (= paper processes)")
    parser_.add_argument("--per_image", type=int, default=4, help="records per image and defect (paper: 4)")
    parser_.add_argument("--samples_per_box", type=int, default=2, help="paper: 2")
    parser_.add_argument("--steps", type=int, default=50, help="DDIM steps (paper: 50)")
    parser_.add_argument("--guidance", type=float, default=10.0, help="classifier-free guidance (paper: 10)")
    parser_.add_argument("--unet_repeats", type=int, default=5, help="timed UNet forwards (after 2 warm-up)")
    parser_.add_argument("--peak_tflops", type=float, help="dense bf16 peak (default: from the GPU's name)")
    args = parse(
        parser_, argv, smoke={"images": 1, "per_image": 1, "samples_per_box": 1, "steps": 2, "unet_repeats": 1}
    )
    register()  # sd15-random (benchmarks/_backbones.py): not one of the package's backbones
    if args.smoke:
        args.batch_sizes = args.batch_sizes or [1]
    gpu = args.device == "cuda"
    args.backbone = args.backbone or ("sd15-random" if gpu else "tiny")
    args.batch_sizes = sorted(set(args.batch_sizes or ([1, 4, 8, 16] if gpu else [1, 8])))
    args.precision = args.precision or ("bf16" if gpu else "32")

    import torch
    from diffusers.utils import logging as diffusers_logging

    from anomalib_anogen.core.devices import resolve_precision

    diffusers_logging.set_verbosity_error()  # no "cast with to()" advice for the timed UNet

    if gpu:
        if not torch.cuda.is_available():
            parser_.error("--device cuda: no CUDA device is available")
        name = torch.cuda.get_device_name(0)
        args.peak_tflops = args.peak_tflops or peak_for(name)
        if args.peak_tflops is None:
            parser_.error(f"unknown GPU {name!r}: pass --peak_tflops (its dense bf16 TFLOP/s)")

    with tempfile.TemporaryDirectory(prefix="bench_generate_") as folder:
        scratch = Path(folder)
        embeddings = scratch / "embeddings"
        shape = write_embeddings(embeddings, args.backbone)
        args.unet_config, args.vae_factor, args.context = shape["unet_config"], shape["vae_factor"], shape["context"]
        resolutions = args.resolutions or [shape["resolution"]]
        files = normal_images(args.images)
        link_images(scratch / "normal", files)
        results: dict[str, Any] = {
            "backbone": args.backbone,
            "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
            "precision": resolve_precision(args.precision, torch.device(args.device)),
            "steps": args.steps,
            "guidance": args.guidance,
            "normal_images": len(files),
            "defects": len(shape["defects"]),
            "per_image": args.per_image,
            "samples_per_box": args.samples_per_box,
            "batch_sizes": " ".join(map(str, args.batch_sizes)),
            "paper_batch_size": 1,
            "peak_tflops_bf16": args.peak_tflops or "n/a",
        }
        started = time.perf_counter()
        for resolution in resolutions:
            results.update(measure(resolution, args, scratch, embeddings, files))
        results["target_speedup"] = f">= {TARGET_SPEEDUP:g}x (GPU)"
        if gpu:
            results["target_met"] = all(results[f"{r}px_speedup_vs_paper"] >= TARGET_SPEEDUP for r in resolutions)
        results["benchmark_s"] = time.perf_counter() - started

    report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
