"""Generation precision: how far bf16 and fp16 sampling land from fp32 after guided DDIM, and why.

The project's ``BlendedSampler`` (DDIM, eta 0, classifier-free guidance, blended latents) runs the same
work in fp32, bf16 and fp16: same backbone weights, same normal latent (encoded once, in fp32), same box,
same prompt, same noise seed. Only the precision of the models (UNet, VAE decoder, text encoder) differs;
the scheduler, the guidance sum and the blending are fp32 in every run, as in ``anogen generate``. For
each half precision it prints, against fp32:

* ``latent``: relative RMS difference ||z - z32|| / ||z32|| of the final latent inside the box (outside it
  every run ends on the same normal latent);
* ``pixels``: the same of the decoded image (whole image, pixels in [-1, 1]; each run decodes in its own
  precision, as ``generate`` does), and its RMS difference in 8-bit levels.

Each is measured at ``--guidances`` 10 (the paper's) and 1 (no guidance): the ratio shows how much guidance
amplifies the rounding, since it multiplies ``cond - uncond``, the small difference of two nearly equal
predictions, by the scale at every step. ``cfg delta ratio`` is that difference's size against the
prediction in the fp32 run, rms(cond - uncond) / rms(uncond), averaged over the steps.

Compute: on a GPU every precision runs natively. On a CPU bf16 runs natively too (oneDNN bf16 kernels),
but fp16 convolutions are not vectorised on CPUs (one 320-channel 3x3 convolution at 32 x 32 takes ~8 s
instead of 0.05 s), so fp16 is **emulated by rounding**: the weights are rounded to fp16, and the inputs
and the output of every leaf module (convolution, linear, norm, activation, embedding) are rounded to
fp16 and computed in fp32. That is what a GPU's fp16 kernels do up to their internal accumulation order
(they accumulate in fp32 and round the stored result); residual sums are rounded where the next module
reads them. bf16 is run both ways (``native`` and ``emulated``) to show how close the emulation comes.

    python benchmarks/bench_precision.py               # sd15-random, 256 px, 50 steps, guidance 10 and 1
    python benchmarks/bench_precision.py --smoke       # tiny backbone, 64 px, 3 steps: seconds
    python benchmarks/bench_precision.py --device cuda # every precision native

On 2 CPU cores (one thread) the default run takes about half an hour: sd15-random's UNet is SD 1.5's
(860M parameters, random weights), ~5 s a guided step in fp32. Random weights are not trained ones: the
size of ``cond - uncond``, and so the amplification, depends on the weights (the ratio is printed).
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

from _backbones import register
from _common import Stopwatch, parse, parser, report

PRECISIONS = ("bf16", "fp16")


def normal_image(size: int) -> Any:
    """A deterministic RGB ``[1, size, size, 3]`` uint8 image: smooth gradients and a little texture."""
    import numpy as np

    axis = np.linspace(0.0, 1.0, size)
    x, y = np.meshgrid(axis, axis)
    rng = np.random.default_rng(0)
    channels = [0.5 + 0.35 * np.sin(2 * np.pi * (x + 0.3 * c)) * np.cos(2 * np.pi * y) for c in range(3)]
    image = np.stack(channels, axis=-1) + rng.normal(0.0, 0.03, (size, size, 3))
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)[None]


def box_mask(size: int) -> Any:
    """A centred box of half the image's side ``[1, size, size]`` (bool)."""
    import numpy as np

    mask = np.zeros((1, size, size), dtype=bool)
    mask[:, size // 4 : size - size // 4, size // 4 : size - size // 4] = True
    return mask


def _round_tree(value: Any, dtype: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(dtype).to(value.dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_round_tree(item, dtype) for item in value)
    return value


def emulate(modules: list[Any], dtype: Any) -> list[Any]:
    """Round the weights of ``modules`` to ``dtype`` and every leaf's inputs and output (computing in fp32)."""
    import torch

    handles = []
    with torch.no_grad():
        for module in modules:
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(dtype).to(tensor.dtype))
            for leaf in module.modules():
                if next(leaf.children(), None) is not None:
                    continue
                handles.append(leaf.register_forward_pre_hook(lambda _m, args: _round_tree(args, dtype)))
                handles.append(leaf.register_forward_hook(lambda _m, _args, out: _round_tree(out, dtype)))
    return handles


def run(args: Any, guidance: float, precision: str, mode: str, z0: Any, inside: Any) -> dict[str, Any]:
    """One sampling run from the shared normal latent, on ``precision`` computed ``native`` or ``emulated``.

    The backbone is rebuilt for every run, so that each starts from the same fp32 weights (casting and
    rounding are lossy).
    """
    import torch

    from anomalib_anogen.core.backbones import load_backbone
    from anomalib_anogen.core.devices import dtype_of
    from anomalib_anogen.generate.backends.diffusion import BlendedSampler, BoxBatch

    backbone = load_backbone(args.backbone, seed=0).to(args.device)
    dtype = dtype_of(precision)
    sampler = BlendedSampler(backbone, args.steps, guidance, precision="32")
    models = [backbone.unet, backbone.vae, backbone.text_encoder]
    if mode == "native" and dtype != torch.float32:
        for module in models:  # as BlendedSampler does on a GPU, here on any device
            module.to(dtype)
        sampler.precision, sampler.dtype = precision, dtype
    elif mode == "emulated":
        emulate(models, dtype)
    deltas: list[float] = []
    if precision == "32" and guidance != 1.0:

        def record(_module: Any, _args: Any, output: Any) -> None:
            unconditional, conditional = output.sample.float().chunk(2)
            rms = unconditional.pow(2).mean().sqrt()
            deltas.append(float((conditional - unconditional).pow(2).mean().sqrt() / rms))

        backbone.unet.register_forward_hook(record)
    with Stopwatch() as watch:
        batch = BoxBatch(
            normal_latents=z0,
            latent_masks=inside,
            prompt_embeds=sampler.embed_prompts([args.prompt]),
            seeds=[args.seed],
        )
        latents = sampler.sample(batch)
        pixels = sampler.decode(latents)
    return {"latents": latents.cpu(), "pixels": pixels, "seconds": watch.wall, "delta": deltas}


def compare(result: dict[str, Any], reference: dict[str, Any], inside: Any) -> dict[str, float]:
    """Relative RMS differences of ``result`` against ``reference`` (the fp32 run)."""
    import numpy as np

    box = inside.expand_as(reference["latents"]).cpu()
    z, z32 = result["latents"][box], reference["latents"][box]
    p = result["pixels"].astype(np.float64) / 127.5 - 1.0
    p32 = reference["pixels"].astype(np.float64) / 127.5 - 1.0
    levels = result["pixels"].astype(np.float64) - reference["pixels"].astype(np.float64)
    return {
        "latent": float((z - z32).pow(2).mean().sqrt() / z32.pow(2).mean().sqrt()),
        "pixels": float(np.sqrt(((p - p32) ** 2).mean() / (p32**2).mean())),
        "levels": float(np.sqrt((levels**2).mean())),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every precision at every guidance from the same latent and print the deviations from fp32."""
    parser_ = parser(__doc__)
    parser_.add_argument("--backbone", default="sd15-random", help="default: sd15-random (SD 1.5's shapes)")
    parser_.add_argument("--resolution", type=int, default=256, help="pixels (default 256)")
    parser_.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the paper's)")
    parser_.add_argument("--guidances", type=float, nargs="+", default=[10.0, 1.0], help="default: 10 1")
    parser_.add_argument("--device", default="cpu", help="cpu or cuda")
    parser_.add_argument("--seed", type=int, default=0, help="noise seed of the box")
    parser_.add_argument("--prompt", default="a photo of a defect", help="the conditional prompt")
    args = parse(parser_, argv, smoke={"backbone": "tiny", "resolution": 64, "steps": 3})
    register()  # sd15-random (benchmarks/_backbones.py): not one of the package's backbones

    import torch
    from diffusers.utils import logging as diffusers_logging

    from anomalib_anogen.core.backbones import load_backbone
    from anomalib_anogen.generate.backends.diffusion import BlendedSampler

    diffusers_logging.set_verbosity_error()  # not the "cast with to()" warning of every native half run
    if args.device == "cpu":
        torch.set_num_threads(1 if args.backbone in {"tiny", "tiny-ldm"} else torch.get_num_threads())
    reference = load_backbone(args.backbone, seed=0).to(args.device)
    encoder = BlendedSampler(reference, 1, 1.0, precision="32")
    z0 = encoder.encode(normal_image(args.resolution))  # once, in fp32: every run starts from this latent
    inside = encoder.latent_mask(box_mask(args.resolution))
    del reference, encoder

    cpu = torch.device(args.device).type != "cuda"
    runs = [(p, "native") for p in PRECISIONS if not (cpu and p == "fp16")]
    runs += [(p, "emulated") for p in PRECISIONS if cpu]
    results: dict[str, Any] = {
        "backbone": args.backbone,
        "resolution": args.resolution,
        "steps": args.steps,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
    }
    for guidance in args.guidances:
        fp32 = run(args, guidance, "32", "native", z0, inside)
        name = f"g{guidance:g}"
        print(f"[{name}] fp32: {fp32['seconds']:.1f} s", flush=True)
        results[f"{name} fp32 seconds"] = round(fp32["seconds"], 2)
        if fp32["delta"]:
            results[f"{name} cfg delta ratio (fp32, mean over steps)"] = float(sum(fp32["delta"]) / len(fp32["delta"]))
        for precision, mode in runs:
            outcome = run(args, guidance, precision, mode, z0, inside)
            deviation = compare(outcome, fp32, inside)
            print(f"[{name}] {precision} {mode}: {outcome['seconds']:.1f} s, {deviation}", flush=True)
            for key, label in (("latent", "latent rel RMS"), ("pixels", "pixels rel RMS"), ("levels", "pixels RMS")):
                results[f"{name} {precision} {mode} {label}"] = deviation[key]
            results[f"{name} {precision} {mode} seconds"] = round(outcome["seconds"], 2)
    if len(args.guidances) > 1 and 1.0 in args.guidances:
        guided = next(g for g in args.guidances if g != 1.0)
        for precision, mode in runs:
            ratio = results[f"g{guided:g} {precision} {mode} latent rel RMS"] / max(
                results[f"g1 {precision} {mode} latent rel RMS"], 1e-30
            )
            results[f"{precision} {mode} latent: guidance {guided:g} / guidance 1"] = ratio
    report(results, args.json, title="precision against fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
