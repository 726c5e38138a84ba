"""What each OpenVINO precision costs on a *trained* model: latency, decisions, pixel AP and image AUROC vs f32.

The companion of ``bench_infer.py`` (which times briefly trained models). Here every precision runs on models
trained to a useful level on the real bottle data, and is compared with the FP32 IR at f32 on the whole bottle
test set (74 images) with ``anogen deploy-check``'s own measurement (``anomalib_anogen.deploy.check``):

1. models: ``draem_small`` (DraemWeak, widths 64/32) and ``destseg`` (DestsegWeak), both with the ``anogen``
   generator on a paste bank made from the 3-shot support set (``anogen generate --backend paste``), at
   ``--image_size`` (128). Each is trained until its image AUROC on the bottle test set (anomalib's MVTecAD
   validates on its test split) reaches ``--target_auroc`` (0.8), evaluated every ``--eval_every`` steps, at
   most ``--max_steps``; the checkpoint with the best AUROC is kept in ``--workdir`` (default
   ``runs/bench_deploy``) and reused on a rerun, so training happens once. ``--draem_ckpt`` / ``--destseg_ckpt``
   take a checkpoint instead. DestsegWeak's teacher is random (no ImageNet weights here) unless
   ``--destseg_teacher`` names a local resnet18 file;
2. exports: FP32, FP16 and INT8 (NNCF, calibrated on ``--calib_images`` normal *training* images) IRs with
   anomalib's ``Engine.export``, beside the checkpoint (reused on a rerun);
3. every IR at every precision this CPU runs (f32; bf16 where the CPU has it, and bf16 with the narrow
   layers kept in f32, see docs/deploy.md section 9): median batch-1 latency (interleaved), THROUGHPUT-hint
   images/s, share of image decisions equal to f32's, largest raw anomaly-map difference, pixel AP and image
   AUROC differences in points; and the targets: bf16 <= 0.55x f32 latency, >= 99 % decisions unchanged,
   <= 0.5 point pixel AP lost; INT8 <= 0.3x f32, >= 98 % unchanged, <= 1 point lost (met, or missed by how much);
4. real bf16 (where the CPU has it) against ``emulate_bf16`` on the raw outputs of every ``--parity_stride``-th
   test image, and their ratio;
5. where the CPU has bf16 (and without ``--no_layers``): the per-layer comparison of
   ``anomalib_anogen.deploy.layers`` on every ``--layer_stride``-th test image, the ``--top_layers`` layers with
   the largest share of bf16's difference.

The machine's load average is printed at the start and the end: the variants are timed side by side
(interleaved), so their ratios hold on a busy machine better than their absolute times.

    python benchmarks/bench_deploy.py --json bench_deploy.json     # trains once (about an hour here), then ~5 min
    python benchmarks/bench_deploy.py --draem_ckpt D.ckpt --destseg_ckpt S.ckpt
    python benchmarks/bench_deploy.py --smoke                       # seconds: 64 px, a few steps, every path once
"""

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from _common import CATEGORY, DTD, MVTEC, NORMAL, REPO, make_paste_bank, parser, report, trace_once

MODELS = ("draem_small", "destseg")
TARGETS = {  # variant kind -> (latency ratio to f32 at most, share of decisions unchanged at least, AP points lost)
    "bf16": (0.55, 0.99, 0.5),
    "int8": (0.30, 0.98, 1.0),
}


def datamodule(size: int, batch_size: int, workers: int, eval_batch_size: int = 16, **kwargs: Any) -> Any:
    """MVTecAD bottle from ../shared/data at ``size`` (the datamodule resizes; 256 px is the stored size)."""
    from anomalib.data import MVTecAD
    from torchvision.transforms.v2 import Resize

    return MVTecAD(
        root=MVTEC,
        category=CATEGORY,
        train_batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=workers,
        augmentations=None if size == 256 else Resize((size, size), antialias=True),
        seed=0,
        **kwargs,
    )


def build(name: str, args: Any, bank: Path) -> Any:
    """A fresh DraemWeak (widths ``--draem_widths``) or DestsegWeak on the paste bank, validated by image AUROC."""
    from anomalib.metrics import AUROC, Evaluator

    from anomalib_anogen.metrics import anogen_evaluator
    from anomalib_anogen.models import DestsegWeak, DraemWeak

    size = (args.image_size, args.image_size)
    evaluator = Evaluator(
        val_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_")],
        test_metrics=list(anogen_evaluator().test_metrics),
    )
    common = {"dtd_dir": DTD, "generator": "anogen", "bank_dir": bank, "evaluator": evaluator, "visualizer": False}
    if name == "draem_small":
        reconstructive, discriminative = args.draem_widths
        return DraemWeak(
            reconstructive_width=reconstructive,
            discriminative_width=discriminative,
            learning_rate=args.draem_lr,
            pre_processor=DraemWeak.configure_pre_processor(size),
            **common,
        )
    return DestsegWeak(
        pretrained_weights=str(args.destseg_teacher) if args.destseg_teacher else "random",
        steps=args.max_steps,
        de_st_steps=args.destseg_student_steps,
        pre_processor=DestsegWeak.configure_pre_processor(size),
        **common,
    )


def auroc_stopper(name: str, target: float, best_path: Path, log: Path, first_step: int) -> Any:
    """A callback: after each validation, keep the checkpoint if its image AUROC is the best so far; stop at target."""
    from lightning.pytorch.callbacks import Callback

    class StopAtAuroc(Callback):
        def __init__(self) -> None:
            self.best = -1.0
            self.best_step = 0
            self.started = time.perf_counter()

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking or "image_AUROC" not in trainer.callback_metrics:
                return
            auroc = float(trainer.callback_metrics["image_AUROC"])
            step = int(trainer.global_step)
            line = f"[{name}] step {step}: image AUROC {auroc:.4f} ({time.perf_counter() - self.started:.0f} s)"
            if step >= first_step and auroc > self.best:
                self.best, self.best_step = auroc, step
                partial = best_path.with_name(best_path.name + ".partial")
                trainer.save_checkpoint(partial)
                os.replace(partial, best_path)
                line += " - best so far, kept"
            print(line, flush=True)
            with log.open("a") as handle:
                handle.write(json.dumps({"step": step, "image_auroc": auroc}) + "\n")
            if step >= first_step and auroc >= target:
                trainer.should_stop = True

    return StopAtAuroc()


def train(name: str, args: Any, folder: Path) -> dict[str, Any]:
    """Train ``name`` until its test-set image AUROC reaches the target; keeps the best as ``folder/model.ckpt``."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    folder.mkdir(parents=True, exist_ok=True)
    bank = make_paste_bank(args.workdir / f"paste_bank_{args.bank_images}", limit=args.bank_images, resume=True)
    seed_everything(args.seed, workers=True)
    model = build(name, args, bank)
    model.generator_spec = model.generator_spec.with_options(num_workers=args.workers)
    draem = name == "draem_small"
    batch_size = args.batch_size if draem else args.destseg_batch_size
    data = datamodule(args.image_size, batch_size, args.workers)
    # DeSTSeg's first de_st_steps train the student only: its segmentation head is untrained until then.
    first_step = 0 if draem else args.destseg_student_steps
    stopper = auroc_stopper(name, args.target_auroc, folder / "model.ckpt", folder / "curve.jsonl", first_step)
    # Full batches only: DeSTSeg's ASPP image-pooling BatchNorm cannot train on an epoch's last single image.
    train_batches = len(list(NORMAL.glob("*.png"))) // batch_size
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as scratch:
        engine = Engine(
            default_root_dir=scratch,
            accelerator="cpu",
            devices=1,
            logger=False,
            max_steps=args.max_steps,
            limit_train_batches=train_batches,
            check_val_every_n_epoch=None,
            val_check_interval=args.eval_every,
            num_sanity_val_steps=0,
            callbacks=[stopper],
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        engine.fit(model=model, datamodule=data)
    if stopper.best < 0:
        msg = f"{name}: no evaluation after step {first_step} (raise --max_steps)"
        raise RuntimeError(msg)
    summary = {
        "model": name,
        "image_size": args.image_size,
        "best_image_auroc": stopper.best,
        "best_step": stopper.best_step,
        "steps_run": int(engine.trainer.global_step),
        "target_auroc": args.target_auroc,
        "target_met": stopper.best >= args.target_auroc,
        "train_s": round(time.perf_counter() - started, 1),
        "bank": str(bank),
        "teacher": "" if draem else str(args.destseg_teacher or "random"),
        "widths": list(args.draem_widths) if draem else [],
    }
    (folder / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def checkpoint(name: str, args: Any) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to measure: given, kept from an earlier run in ``--workdir``, or trained now."""
    given = args.draem_ckpt if name == "draem_small" else args.destseg_ckpt
    if given:
        return given, {"model": name, "checkpoint": str(given)}
    folder = args.workdir / name
    summary_file = folder / "training.json"
    if summary_file.is_file() and (folder / "model.ckpt").is_file():
        summary = json.loads(summary_file.read_text())
        print(f"[{name}] reusing {folder / 'model.ckpt'} (image AUROC {summary['best_image_auroc']:.4f})", flush=True)
        return folder / "model.ckpt", summary
    print(f"[{name}] training until image AUROC >= {args.target_auroc} (at most {args.max_steps} steps)", flush=True)
    return folder / "model.ckpt", train(name, args, folder)


def load(name: str, path: Path) -> Any:
    """The model of a checkpoint, with training-only paths pointed at this machine's (the bank is not needed)."""
    from anomalib_anogen.models import DestsegWeak, DraemWeak

    if name == "draem_small":
        return DraemWeak.load_from_checkpoint(path, map_location="cpu", dtd_dir=DTD, generator="perlin", bank_dir=None)
    return DestsegWeak.load_from_checkpoint(
        path, map_location="cpu", dtd_dir=DTD, generator="perlin", bank_dir=None, pretrained_weights=None
    )


def export_all(name: str, ckpt: Path, args: Any, folder: Path) -> dict[str, Path]:
    """FP32, FP16 and INT8 IRs of the checkpoint under ``folder`` (kept when newer than the checkpoint)."""
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine

    kinds = {"fp32": None, "fp16": CompressionType.FP16, "int8": CompressionType.INT8_PTQ}
    paths = {kind: folder / kind / "weights" / "openvino" / "model.xml" for kind in kinds}
    if all(path.is_file() and path.stat().st_mtime > ckpt.stat().st_mtime for path in paths.values()):
        return paths
    model = load(name, ckpt).eval()
    # INT8_PTQ calibrates on val_dataloader(): a split of normal *training* images (never the test set).
    train_count = len(list(NORMAL.glob("*.png")))
    calibration = datamodule(
        args.image_size,
        1,
        0,
        eval_batch_size=1,  # NNCF takes each batch as one calibration sample
        val_split_mode="from_train",
        val_split_ratio=(args.calib_images + 0.5) / train_count,
    )
    calibration.setup("fit")
    assert set(calibration.val_data.samples.label_index) == {0}, "calibration images must all be normal"
    engine = Engine(default_root_dir=folder / "engine", accelerator="cpu", logger=False, enable_progress_bar=False)
    trace_once(model, folder / "engine")
    for kind, compression in kinds.items():
        if (folder / kind).exists():
            shutil.rmtree(folder / kind)
        started = time.perf_counter()
        engine.export(
            model=model,
            export_type=ExportType.OPENVINO,
            export_root=folder / kind,
            input_size=(args.image_size, args.image_size),
            compression_type=compression,
            datamodule=calibration if kind == "int8" else None,
        )
        print(f"[{name}] exported {kind} in {time.perf_counter() - started:.0f} s", flush=True)
    shutil.rmtree(folder / "engine", ignore_errors=True)
    return paths


def target_lines(name: str, check: Any) -> dict[str, str]:
    """Each target of the issue against the measured variant: met, or missed and by how much."""
    lines = {}
    for result in check.results[1:]:
        kind = "int8" if result.kind == "INT8" else "bf16" if result.precision == "bf16" else None
        if kind is None or (kind == "int8" and result.precision != "f32"):
            continue
        ratio_max, agree_min, ap_loss_max = TARGETS[kind]
        checks = [
            ("latency", result.latency_ratio, ratio_max, result.latency_ratio <= ratio_max, "x f32"),
            ("decisions unchanged", result.decisions_agree, agree_min, result.decisions_agree >= agree_min, ""),
        ]
        if result.pixel_ap_difference is not None:
            loss = -result.pixel_ap_difference
            checks.append(("pixel AP lost (pts)", loss, ap_loss_max, loss <= ap_loss_max, ""))
        for label, value, limit, met, unit in checks:
            by = "" if met else f" - MISSED by {abs(value - limit):.3g}"
            key = f"{name} target {result.name}: {label} {'<=' if label != 'decisions unchanged' else '>='} {limit}"
            lines[key] = f"{value:.4g}{unit}{by}" if not met else f"{value:.4g}{unit} met"
    return lines


def emulation_vs_real(name: str, xml: Path, args: Any) -> dict[str, Any]:
    """Real bf16 (where the CPU has it) and ``emulate_bf16`` on the same raw outputs, test images, and their ratio."""
    import openvino as ov

    from anomalib_anogen.deploy import cpu_info, emulate_bf16
    from anomalib_anogen.deploy.check import find_samples, load_image, raw_network

    samples, _ = find_samples(MVTEC / CATEGORY / "test", None, None)
    images = [load_image(sample.image, (args.image_size, args.image_size)) for sample in samples[:: args.parity_stride]]
    core = ov.Core()
    raw = raw_network(core.read_model(xml))

    def maps(network: Any, precision: str) -> Any:
        import numpy as np

        request = core.compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": precision}).create_infer_request()
        return np.stack([np.asarray(request.infer({0: image})["raw_anomaly_map"]) for image in images])

    import numpy as np

    f32 = maps(raw, "f32")
    results: dict[str, Any] = {f"{name} raw map range (f32, parity images)": float(f32.max() - f32.min())}
    emulated = float(np.abs(maps(emulate_bf16(raw), "f32") - f32).max())
    results[f"{name} bf16 emulated: max raw map diff"] = emulated
    if cpu_info().native_bf16:
        real = float(np.abs(maps(raw, "bf16") - f32).max())
        results[f"{name} bf16 real: max raw map diff"] = real
        results[f"{name} bf16 emulated / real"] = emulated / real if real > 0 else float("inf")
    results[f"{name} parity images"] = len(images)
    return results


def layer_table(name: str, xml: Path, args: Any) -> dict[str, Any]:
    """The per-layer bf16 comparison (``anomalib_anogen.deploy.layers``) on a few test images; top layers."""
    import openvino as ov

    from anomalib_anogen.deploy.check import find_samples, load_image
    from anomalib_anogen.deploy.layers import layer_differences

    samples, _ = find_samples(MVTEC / CATEGORY / "test", None, None)
    images = [load_image(sample.image, (args.image_size, args.image_size)) for sample in samples[:: args.layer_stride]]
    network = ov.Core().read_model(xml)
    total, layers, ran_in = layer_differences(network, images, not args.smoke, 2 if args.smoke else None)
    results: dict[str, Any] = {f"{name} layers: bf16 everywhere, max raw map diff": total}
    bf16_layers = sum(precision == "bf16" for precision in ran_in.values())
    results[f"{name} layers: conv/matmul/interpolate run in bf16"] = f"{bf16_layers} of {len(ran_in)}"
    print(f"[{name}] per-layer bf16 comparison on {len(images)} test images (bf16 everywhere: {total:.3e}):")
    print(f"    {'only this layer in bf16':>24} {'all but this in bf16':>21}  ran in  layer")
    for layer in sorted(layers, key=lambda item: -item.alone)[: args.top_layers]:
        precision = ran_in.get(layer.name, "?")
        print(f"    {layer.alone:24.3e} {layer.kept:21.3e}  {precision:6}  {layer.type} {layer.name}")
        results[f"{name} layer {layer.name} alone / kept"] = f"{layer.alone:.3e} / {layer.kept:.3e}"
    return results


def main(argv: list[str] | None = None) -> int:
    """Train (once) or load, export, measure, print the table and the targets."""
    p = parser(__doc__)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_deploy", help="checkpoints, exports, bank")
    p.add_argument("--image_size", type=int, default=128, help="training and export size (DraemWeak: multiple of 32)")
    p.add_argument("--target_auroc", type=float, default=0.8, help="train until the test image AUROC reaches it")
    p.add_argument("--max_steps", type=int, default=1500, help="training steps at most (DestsegWeak: its schedule)")
    p.add_argument("--eval_every", type=int, default=50, help="steps between test-set AUROC evaluations")
    p.add_argument("--batch_size", type=int, default=8, help="DraemWeak training batch")
    p.add_argument("--destseg_batch_size", type=int, default=8, help="DestsegWeak training batch")
    p.add_argument("--destseg_student_steps", type=int, default=200, help="DestsegWeak's de_st_steps")
    p.add_argument("--draem_widths", type=int, nargs=2, default=(64, 32), metavar=("RECONSTRUCTIVE", "DISCRIMINATIVE"))
    p.add_argument("--draem_lr", type=float, default=1e-3, help="DraemWeak Adam lr (DRAEM: 1e-4 over 700 epochs)")
    p.add_argument("--bank_images", type=int, default=209, help="normal images of the paste bank")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers for images and for the bank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draem_ckpt", type=Path, help="DraemWeak checkpoint instead of training")
    p.add_argument("--destseg_ckpt", type=Path, help="DestsegWeak checkpoint instead of training")
    p.add_argument("--destseg_teacher", type=Path, help="local ImageNet resnet18 weights (default: random)")
    p.add_argument("--calib_images", type=int, default=16, help="normal training images for INT8 calibration")
    p.add_argument("--threads", type=int, help="OpenVINO threads (default: every core)")
    p.add_argument("--runs", type=int, default=20, help="timed batch-1 calls per variant (median)")
    p.add_argument("--throughput_images", type=int, default=32, help="images per variant, THROUGHPUT hint")
    p.add_argument("--parity_stride", type=int, default=4, help="every Nth test image for emulated-vs-real bf16")
    p.add_argument("--layer_stride", type=int, default=10, help="every Nth test image for the per-layer comparison")
    p.add_argument("--top_layers", type=int, default=8, help="layers printed by the per-layer comparison")
    p.add_argument("--no_layers", action="store_true", help="skip the per-layer comparison")
    args = p.parse_args(argv)
    if args.smoke:
        args.image_size, args.max_steps, args.eval_every, args.target_auroc = 64, 2, 2, 1.01
        args.batch_size = args.destseg_batch_size = 4
        args.destseg_student_steps, args.draem_widths, args.bank_images, args.calib_images = 2, (8, 4), 8, 2
        args.runs, args.throughput_images, args.parity_stride, args.layer_stride, args.top_layers = 2, 2, 25, 37, 3
        args.workdir = Path(tempfile.mkdtemp(prefix="bench_deploy_smoke_"))
        args.models = [model for model in args.models if model == "draem_small"] or args.models
    args.workdir = args.workdir.resolve()
    warnings.filterwarnings("ignore")
    for noisy in ("anomalib", "lightning", "lightning.pytorch", "nncf"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from anomalib_anogen.deploy import cpu_info
    from anomalib_anogen.deploy.check import DeployCheckOptions, deploy_check

    info = cpu_info()
    results: dict[str, Any] = {
        "cpu": info.name,
        "cpu_flags": " ".join(info.flags) or "unknown",
        "ov_default_precision": info.default_precision,
        "ov_native_bf16": str(info.native_bf16),
        "image_size": args.image_size,
        "load_avg_1min_start": os.getloadavg()[0],
    }
    started = time.perf_counter()
    try:
        for name in args.models:
            ckpt, summary = checkpoint(name, args)
            results[f"{name} weights"] = (
                f"{ckpt}: image AUROC {summary['best_image_auroc']:.4f} at step {summary['best_step']}"
                if "best_image_auroc" in summary
                else str(ckpt)
            )
            exports = args.workdir / name / "export"
            paths = export_all(name, ckpt, args, exports)
            options = DeployCheckOptions(
                model=str(exports),
                images=str(MVTEC / CATEGORY / "test"),
                masks=str(MVTEC / CATEGORY / "ground_truth"),
                runs=args.runs,
                warmup=2,
                throughput_images=args.throughput_images,
                threads=args.threads,
                write=False,
                progress=not args.smoke,
            )
            began = time.perf_counter()
            check = deploy_check(options)
            results[f"{name} deploy-check s"] = time.perf_counter() - began
            print(f"[{name}] deploy-check on the bottle test set:\n{check}\n", flush=True)
            for result in check.results:
                results[f"{name} {result.name}"] = (
                    f"{result.latency_ms:.1f} ms, {result.latency_ratio:.3f}x, "
                    f"{100 * result.decisions_agree:.1f}% same, AP {_signed(result.pixel_ap_difference)}, "
                    f"AUROC {_signed(result.image_auroc_difference)}, raw map {result.max_raw_map_difference:.2e}"
                )
            results[f"{name} f32 pixel AP / image AUROC"] = (
                f"{check.results[0].pixel_ap:.2f} / {check.results[0].image_auroc:.2f}"
            )
            results |= target_lines(name, check)
            began = time.perf_counter()
            results |= emulation_vs_real(name, paths["fp32"], args)
            results[f"{name} emulated vs real s"] = time.perf_counter() - began
            if info.native_bf16 and not args.no_layers:
                began = time.perf_counter()
                results |= layer_table(name, paths["fp32"], args)
                results[f"{name} per-layer comparison s"] = time.perf_counter() - began
    finally:
        if args.smoke:
            shutil.rmtree(args.workdir, ignore_errors=True)
    results["load_avg_1min_end"] = os.getloadavg()[0]
    results["wall_s"] = time.perf_counter() - started
    report(results, args.json, title="bench_deploy")
    return 0


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


if __name__ == "__main__":
    sys.exit(main())
