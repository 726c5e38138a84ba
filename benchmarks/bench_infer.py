"""Inference speed of DraemWeak and DestsegWeak on this CPU: torch eager vs OpenVINO f32, bf16, FP16 and INT8.

Models: ``draem`` (DraemWeak, DRAEM's widths 128/64), ``draem_small`` (DraemWeak at ``--small_widths``, 64/32:
the latency/accuracy trade-off for a line PC at batch 1) and ``destseg`` (DestsegWeak). Every OpenVINO variant
runs with its inference precision set explicitly (``anomalib_anogen.deploy.openvino_config``): ``fp32`` = the
FP32 IR at f32, ``bf16`` = the same IR at bf16 (only where the CPU runs bf16; elsewhere reported as not
supported, with the CPU flags), ``fp16`` = the FP16-compressed IR at f32, ``int8`` = the INT8 IR at f32 for its
remaining float layers. The report starts with the CPU, OpenVINO's default precision on it and its flags.

For each model, at batch 1 and ``--image_size`` (256):
1. exports it three times with anomalib's ``Engine.export`` (OpenVINO; compression none = FP32, ``FP16``,
   ``INT8_PTQ`` = NNCF post-training quantisation calibrated on ``--calib_images`` normal bottle *training*
   images: the calibration datamodule's validation split is taken ``FROM_TRAIN``, because anomalib's
   ``INT8_PTQ`` calibrates on ``val_dataloader()`` and MVTecAD's default validation split is the test set).
   The torch -> ONNX trace, identical for the three, runs once and is reused (``export()`` says how);
2. latency: median of ``--runs`` timed batch-1 calls after ``--warmup``, interleaved (torch, FP32, FP16, INT8
   in turn, on the same real test image), of the full forward in each: pre-processing, network and
   anomalib's post-processing, i.e. what the exported graph computes. Torch runs under
   ``torch.inference_mode`` with ``torch.set_num_threads(--threads)``; OpenVINO (the ``openvino`` runtime
   directly, input reshaped to a static 1x3xHxW, LATENCY hint, one stream) with
   ``INFERENCE_NUM_THREADS=--threads``. Throughput: images/s of those sequential batch-1 calls, and of
   OpenVINO's THROUGHPUT hint with an ``AsyncInferQueue`` (``--async_images`` per variant);
3. accuracy cost: every variant on the bottle test images (every ``--test_stride``-th of each label),
   image AUROC and pixel AP of the exported outputs (``pred_score``, ``anomaly_map``: anomalib-normalised),
   and each compressed variant's difference from FP32 in points;
4. raw-output parity (``anomalib_anogen.deploy.check_parity`` on an export without normalisation): the largest
   anomaly-map and score differences from torch at f32 and at bf16 (real bf16 where the CPU has it, otherwise
   ``emulate_bf16``, labelled ``emulated``), on ``--parity_images`` test images.

Weights: ``--draem_ckpt`` / ``--destseg_ckpt`` (anomalib Lightning checkpoints); without them each model is
trained here for a few steps only, so absolute AUROC/AP mean nothing and only the compression *deltas*
matter. DestsegWeak's frozen teacher is random (``pretrained_weights="random"``, no ImageNet weights on this
machine) unless ``--destseg_teacher`` names a local resnet18 file. Perlin anomalies use the DTD subset in
../shared/data; nothing is downloaded. Exports go to a temporary folder, which is also the working directory
while the script runs, so nothing is left behind.

    python benchmarks/bench_infer.py                    # ~15-20 min on 2 cores, briefly trained weights
    python benchmarks/bench_infer.py --draem_ckpt D.ckpt --destseg_ckpt S.ckpt --test_stride 1
    python benchmarks/bench_infer.py --perf             # + OpenVINO per-layer-type time (perf counters)
    python benchmarks/bench_infer.py --smoke            # ~45 s: 64 px, tiny DraemWeak, every path once
    python benchmarks/bench_infer.py --smoke --models draem destseg   # ~90 s: DestsegWeak's too
    python benchmarks/bench_infer.py --models draem_small            # the reduced-width DraemWeak only

Targets printed next to the results: OpenVINO FP32 latency <= 0.6x torch eager, INT8 <= 0.35x with at most
1 point of pixel AP lost against FP32.
"""

import logging
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import DTD, MVTEC, NORMAL, SMOKE_WIDTHS, add_widths, parse, parser, quiet, report, trace_once

VARIANTS = ("fp32", "bf16", "fp16", "int8")
# Which exported IR each variant runs, and at which OpenVINO inference precision.
IR_OF = {"fp32": "fp32", "bf16": "fp32", "fp16": "fp16", "int8": "int8"}
PRECISION_OF = {"fp32": "f32", "bf16": "bf16", "fp16": "f32", "int8": "f32"}
FP32_TARGET, INT8_TARGET, INT8_MAX_PIXEL_AP_LOSS = 0.6, 0.35, 1.0
SMOKE = {"image_size": 64, "runs": 2, "async_images": 2, "calib_images": 4, "parity_images": 2, **SMOKE_WIDTHS}
SMOKE |= {"train_steps": 1, "destseg_steps": 2, "destseg_batch_size": 2, "destseg_top_k": 10, "small_widths": (4, 2)}


def datamodule(size: int, batch_size: int, **kwargs: object):
    """MVTecAD bottle from ../shared/data, resized to ``size`` by the datamodule only when it is not 256."""
    from anomalib.data import MVTecAD
    from torchvision.transforms.v2 import Resize

    resize = None if size == 256 else Resize((size, size), antialias=True)
    return MVTecAD(
        root=MVTEC,
        category="bottle",
        train_batch_size=batch_size,
        eval_batch_size=batch_size,
        num_workers=0,
        augmentations=resize,
        seed=0,
        **kwargs,
    )


def checkpoint_of(name: str, args) -> Path | None:
    """The checkpoint given for this model, if any (``--draem_ckpt`` serves both DraemWeak rows)."""
    return args.draem_ckpt if name.startswith("draem") else args.destseg_ckpt


def build(name: str, args, size: int):
    """A fresh model, or the one in its checkpoint; returns (model, how its weights came about)."""
    from anomalib_anogen.models import DestsegWeak, DraemWeak

    draem = name.startswith("draem")
    checkpoint = checkpoint_of(name, args)
    model_class = DraemWeak if draem else DestsegWeak
    if checkpoint:
        # Training-only paths saved in the hyperparameters may not exist here; the teacher is in the state dict.
        overrides = {"dtd_dir": DTD} | ({} if draem else {"pretrained_weights": None})
        model = model_class.load_from_checkpoint(checkpoint, map_location="cpu", **overrides)
        return model, f"checkpoint {checkpoint}"
    common = {"dtd_dir": DTD, "pre_processor": model_class.configure_pre_processor((size, size))}
    common |= {"evaluator": False, "visualizer": False}  # metrics are computed below, on the OpenVINO outputs
    if draem:
        widths = args.small_widths if name == "draem_small" else (args.reconstructive_width, args.discriminative_width)
        model = DraemWeak(reconstructive_width=widths[0], discriminative_width=widths[1], **common)
        trained = f"briefly trained here: {args.train_steps} steps at batch {args.batch_size}"
        return model, f"widths {widths[0]}/{widths[1]}, {trained}"
    teacher = str(args.destseg_teacher) if args.destseg_teacher else "random"
    model = DestsegWeak(
        pretrained_weights=teacher,
        steps=args.destseg_steps,
        de_st_steps=args.destseg_steps // 2,
        T=args.destseg_top_k,
        **common,
    )
    how = f"briefly trained here: {args.destseg_steps} steps at batch {args.destseg_batch_size}, teacher "
    return model, how + ("RANDOM (no ImageNet weights)" if teacher == "random" else teacher)


def train(name: str, model, args, size: int, scratch: Path) -> int:
    """Train briefly, then validate once so the post-processor gets its normalisation and thresholds.

    Validation images: ``--val_ratio`` of each test label (anomalib's usual protocol validates on test
    images; they only set score normalisation, and the accuracy below is compared between variants).
    Returns the number of validation images.
    """
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.engine import Engine

    draem = name.startswith("draem")
    batch_size = args.batch_size if draem else args.destseg_batch_size
    data = datamodule(
        size,
        batch_size,
        val_split_mode="from_test",
        val_split_ratio=args.val_ratio,
    )
    extra = {"max_steps": args.train_steps} if draem else {}
    # Full batches only: bottle has 209 training images, so batch 2/4/8/16 ends each epoch with ONE image,
    # and DestsegWeak's ASPP image-pooling BatchNorm (1x1 map) cannot train on a single image (ValueError).
    extra["limit_train_batches"] = len(list(NORMAL.glob("*.png"))) // batch_size
    engine = Engine(
        default_root_dir=scratch / f"train_{name}",
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=scratch, save_top_k=0)],  # anomalib adds a saving one otherwise
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10**6,  # validate once, explicitly, after training
        **extra,
    )
    engine.fit(model=model, datamodule=data)
    engine.validate(model=model, datamodule=data, verbose=False)
    return len(data.val_data)


def export(model, size: int, scratch: Path, calib_images: int) -> tuple[dict[str, Path], dict[str, float], int]:
    """FP32, FP16 and INT8_PTQ OpenVINO exports through ``Engine.export``; returns paths, seconds, calibration count.

    The torch -> ONNX trace (the slow, deterministic first step of every ``to_openvino``) runs once: later
    calls of ``model.to_onnx`` with the same arguments get a copy of that ONNX file. Everything after it
    (``ov.convert_model``, NNCF quantisation, ``ov.save_model(compress_to_fp16=...)``) is anomalib's own.
    """
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine

    # INT8_PTQ calibrates on val_dataloader(): make that a split of the normal *training* images, batch 1.
    # floor(209 * (n + 0.5) / 209) = n images go to validation (anomalib's random_split floors).
    train_count = len(list(NORMAL.glob("*.png")))
    calibration = datamodule(size, 1, val_split_mode="from_train", val_split_ratio=(calib_images + 0.5) / train_count)
    calibration.setup("fit")
    calibrated = len(calibration.val_data)
    assert set(calibration.val_data.samples.label_index) == {0}, "calibration images must all be normal"

    engine = Engine(default_root_dir=scratch, accelerator="cpu", logger=False, enable_progress_bar=False)
    paths, seconds = {}, {}
    trace_once(model, scratch)
    try:
        exports = (("fp32", None), ("fp16", CompressionType.FP16), ("int8", CompressionType.INT8_PTQ))
        for variant, compression in exports:
            started = time.perf_counter()
            paths[variant] = Path(
                engine.export(
                    model=model,
                    export_type=ExportType.OPENVINO,
                    export_root=scratch / f"export_{variant}",
                    input_size=(size, size),
                    compression_type=compression,
                    datamodule=calibration if compression == CompressionType.INT8_PTQ else None,
                ),
            )
            seconds[variant] = time.perf_counter() - started
    finally:
        del model.to_onnx
    return paths, seconds, calibrated


def compile_ov(core, path: Path, size: int, threads: int, hint: str, precision: str, perf: bool = False):
    """Read an exported model, fix its input to 1x3xHxW and compile it for the CPU at an explicit precision."""
    from anomalib_anogen.deploy import openvino_config

    network = core.read_model(path)
    network.reshape({network.input(0): [1, 3, size, size]})
    config = openvino_config(precision, PERFORMANCE_HINT=hint, INFERENCE_NUM_THREADS=threads)
    if hint == "LATENCY":
        config["NUM_STREAMS"] = 1
    if perf:
        config["PERF_COUNT"] = True
    return core.compile_model(network, "CPU", config)


def latency(torch_model, requests: dict, image: np.ndarray, warmup: int, runs: int) -> dict[str, list[float]]:
    """Seconds per batch-1 call, interleaved across torch and every OpenVINO variant."""
    import torch

    tensor = torch.from_numpy(image)

    def call_torch() -> None:
        with torch.inference_mode():
            torch_model(tensor)

    calls = {"torch": call_torch} | {variant: (lambda r=r: r.infer({0: image})) for variant, r in requests.items()}
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times


def test_items(size: int, stride: int) -> list:
    """Every ``stride``-th bottle test image of each label (normal, anomalous), with its mask."""
    data = datamodule(size, 1)
    data.setup("test")
    dataset = data.test_data
    labels = dataset.samples.label_index.to_numpy()
    chosen = [index for label in (0, 1) for index in np.flatnonzero(labels == label)[::stride]]
    return [dataset[int(index)] for index in chosen]


def accuracy(requests: dict, items: list) -> dict[str, dict[str, float]]:
    """Image AUROC and pixel AP (in points) of each OpenVINO variant on ``items``, variants interleaved per image."""
    import torch
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

    scores: dict[str, list[float]] = defaultdict(list)
    maps: dict[str, list[torch.Tensor]] = defaultdict(list)
    for item in items:
        image = item.image.unsqueeze(0).numpy()
        for variant, request in requests.items():
            outputs = request.infer({0: image})
            scores[variant].append(float(np.asarray(outputs["pred_score"]).reshape(-1)[0]))
            maps[variant].append(torch.from_numpy(np.asarray(outputs["anomaly_map"]).reshape(-1).copy()))
    labels = torch.tensor([int(item.gt_label) for item in items])
    masks = torch.cat([item.gt_mask.reshape(-1).int() for item in items])
    result = {}
    for variant in requests:
        auroc = BinaryAUROC()(torch.tensor(scores[variant]), labels)
        pixel_ap = BinaryAveragePrecision()(torch.cat(maps[variant]), masks)
        result[variant] = {"image_auroc": 100 * float(auroc), "pixel_ap": 100 * float(pixel_ap)}
    return result


def perf_profile(core, paths: dict[str, Path], size: int, threads: int, image: np.ndarray, top: int = 8) -> None:
    """Print where each OpenVINO variant spends its time: per-layer perf counters summed by (type, kernel)."""
    for variant, path in paths.items():
        request = compile_ov(core, path, size, threads, "LATENCY", "f32", perf=True).create_infer_request()
        request.infer({0: image})
        totals: dict[tuple[str, str], float] = defaultdict(float)
        runs = 3
        for _ in range(runs):
            request.infer({0: image})
            for info in request.profiling_info:
                totals[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1000 / runs
        total = sum(totals.values())
        print(f"  OpenVINO {variant}: {total:.1f} ms in layers; top layer types (type / kernel: ms, share):")
        for (node_type, exec_type), ms in sorted(totals.items(), key=lambda item: -item[1])[:top]:
            print(f"    {node_type:<22} {exec_type:<28} {ms:9.1f} ms {100 * ms / total:5.1f} %")


def raw_parity(name: str, model, size: int, scratch: Path, items: list, native_bf16: bool) -> dict[str, float | str]:
    """Largest raw anomaly-map / score differences from torch at f32 and bf16 (emulated where the CPU has none)."""
    import openvino as ov
    import torch

    from anomalib_anogen.deploy import check_parity, emulate_bf16, export_raw

    raw_xml = export_raw(model, scratch / f"{name}_raw", (size, size))
    images = [torch.as_tensor(item.image).unsqueeze(0) for item in items]
    f32 = check_parity(model, raw_xml, images, precision="f32")
    if native_bf16:
        bf16, label = check_parity(model, raw_xml, images, precision="bf16"), "bf16"
    else:
        bf16, label = check_parity(model, emulate_bf16(ov.Core().read_model(raw_xml)), images), "bf16_emulated"
    print(f"[{name}] raw parity: {f32}\n[{name}] raw parity ({label}): {bf16}", flush=True)
    return {
        f"{name}_raw_map_range": f32.map_range,
        f"{name}_f32_vs_torch_raw_map_diff": f32.max_map_difference,
        f"{name}_f32_vs_torch_raw_score_diff": f32.max_score_difference,
        f"{name}_{label}_vs_torch_raw_map_diff": bf16.max_map_difference,
        f"{name}_{label}_vs_torch_raw_score_diff": bf16.max_score_difference,
    }


def bench(name: str, args, size: int, scratch: Path, items: list) -> dict[str, float | int | str]:
    """All measurements for one model; keys are prefixed with the model name."""
    import openvino as ov

    from anomalib_anogen.deploy import compiled_precision, cpu_info
    from anomalib_anogen.deploy.check import throughput

    started = time.perf_counter()
    model, weights = build(name, args, size)
    results: dict[str, float | int | str] = {f"{name}_weights": weights}
    print(f"[{name}] weights: {weights}", flush=True)
    if not checkpoint_of(name, args):
        results[f"{name}_val_images_for_postprocessing"] = train(name, model, args, size, scratch)
        results[f"{name}_train_s"] = time.perf_counter() - started
        print(f"[{name}] trained in {results[f'{name}_train_s']:.0f} s", flush=True)
    model.eval()
    paths, export_seconds, calibrated = export(model, size, scratch / name, args.calib_images)
    results[f"{name}_int8_calibration_images_normal_train"] = calibrated
    for variant, seconds in export_seconds.items():
        results[f"{name}_export_s_{variant}"] = seconds
    print(f"[{name}] exported: {', '.join(f'{v} {s:.0f} s' for v, s in export_seconds.items())}", flush=True)

    core = ov.Core()
    native_bf16 = cpu_info().native_bf16
    variants = [variant for variant in VARIANTS if variant != "bf16" or native_bf16]
    if not native_bf16:
        results[f"{name}_ov_bf16"] = "not supported by this CPU (see cpu_flags)"
    compiled = {
        variant: compile_ov(core, paths[IR_OF[variant]], size, args.threads, "LATENCY", PRECISION_OF[variant])
        for variant in variants
    }
    for variant, compiled_model in compiled.items():
        results[f"{name}_ov_{variant}_ran_in"] = compiled_precision(compiled_model)
    requests = {variant: model_.create_infer_request() for variant, model_ in compiled.items()}
    image = items[-1].image.unsqueeze(0).numpy()  # a real test image (an anomalous one)
    results |= raw_parity(name, model, size, scratch, items[-args.parity_images :], native_bf16)

    times = latency(model, requests, image, args.warmup, args.runs)
    torch_ms = 1000 * statistics.median(times["torch"])
    results[f"{name}_torch_latency_ms"] = torch_ms
    for variant in variants:
        results[f"{name}_ov_{variant}_latency_ms"] = 1000 * statistics.median(times[variant])
    for variant in variants:
        results[f"{name}_ov_{variant}_over_torch"] = results[f"{name}_ov_{variant}_latency_ms"] / torch_ms
    for label, values in times.items():
        label_ = label if label == "torch" else f"ov_{label}"
        results[f"{name}_{label_}_seq_images_per_s"] = len(values) / sum(values)
    if args.async_images:
        async_compiled = {
            v: compile_ov(core, paths[IR_OF[v]], size, args.threads, "THROUGHPUT", PRECISION_OF[v]) for v in variants
        }
        for variant, rate in throughput(async_compiled, image, args.async_images, rounds=2).items():
            results[f"{name}_ov_{variant}_async_images_per_s"] = rate
        del async_compiled
    print(f"[{name}] latency done", flush=True)

    metrics = accuracy(requests, items)
    for variant in variants:
        results[f"{name}_ov_{variant}_image_auroc"] = metrics[variant]["image_auroc"]
        results[f"{name}_ov_{variant}_pixel_ap"] = metrics[variant]["pixel_ap"]
    for variant in variants[1:]:
        for metric in ("image_auroc", "pixel_ap"):
            delta = metrics[variant][metric] - metrics["fp32"][metric]
            results[f"{name}_{variant}_minus_fp32_{metric}_pts"] = delta

    fp32_ratio = results[f"{name}_ov_fp32_over_torch"]
    int8_ratio = results[f"{name}_ov_int8_over_torch"]
    ap_loss = -results[f"{name}_int8_minus_fp32_pixel_ap_pts"]
    results[f"{name}_target_fp32_le_{FP32_TARGET}x"] = "met" if fp32_ratio <= FP32_TARGET else "MISSED"
    results[f"{name}_target_int8_le_{INT8_TARGET}x"] = "met" if int8_ratio <= INT8_TARGET else "MISSED"
    results[f"{name}_target_int8_ap_loss_le_1pt"] = "met" if ap_loss <= INT8_MAX_PIXEL_AP_LOSS else "MISSED"
    results[f"{name}_total_s"] = time.perf_counter() - started
    if args.perf:
        print(f"[{name}] OpenVINO per-layer-type time at batch 1, {args.threads} threads:")
        perf_profile(core, paths, size, args.threads, image)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the table."""
    parser_ = parser(__doc__)
    parser_.add_argument(
        "--models",
        nargs="+",
        choices=("draem", "draem_small", "destseg"),
        help="default: all three; with --smoke only draem (both draem and destseg take ~90 s, mostly the ONNX traces)",
    )
    parser_.add_argument("--image_size", type=int, default=256)
    parser_.add_argument("--threads", type=int, default=None, help="torch and OpenVINO threads (default: torch's)")
    parser_.add_argument("--warmup", type=int, default=1, help="untimed calls per variant before timing")
    parser_.add_argument("--runs", type=int, default=5, help="timed batch-1 calls per variant (median)")
    parser_.add_argument("--async_images", type=int, default=4, help="images per variant, THROUGHPUT hint; 0: skip")
    parser_.add_argument("--calib_images", type=int, default=16, help="normal train images for INT8 calibration")
    parser_.add_argument(
        "--test_stride",
        type=int,
        default=None,
        help="evaluate every Nth test image of each label (default: 3 for DraemWeak, ~4 s per OpenVINO call at "
        "full width here; 1 for DestsegWeak; 1 = all 74)",
    )
    parser_.add_argument("--draem_ckpt", type=Path, help="DraemWeak Lightning checkpoint (default: train briefly)")
    parser_.add_argument("--destseg_ckpt", type=Path, help="DestsegWeak Lightning checkpoint (default: train briefly)")
    parser_.add_argument("--destseg_teacher", type=Path, help="local ImageNet resnet18 weights (default: random)")
    parser_.add_argument("--train_steps", type=int, default=3, help="DraemWeak training steps without a checkpoint")
    parser_.add_argument("--batch_size", type=int, default=2, help="DraemWeak training batch")
    parser_.add_argument("--destseg_steps", type=int, default=8, help="DestsegWeak steps (half student, half seg.)")
    parser_.add_argument("--destseg_batch_size", type=int, default=4, help="DestsegWeak training batch")
    parser_.add_argument("--destseg_top_k", type=int, default=100, help="DestsegWeak's T (image score: top-T mean)")
    parser_.add_argument("--val_ratio", type=float, default=0.1, help="share of test labels validated for stats")
    add_widths(parser_)
    parser_.add_argument(
        "--small_widths",
        type=int,
        nargs=2,
        default=(64, 32),
        metavar=("RECONSTRUCTIVE", "DISCRIMINATIVE"),
        help="DraemWeak widths of the draem_small row (default 64 32)",
    )
    parser_.add_argument("--parity_images", type=int, default=4, help="test images for the raw-output parity")
    parser_.add_argument("--perf", action="store_true", help="print OpenVINO per-layer-type times")
    args = parse(parser_, argv, SMOKE)
    if args.smoke:
        args.test_stride = args.test_stride or 12
    args.models = args.models or (["draem"] if args.smoke else ["draem", "draem_small", "destseg"])

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    json_path = args.json.resolve() if args.json else None
    if args.draem_ckpt:
        args.draem_ckpt = args.draem_ckpt.resolve()
    if args.destseg_ckpt:
        args.destseg_ckpt = args.destseg_ckpt.resolve()
    if args.destseg_teacher:
        args.destseg_teacher = args.destseg_teacher.resolve()
    quiet("anomalib", "lightning", "lightning.pytorch", "nncf", level=logging.ERROR)

    from lightning.pytorch import seed_everything

    size = args.image_size
    started = time.perf_counter()
    from anomalib_anogen.deploy import cpu_info

    info = cpu_info()
    results: dict[str, float | int | str] = {
        "cpu": info.name,
        "cpu_flags": " ".join(info.flags) or "unknown",
        "ov_default_precision": info.default_precision,
        "ov_native_bf16": str(info.native_bf16),
        "image_size": size,
        "threads": args.threads,
        "batch": 1,
    }
    results["load_avg_1min_start"] = os.getloadavg()[0]  # other processes slow torch's OpenMP far more than OV
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as scratch_:
        scratch = Path(scratch_)
        for name in args.models:
            seed_everything(0, verbose=False)
            stride = args.test_stride or (3 if name == "draem" else 1)
            items = test_items(size, stride)
            labels = [int(item.gt_label) for item in items]
            results[f"{name}_test_images"] = f"{labels.count(0)}+{labels.count(1)} anom"
            results |= bench(name, args, size, scratch, items)
    results["load_avg_1min_end"] = os.getloadavg()[0]
    results["wall_s"] = time.perf_counter() - started
    trained = [name for name in args.models if not checkpoint_of(name, args)]
    if trained:
        print(
            f"NOTE: {', '.join(trained)} weights are only briefly trained here: absolute AUROC/AP mean nothing, "
            "only the bf16/FP16/INT8 minus FP32 deltas do."
        )
    report(results, json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
