"""Runs on real MVTec AD bottle through anomalib's ``Engine``: what bench_accuracy and bench_defaults measure with.

A run is one row (a model and its settings) and one seed (``train_and_test``), on a schedule for the device (CPU:
reduced, GPU: the paper's, ``--smoke``: tiny; ``prepare``), optionally fitted to ``--max_minutes`` by a timed
probe; with learning-curve points where asked. Finished runs are kept per (row, seed) in
``--workdir``/results.json and taken from there on a rerun with the same settings (``run_rows``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import (
    CATEGORY,
    DRAEM_WIDTHS,
    DTD,
    MVTEC,
    REPO,
    SMOKE_WIDTHS,
    add_device,
    add_widths,
    make_paste_bank,
    median_seconds,
    parser,
    pick_device,
    quiet,
    widths,
)
from _training import DRAEM_LR, AnomalibDraem, Trainee, load_batch

TRAIN_IMAGES = 209  # bottle/train/good

# Evaluator metric name -> column name.
METRICS = {
    "image_AUROC": "image AUROC",
    "image_AUPR": "image AP",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AUPR": "pixel AP",
    "pixel_AUPRO": "pixel PRO",
}

PAPER = {"draem_epochs": 700, "draem_lr": DRAEM_LR, "destseg_steps": 5000, "destseg_student_steps": 1000}
CPU_DEFAULTS = {
    "image_size": 128,
    "steps": 200,
    "reconstructive_width": 16,
    "discriminative_width": 8,
    "learning_rate": 1e-3,
    "destseg_steps": 500,
    "destseg_student_steps": 100,
    "workers": 1,
}
GPU_DEFAULTS = {
    "image_size": 256,
    "steps": PAPER["draem_epochs"] * math.ceil(TRAIN_IMAGES / 8),  # batch 8
    "reconstructive_width": DRAEM_WIDTHS[0],
    "discriminative_width": DRAEM_WIDTHS[1],
    "learning_rate": PAPER["draem_lr"],
    "destseg_steps": PAPER["destseg_steps"],
    "destseg_student_steps": PAPER["destseg_student_steps"],
    "workers": 8,
}
SMOKE = {
    "image_size": 64,
    "steps": 2,
    "batch_size": 2,
    "learning_rate": 1e-3,
    "destseg_steps": 2,
    "destseg_student_steps": 1,
    "paste_images": 4,
    **SMOKE_WIDTHS,
    "seeds": [0],
    "threads": 1,
    "workers": 0,
}

# ----------------------------------------------------------------------------------------- schedule


def schedule_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options of a bottle training benchmark; ``None`` defaults are filled in per device by ``prepare``."""
    p = parser(doc)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--steps", type=int, help="DRAEM-row training steps (CPU: 200; GPU: 700 epochs = 18900)")
    p.add_argument("--image_size", type=int, help="square input side, a multiple of 32 (CPU: 128; GPU: 256)")
    p.add_argument("--batch_size", type=int, default=8, help="training batch (DRAEM: 8)")
    add_widths(p, defaults=None)  # CPU: 16/8; GPU: DRAEM's
    p.add_argument("--learning_rate", type=float, help="Adam lr of every DRAEM row (CPU: 1e-3; DRAEM: 1e-4)")
    p.add_argument("--destseg_steps", type=int, help="DeSTSeg steps (CPU: 500; DeSTSeg: 5000)")
    p.add_argument("--destseg_student_steps", type=int, help="of which student phase (CPU: 100; DeSTSeg: 1000)")
    add_device(p)
    p.add_argument("--max_minutes", type=float, help="scale the steps down so that all runs fit (timed probe)")
    p.add_argument("--workers", type=int, help="DataLoader workers for images and for the bank (CPU: 1; GPU: 8)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 when the load average shows other jobs on the CPU - 2 threads then "
        "run several times slower - else torch's default)",
    )
    p.add_argument("--workdir", type=Path, help="results.json and banks (default runs/<script name>)")
    p.add_argument("--paste_images", type=int, default=TRAIN_IMAGES, help="normal images of the paste bank")
    p.add_argument("--paste_per_image", type=int, default=1, help="paste anomalies per image and defect type")
    p.add_argument("--destseg_teacher", help="local ImageNet ResNet-18 weights for the DeSTSeg teacher")
    return p


def fill_schedule(args: Any, device: str, draem_schedule: str | None = None) -> list[str]:
    """Fill unset options with the device's defaults (smoke values are set already); return notes to print.

    ``draem_schedule``: how the DRAEM rows' length is given, where it is not ``--steps`` at ``--batch_size``.
    """
    if args.smoke:
        return [
            "SMOKE run: 64 px, tiny networks, 2 steps, 1 seed, random DeSTSeg teacher, tiny diffusion model; "
            "the numbers mean nothing"
        ]
    defaults = GPU_DEFAULTS if device == "cuda" else CPU_DEFAULTS
    if device == "cuda" and args.steps is None:  # 700 epochs at the batch size given
        args.steps = PAPER["draem_epochs"] * math.ceil(TRAIN_IMAGES / args.batch_size)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    full = (
        args.image_size >= 256
        and (args.reconstructive_width, args.discriminative_width) == DRAEM_WIDTHS
        and args.learning_rate == PAPER["draem_lr"]
        and args.steps >= PAPER["draem_epochs"] * math.ceil(TRAIN_IMAGES / args.batch_size)
    )
    if full:
        return [f"paper schedule: DRAEM {args.steps} steps ({PAPER['draem_epochs']} epochs), full widths"]
    draem = draem_schedule or f"{args.steps} DRAEM steps = {args.steps * args.batch_size / TRAIN_IMAGES:.1f} epochs"
    destseg = (
        f"; DeSTSeg {args.destseg_steps} steps ({args.destseg_student_steps} student; paper: 5000/1000)"
        if args.destseg_teacher
        else ""
    )
    return [
        f"REDUCED schedule (not the paper's): {draem} (paper: {PAPER['draem_epochs']}), "
        f"{args.image_size} px (paper: 256), DRAEM widths {args.reconstructive_width}/"
        f"{args.discriminative_width} (paper: 128/64) for Draem and DraemWeak alike, Adam lr "
        f"{args.learning_rate:g} (paper: 1e-4){destseg}"
    ]


def prepare(args: Any, draem_schedule: str | None = None) -> tuple[str, list[str]]:
    """Quiet logs, the device, the schedule (its notes) and the torch threads of a run; checks the image size."""
    quiet("anomalib", "lightning.pytorch")
    device = pick_device(args.device)
    notes = fill_schedule(args, device, draem_schedule)
    import torch

    if args.threads is None and device == "cpu" and os.getloadavg()[0] > 1.0:
        args.threads = 1
        notes.append(f"load average {os.getloadavg()[0]:.1f}: other jobs share the CPU, so 1 torch thread")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_size % 32:
        msg = f"--image_size must be a multiple of 32 (DRAEM's U-Nets), got {args.image_size}"
        raise SystemExit(msg)
    return device, notes


def print_setup(args: Any, device: str, workdir: Path, lines: list[str], rows: list[dict], batches: str, steps: str):
    """The run's device, data, notes and schedule, before any training."""
    import torch

    print(f"device: {device}; data: {MVTEC / CATEGORY}; DTD: {DTD}; workdir: {workdir}")
    for line in lines:
        print(line)
    print(
        f"schedule: seeds {args.seeds}, {args.image_size} px, batch {batches}, DRAEM rows {steps} "
        f"steps, widths {args.reconstructive_width}/{args.discriminative_width}, lr {args.learning_rate:g}, "
        f"{torch.get_num_threads()} torch thread(s), {args.workers} loader worker(s)"
        + (
            f"; DeSTSeg rows {args.destseg_steps} steps ({args.destseg_student_steps} student)"
            if any(row["kind"].startswith("destseg") for row in rows)
            else ""
        )
    )


def schedule_label(args: Any, notes: list[str]) -> str:
    """smoke, reduced, paper, or the share of the paper's schedule that ``--max_minutes`` allowed."""
    if args.smoke:
        return "smoke"
    if notes[0].startswith("REDUCED"):
        return "reduced"
    share = getattr(args, "schedule_share", 1.0)
    return "paper" if share >= 1.0 else f"paper x {share:.3f} (--max_minutes)"


def schedule_summary(args: Any, device: str, notes: list[str], batch_size: Any, draem_steps: Any) -> dict[str, Any]:
    """The schedule's entries of the report."""
    summary: dict[str, Any] = {
        "device": device,
        "schedule": schedule_label(args, notes),
        "seeds": " ".join(map(str, args.seeds)),
        "image_size": args.image_size,
        "batch_size": batch_size,
        "draem_steps": draem_steps,
        "draem_widths": f"{args.reconstructive_width}/{args.discriminative_width}",
        "learning_rate": args.learning_rate,
    }
    if args.destseg_teacher:
        summary |= {"destseg_steps": args.destseg_steps, "destseg_student_steps": args.destseg_student_steps}
    return summary


def probe_seconds_per_step(args: Any, device: str, kind: str, steps: int = 3) -> float:
    """Median time of one training step (synthesis, forward, backward, optimiser) of a DRAEM or DeSTSeg row."""
    from anomalib_anogen.models import DestsegWeak, DraemWeak

    if kind == "draem":
        trainee = Trainee(DraemWeak(dtd_dir=DTD, **widths(args)).to(device))
    else:
        model = DestsegWeak(pretrained_weights="random", dtd_dir=DTD, steps=2, de_st_steps=1).to(device)
        trainee = Trainee(model, phase="segmentation")
    batch = load_batch(args.image_size, args.batch_size, device)
    return median_seconds(lambda: trainee.step(batch), steps, warmup=1, device=device)


def fit_to_budget(args: Any, device: str, rows: list[dict[str, Any]]) -> list[str]:
    """With ``--max_minutes``, scale the steps of every row by one factor so that all runs are estimated to fit.

    A smoke run probes too (its budget, 10 minutes, leaves the steps alone). Returns the line saying so, if any.
    """
    if args.max_minutes is None and not args.smoke:
        return []
    minutes = args.max_minutes or 10.0
    draem_rate = probe_seconds_per_step(args, device, "draem", steps=1 if args.smoke else 3)
    destseg_rows = sum(row["kind"].startswith("destseg") for row in rows)
    destseg_rate = probe_seconds_per_step(args, device, "destseg", steps=1 if args.smoke else 3) if destseg_rows else 0
    seeds = len(args.seeds)
    draem_rows = len(rows) - destseg_rows
    estimate = seeds * (draem_rows * args.steps * draem_rate + destseg_rows * args.destseg_steps * destseg_rate)
    estimate *= 1.15  # validation, test, start-up
    factor = min(1.0, minutes * 60 / estimate) if estimate else 1.0
    args.schedule_share = factor
    if factor < 1.0:
        args.steps = max(2, int(args.steps * factor))
        args.destseg_steps = max(2, int(args.destseg_steps * factor))
        args.destseg_student_steps = max(1, min(args.destseg_steps - 1, int(args.destseg_student_steps * factor)))
        for row in rows:
            row["steps"] = args.destseg_steps if row["kind"].startswith("destseg") else args.steps
    return [
        f"--max_minutes {minutes:g}: probe {draem_rate:.3f} s/DRAEM step"
        + (f", {destseg_rate:.3f} s/DeSTSeg step" if destseg_rows else "")
        + f"; estimated {estimate / 60:.1f} min for the full schedule, running {100 * factor:.1f}% of it "
        f"({args.steps} DRAEM steps, {args.destseg_steps} DeSTSeg steps)"
    ]


# ----------------------------------------------------------------------------------------- models


def paste_bank(workdir: Path, images: int, per_image: int) -> Path:
    """The paste bank from the 3-shot support set, made once and kept in ``workdir`` (an interrupted one is resumed)."""
    bank = workdir / f"paste_bank_{images}x{per_image}"
    started = time.perf_counter()
    make_paste_bank(bank, limit=images, per_image=per_image, resume=True)
    print(f"paste bank: {images} normal images x {per_image} per defect type in {time.perf_counter() - started:.0f} s")
    return bank


def draem_network(args: Any) -> Any:
    """The DRAEM sub-networks at the schedule's widths: ``DraemWeakModel`` is ``DraemModel`` with widths."""
    from anomalib_anogen.models.image.draem_weak.torch_model import DraemWeakModel

    return DraemWeakModel(args.reconstructive_width, args.discriminative_width)


def build_model(row: dict[str, Any], args: Any, seed: int) -> Any:
    """The LightningModule of one row, with the seed's initial DRAEM weights where it is a DRAEM.

    Row keys: ``kind`` (draem, draem_weak, destseg, destseg_weak), ``generator`` and ``bank`` (the weak models),
    ``beta`` (DraemWeak), ``every`` (learning-curve points at this interval), ``adjust`` (a function given the
    model, to change it before training).
    """
    from lightning.pytorch import seed_everything

    from anomalib_anogen.metrics import anogen_evaluator
    from anomalib_anogen.models import Destseg, DestsegWeak, DraemWeak

    size = (args.image_size, args.image_size)
    curves = args.eval_every or "every" in row
    common = {"evaluator": curve_evaluator() if curves else anogen_evaluator(), "visualizer": False}
    kind = row["kind"]
    if kind == "draem":
        model = AnomalibDraem(
            **widths(args),
            learning_rate=args.learning_rate,
            dtd_dir=DTD,
            pre_processor=AnomalibDraem.configure_pre_processor(size),
            **common,
        )
    elif kind == "draem_weak":
        model = DraemWeak(
            dtd_dir=DTD,
            generator=row["generator"],
            bank_dir=row.get("bank"),
            **widths(args),
            learning_rate=args.learning_rate,
            pre_processor=DraemWeak.configure_pre_processor(size),
            **({"beta": row["beta"]} if "beta" in row else {}),
            **common,
        )
    else:
        cls = Destseg if kind == "destseg" else DestsegWeak
        extra = {"generator": row["generator"], "bank_dir": row.get("bank")} if kind == "destseg_weak" else {}
        model = cls(
            pretrained_weights=args.destseg_teacher,
            dtd_dir=DTD,
            steps=args.destseg_steps,
            de_st_steps=args.destseg_student_steps,
            pre_processor=cls.configure_pre_processor(size),
            **extra,
            **common,
        )
    if hasattr(model, "generator_spec"):
        model.generator_spec = model.generator_spec.with_options(num_workers=args.workers)
    if "adjust" in row:
        row["adjust"](model)
    if kind in {"draem", "draem_weak"}:  # the same initial network for every DRAEM row of a seed
        seed_everything(seed, workers=True)
        model.model.load_state_dict(draem_network(args).state_dict())
    return model


def curve_evaluator() -> Any:
    """The plugin's test metrics, plus the threshold-free ones on every validation (the learning-curve points).

    anomalib's MVTecAD validates on its test split, so a validation is a test of the model at that step. AUROC,
    AP and PRO do not depend on the post-processor's normalisation, which is only final after the last one.
    """
    from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator

    from anomalib_anogen.metrics import anogen_evaluator

    val_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]
    return Evaluator(val_metrics=val_metrics, test_metrics=list(anogen_evaluator().test_metrics))


def curve_recorder(pools: tuple[int, ...] = ()) -> Any:
    """A Lightning callback that keeps the validation metrics at each evaluated step (``.points``).

    ``pools``: also the image AUROC of the anomaly maps scored by ``pooled_max`` (``DraemWeakModel``'s score) at
    each of these sizes (``image_AUROC_pool{size}``), from the same maps as the evaluator's metrics: no other
    evaluation.
    """
    import torch
    from lightning.pytorch.callbacks import Callback
    from torchmetrics.functional.classification import binary_auroc

    from anomalib_anogen.models.image.draem_weak.torch_model import pooled_max  # DraemWeakModel's own score

    class CurveRecorder(Callback):
        def __init__(self) -> None:
            self.points: list[dict[str, float]] = []
            self.labels: list[torch.Tensor] = []
            self.scores: dict[int, list[torch.Tensor]] = {size: [] for size in pools}

        def on_validation_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any
        ) -> None:
            if not pools or trainer.sanity_checking:
                return
            self.labels.append(outputs.gt_label.detach().cpu().long())
            for size in pools:
                self.scores[size].append(pooled_max(outputs.anomaly_map.detach().cpu(), size))

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            found = trainer.callback_metrics
            point = {name: float(found[name]) for name in METRICS if name in found}
            if self.labels:
                labels = torch.cat(self.labels)
                for size in pools:
                    point[f"image_AUROC_pool{size}"] = float(binary_auroc(torch.cat(self.scores[size]), labels))
                    self.scores[size] = []
                self.labels = []
            if point and not trainer.sanity_checking:
                self.points.append({"step": int(trainer.global_step), **point})

    return CurveRecorder()


# ----------------------------------------------------------------------------------------- runs


@contextlib.contextmanager
def workspace(args: Any, name: str) -> Iterator[Path]:
    """``--workdir``, made if missing: by default runs/``name``, for a smoke run a temporary folder."""
    with tempfile.TemporaryDirectory(prefix=f"{name}_work_") as scratch:
        workdir = args.workdir or (Path(scratch) if args.smoke else REPO / "runs" / name)
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir


def bank_identity(bank: Path | None) -> str | None:
    """A bank's settings hash (what it was made from and how), so a rerun never mixes two banks."""
    if bank is None:
        return None
    meta = json.loads((Path(bank) / "bank.json").read_text())
    return f"{meta.get('settings_sha256')}/{meta.get('records')}"


def run_key(row: dict[str, Any], args: Any, device: str, seed: int) -> str:
    """Everything that changes a run's result."""
    settings = {
        "row": row["name"],
        "kind": row["kind"],
        "generator": row.get("generator"),
        "bank": bank_identity(row.get("bank")),
        "seed": seed,
        "steps": row["steps"],
        "image_size": args.image_size,
        "batch_size": row.get("batch_size", args.batch_size),
        "device": device,
        "smoke": args.smoke,
    }
    if args.eval_every:
        settings["eval_every"] = args.eval_every
    for name in ("every", "beta", "mix", "pools"):  # bench_defaults' rows
        if name in row:
            settings[name] = row[name]
    if row["kind"].startswith("draem"):
        settings |= {
            "widths": [args.reconstructive_width, args.discriminative_width],
            "learning_rate": args.learning_rate,
        }
    else:
        settings |= {"student_steps": args.destseg_student_steps, "teacher": str(args.destseg_teacher)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def train_and_test(row: dict[str, Any], args: Any, device: str, seed: int) -> dict[str, Any]:
    """Fit one model through anomalib's Engine and return its test metrics, learning-curve points and times."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(seed, workers=True)
    model = build_model(row, args, seed)
    seed_everything(seed, workers=True)  # the same data order and synthesis stream for every row
    datamodule = MVTecAD(
        root=MVTEC,
        category=CATEGORY,
        train_batch_size=row.get("batch_size", args.batch_size),
        eval_batch_size=32,
        num_workers=args.workers,
        seed=seed,
    )
    recorder = curve_recorder(tuple(row.get("pools", ()))) if args.eval_every or "every" in row else None
    every = row.get("every") or (min(args.eval_every, row["steps"]) if args.eval_every else row["steps"])
    with tempfile.TemporaryDirectory(prefix="bench_run_") as scratch:
        engine = Engine(
            default_root_dir=scratch,
            accelerator=device,
            devices=1,
            logger=False,
            max_steps=row["steps"],
            check_val_every_n_epoch=None,  # validate after the last step (it sets the post-processor's statistics;
            val_check_interval=every,  # val = test split here, anomalib's default) and, for curves, every N steps
            num_sanity_val_steps=0,
            callbacks=[recorder] if recorder else None,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        started = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        trained = time.perf_counter()
        metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        tested = time.perf_counter()
    missing = [name for name in METRICS if name not in metrics]
    if missing:
        msg = f"{row['name']}: the evaluator did not report {missing}; it reported {sorted(metrics)}"
        raise RuntimeError(msg)
    steps_done = int(engine.trainer.global_step)
    curve = recorder.points if recorder else []
    if recorder and (not curve or curve[-1]["step"] != steps_done):  # the end point is the test itself
        curve.append({"step": steps_done, **{name: float(metrics[name]) for name in METRICS}})
    return {
        "metrics": {name: float(metrics[name]) for name in METRICS},
        "curve": curve,
        "steps_done": steps_done,
        "train_s": round(trained - started, 1),
        "test_s": round(tested - trained, 1),
    }


def run_rows(
    rows: list[dict[str, Any]],
    args: Any,
    device: str,
    workdir: Path,
    started: float,
    show: Callable[[dict[str, Any]], str],
) -> dict[str, list[dict[str, Any]]]:
    """Every row for every seed (seed by seed), each printed with ``show(run)``; returns the runs per row name.

    Resumable: a finished (row, seed) is stored in ``workdir``/results.json under a key of every setting that
    affects it (``run_key``) and taken from there on a rerun with the same settings.
    """
    store = workdir / "results.json"
    done = json.loads(store.read_text()) if store.is_file() else {}
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        for row in rows:
            key = run_key(row, args, device, seed)
            if key not in done:
                print(f"[{time.perf_counter() - started:7.0f} s] {row['name']}, seed {seed}: training", flush=True)
                done[key] = {"model": row["name"], "seed": seed, **train_and_test(row, args, device, seed)}
                store.write_text(json.dumps(done, indent=1) + "\n")
            run = done[key]
            results.setdefault(row["name"], []).append(run)
            print(f"  {row['name']}, seed {seed} (train {run['train_s']} s, test {run['test_s']} s): {show(run)}")
    return results


def run_totals(results: dict[str, list[dict[str, Any]]], started: float) -> dict[str, float]:
    """The report's time entries: training and testing over all runs, and this invocation's wall time."""
    runs = [run for row in results.values() for run in row]
    return {
        "train_and_test_s_all_runs": round(sum(run["train_s"] + run["test_s"] for run in runs), 1),
        "wall_time_s": round(time.perf_counter() - started, 1),  # this invocation (resumed runs: ~0)
    }
