"""Accuracy on real MVTec AD bottle: anomalib's Draem vs DraemWeak with an anomaly bank (and DeSTSeg).

Every model trains with the same seeds, steps, image size and batch size through anomalib's
``Engine`` on ``../shared/data/MVTecAD`` (category bottle; the 9 support anomalies are not in its
test set) and is tested with the plugin's ``Evaluator`` (anomalib's AUROC, AUPR, AUPRO). Rows:

1. ``Draem``: anomalib's stock model (Perlin + the local DTD subset, its own loss).
2. ``DraemWeak perlin``: same generator, DraemWeak's loss, no bank (ablation of the loss).
3. ``DraemWeak + paste bank``: generator ``anogen`` on a bank that ``anogen generate --backend paste``
   makes from the 3-shot support set (real support anomalies pasted into normal training images).
4. ``DraemWeak + diffusion bank``: only with ``--diffusion_bank`` or ``--backbone`` + ``--embeddings``
   (real local diffusers/LDM weights); otherwise skipped, with the reason.
5. ``Destseg`` and ``DestsegWeak + paste bank`` (+ diffusion bank): only with ``--destseg_teacher``
   (local ImageNet ResNet-18 weights); otherwise skipped (a random teacher is not DeSTSeg).

Table: mean and sample standard deviation (n - 1) over the seeds of image AUROC/AP and pixel
AUROC/AP/PRO, and the target check: pixel AP of ``DraemWeak + paste bank`` minus that of ``Draem``
against the larger of the two standard deviations.

Schedules. CPU (default there): a reduced schedule, printed as such - 128 px, DRAEM widths 16/8
instead of 128/64 (anomalib's ``Draem`` gets the same reduced network: its ``.model`` is swapped for
anomalib's DRAEM sub-networks at those widths), Adam lr 1e-3 for every DRAEM row, 200 steps of
batch 8 (7.7 epochs); about 1.4 s a step on one busy core: 3 rows x 3 seeds in under an hour.
GPU: the paper's schedule (DRAEM 700 epochs = 18,900 steps of batch 8 on bottle's 209 images,
full widths, lr 1e-4; DeSTSeg 5,000 steps, 1,000 of them for the student), scaled down to fit
``--max_minutes`` when given (a short timed probe estimates the rate; the share run is printed).

Learning curves (``--eval_every N``): every run is also evaluated on the test set every N steps (image
AUROC/AP, pixel AUROC/AP/PRO, which need no threshold), the points are stored with the run, and ``--plot PNG``
draws pixel AP, pixel PRO and image AUROC against steps for every row (the seeds' mean, their min-max as a
band); the table then ends with each row's last point and its spread over the seeds.

Effect of each changed default (``--compare_defaults``): instead of the rows above, pairs that differ in
exactly one of the defaults this project took from the AnoGen authors' code, trained side by side with the same
seeds, initial networks and schedule, and evaluated on the test set at the end of every epoch:

- ``DraemWeak perlin, new defaults`` (beta (0.2, 1.0), batch 16, image score = maximum of the 21 x 21
  average-pooled map) against ``... beta (0.1, 1.0)`` and ``... batch 8``. Every row trains the same number of
  epochs (``--compare_epochs``; CPU: 7 = 98 steps of batch 16 or 189 of batch 8), so both batch sizes see the
  same images the same number of times, as the configs' ``max_epochs`` does; the step counts differ.
- image score pooled 21 x 21 against the raw maximum (``score_pool`` 1): no extra training, both AUROCs are
  computed from the same anomaly maps of the same evaluation (the model's own ``pred_score`` is the pooled one,
  checked against the recomputation).
- with ``--destseg_teacher`` (``random`` allowed here, and said so): ``DestsegWeak + paste bank`` with the
  authors' DeSTSeg mix (no clean bank images, DeSTSeg's per-category rotation) against the old one (half the bank
  draws the clean source image, DRAEM's rotation p 0.3 within ±90°); same batch and steps.
- ``anogen generate --keep_outside``: not measured (it changes only diffusion banks; no diffusion weights here).

Each run's value is the mean of its last 3 evaluations (to damp the in-run swings of the short schedule); a row
gives the mean over the seeds and their spread (max - min); a pair gives new minus old per seed and the mean.

Resumable: each finished (model, seed) is stored in ``--workdir``/results.json under a key of
every setting that affects it, and is skipped on a rerun with the same settings. Banks are kept in
``--workdir`` too; Engine logs and checkpoints go to a temporary folder.

    python benchmarks/bench_accuracy.py --json /tmp/bench_accuracy.json      # reduced CPU schedule
    python benchmarks/bench_accuracy.py --destseg_teacher weights/resnet18.pth --device cuda --max_minutes 25
    python benchmarks/bench_accuracy.py --eval_every 25 --plot docs/img/accuracy_curves.png   # curves, CPU
    python benchmarks/bench_accuracy.py --compare_defaults --threads 1 --json runs/compare_defaults.json
    python benchmarks/bench_accuracy.py --smoke     # seconds-scale check of every code path (random teacher)
    python benchmarks/bench_accuracy.py --smoke --compare_defaults
"""

import hashlib
import json
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import CATEGORY, DTD, MVTEC, NORMAL, REPO, SUPPORT, make_paste_bank, parser, report

TRAIN_IMAGES = 209  # bottle/train/good

# Evaluator metric name -> column name.
METRICS = {
    "image_AUROC": "image AUROC",
    "image_AUPR": "image AP",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AUPR": "pixel AP",
    "pixel_AUPRO": "pixel PRO",
}

PAPER = {"draem_epochs": 700, "draem_lr": 1e-4, "destseg_steps": 5000, "destseg_student_steps": 1000}
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
    "reconstructive_width": 128,
    "discriminative_width": 64,
    "learning_rate": PAPER["draem_lr"],
    "destseg_steps": PAPER["destseg_steps"],
    "destseg_student_steps": PAPER["destseg_student_steps"],
    "workers": 8,
}
SMOKE = {
    "image_size": 64,
    "steps": 2,
    "batch_size": 2,
    "reconstructive_width": 8,
    "discriminative_width": 4,
    "learning_rate": 1e-3,
    "destseg_steps": 2,
    "destseg_student_steps": 1,
    "paste_images": 4,
    "eval_every": 1,  # the learning-curve path too
    "seeds": [0],
    "threads": 1,
    "workers": 0,
}


# --compare_defaults: the defaults taken from the authors' code on 2026-12-07 and the ones they replaced.
NEW_BATCH, OLD_BATCH = 16, 8  # configs/draem_weak.yaml train_batch_size (A DRAEM/train.sh) / DRAEM's README
NEW_BETA, OLD_BETA = (0.2, 1.0), (0.1, 1.0)  # DraemWeak beta: DRAEM's / anomalib's Draem
NEW_POOL, OLD_POOL = 21, 1  # DraemWeak score_pool: DRAEM's and A's test code / anomalib's raw maximum
OLD_CLEAN_SHARE = 0.5  # DestsegWeak before: half the bank draws the clean source image (DRAEM's mix); now 0
LAST_EVALUATIONS = 3  # a run's value in the comparison: the mean of its last 3 evaluations


def parse_args(argv: list[str] | None) -> Any:
    """Command line; ``None`` defaults are filled in per device by ``fill_schedule``."""
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--steps", type=int, help="DRAEM-row training steps (CPU: 200; GPU: 700 epochs = 18900)")
    p.add_argument("--image_size", type=int, help="square input side, a multiple of 32 (CPU: 128; GPU: 256)")
    p.add_argument("--batch_size", type=int, default=8, help="training batch (DRAEM: 8)")
    p.add_argument("--reconstructive_width", type=int, help="DRAEM reconstructive width (CPU: 16; DRAEM: 128)")
    p.add_argument("--discriminative_width", type=int, help="DRAEM discriminative width (CPU: 8; DRAEM: 64)")
    p.add_argument("--learning_rate", type=float, help="Adam lr of every DRAEM row (CPU: 1e-3; DRAEM: 1e-4)")
    p.add_argument("--destseg_steps", type=int, help="DeSTSeg steps (CPU: 500; DeSTSeg: 5000)")
    p.add_argument("--destseg_student_steps", type=int, help="of which student phase (CPU: 100; DeSTSeg: 1000)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--max_minutes", type=float, help="scale the steps down so that all runs fit (timed probe)")
    p.add_argument("--workers", type=int, help="DataLoader workers for images and for the bank (CPU: 1; GPU: 8)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 when the load average shows other jobs on the CPU - 2 threads then "
        "run several times slower - else torch's default)",
    )
    p.add_argument("--workdir", type=Path, help="results.json and banks (default runs/bench_accuracy)")
    p.add_argument("--paste_images", type=int, default=TRAIN_IMAGES, help="normal images of the paste bank")
    p.add_argument("--paste_per_image", type=int, default=1, help="paste anomalies per image and defect type")
    p.add_argument("--diffusion_bank", type=Path, help="an existing bank made with the diffusion backend")
    p.add_argument("--backbone", help="local diffusers/LDM model: make a diffusion bank with --embeddings")
    p.add_argument("--embeddings", type=Path, help="anogen embeddings for --backbone (anogen learn/import-embedding)")
    p.add_argument("--diffusion_images", type=int, help="normal images of the diffusion bank (default: all)")
    p.add_argument("--ddim_steps", type=int, default=50, help="DDIM steps of the diffusion bank (paper: 50)")
    p.add_argument("--destseg_teacher", help="local ImageNet ResNet-18 weights for the DeSTSeg teacher")
    p.add_argument(
        "--eval_every",
        type=int,
        help="learning curves: evaluate image AUROC/AP and pixel AUROC/AP/PRO on the test set every N training "
        "steps (and at the end) and record them per run",
    )
    p.add_argument("--plot", type=Path, help="with --eval_every: write the curves of every row as one PNG here")
    p.add_argument(
        "--compare_defaults",
        action="store_true",
        help="train pairs that differ in one changed default (DraemWeak beta, batch, score_pool; DestsegWeak mix "
        "with --destseg_teacher) and print the effect of each, new minus old per seed (see above)",
    )
    p.add_argument(
        "--compare_epochs",
        type=int,
        help="--compare_defaults: training epochs of every DRAEM row, the same for batch 16 and 8 (default: --steps "
        "at --batch_size in whole epochs: CPU 7, GPU 700); evaluated at the end of each",
    )
    return p.parse_args(argv)


def fill_schedule(args: Any, device: str) -> list[str]:
    """Fill unset options with the device's (or the smoke run's) defaults; return notes to print."""
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
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
    notes = []
    full = (
        args.image_size >= 256
        and args.reconstructive_width == 128
        and args.discriminative_width == 64
        and args.learning_rate == PAPER["draem_lr"]
        and args.steps >= PAPER["draem_epochs"] * math.ceil(TRAIN_IMAGES / args.batch_size)
    )
    if not full:
        notes.append(
            "REDUCED schedule (not the paper's): "
            + (
                "DRAEM epochs as in the --compare_defaults line"  # whole epochs at two batch sizes
                if args.compare_defaults
                else f"{args.steps} DRAEM steps = {args.steps * args.batch_size / TRAIN_IMAGES:.1f} epochs"
            )
            + f" (paper: {PAPER['draem_epochs']}), "
            f"{args.image_size} px (paper: 256), DRAEM widths {args.reconstructive_width}/"
            f"{args.discriminative_width} (paper: 128/64) for Draem and DraemWeak alike, Adam lr "
            f"{args.learning_rate:g} (paper: 1e-4)"
            + (
                f"; DeSTSeg {args.destseg_steps} steps ({args.destseg_student_steps} student; paper: 5000/1000)"
                if args.destseg_teacher
                else ""
            )
        )
    else:
        notes.append(f"paper schedule: DRAEM {args.steps} steps ({PAPER['draem_epochs']} epochs), full widths")
    return notes


def pick_device(name: str) -> str:
    """``cuda`` when asked for or (``auto``) available, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# ----------------------------------------------------------------------------------------- banks


def paste_bank(workdir: Path, images: int, per_image: int) -> Path:
    """The paste bank from the 3-shot support set, made once and kept in ``workdir`` (an interrupted one is resumed)."""
    bank = workdir / f"paste_bank_{images}x{per_image}"
    started = time.perf_counter()
    make_paste_bank(bank, limit=images, per_image=per_image, resume=True)
    print(f"paste bank: {images} normal images x {per_image} per defect type in {time.perf_counter() - started:.0f} s")
    return bank


def diffusion_bank(args: Any, workdir: Path) -> tuple[Path | None, str]:
    """An existing or newly generated diffusion bank, or ``None`` and why not."""
    from anomalib_anogen.generate.command import generate

    if args.diffusion_bank:
        return args.diffusion_bank, f"diffusion bank {args.diffusion_bank}"
    if args.smoke:  # exercise the path with the built-in random-weight model: mechanics only
        from anomalib_anogen.learn.command import learn

        embeddings = workdir / "tiny_embeddings"
        if not embeddings.is_dir():
            learn(support=str(SUPPORT), output=str(embeddings), backbone="tiny", steps=2, progress=False)
        backbone, max_images, steps = "tiny", 2, 2
    elif args.backbone and args.embeddings:
        if args.backbone == "tiny":
            return None, "--backbone tiny has random weights: its bank is not a diffusion bank"
        embeddings, backbone, max_images, steps = args.embeddings, args.backbone, args.diffusion_images, args.ddim_steps
    else:
        return None, (
            "no pretrained diffusion weights on this machine (give --backbone PATH --embeddings PATH, "
            "or --diffusion_bank PATH)"
        )
    key = hashlib.sha256(json.dumps([backbone, str(embeddings), max_images, steps]).encode()).hexdigest()[:10]
    bank = workdir / f"diffusion_bank_{key}"
    if not ((bank / "bank.json").is_file() and json.loads((bank / "bank.json").read_text()).get("complete")):
        started = time.perf_counter()
        generate(
            normal=str(NORMAL),
            output=str(bank),
            embeddings=str(embeddings),
            backbone=backbone,
            per_image=1 if args.smoke else 4,
            samples_per_box=1 if args.smoke else 2,
            steps=steps,
            max_images=max_images,
            resume=bank.exists(),
            progress=False,
        )
        print(f"diffusion bank ({backbone}): made in {time.perf_counter() - started:.0f} s")
    return bank, f"diffusion bank from {backbone}" + (" (SMOKE: random weights)" if args.smoke else "")


# ----------------------------------------------------------------------------------------- models


def draem_network(args: Any) -> Any:
    """The DRAEM sub-networks at the schedule's widths: ``DraemWeakModel`` is ``DraemModel`` with widths."""
    from anomalib_anogen.models.image.draem_weak.torch_model import DraemWeakModel

    return DraemWeakModel(args.reconstructive_width, args.discriminative_width)


def adam_with_draem_milestones(module: Any, learning_rate: float) -> Callable[[], Any]:
    """The ``configure_optimizers`` of anomalib's ``Draem`` with another learning rate (it hard-codes 1e-4)."""
    import torch

    def configure_optimizers() -> Any:
        optimizer = torch.optim.Adam(params=module.model.parameters(), lr=learning_rate)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[400, 600], gamma=0.1)
        return [optimizer], [scheduler]

    return configure_optimizers


def setup_with_draem_rotation(module: Any) -> Callable[[str], None]:
    """The model's ``setup``, then DRAEM's rotation on its generator in place of DeSTSeg's (the old mix's row)."""
    from anomalib_anogen.data.generators.rotation import DRAEM_ROTATION

    setup = module.setup

    def setup_then_draem(stage: str) -> None:
        setup(stage)
        if stage == "fit":
            module.augmenter.rotation = DRAEM_ROTATION

    return setup_then_draem


def build_model(row: dict[str, Any], args: Any, seed: int) -> Any:
    """The LightningModule of one row, with the seed's initial DRAEM weights where it is a DRAEM."""
    from anomalib.models import Draem
    from lightning.pytorch import seed_everything

    from anomalib_anogen.metrics import anogen_evaluator
    from anomalib_anogen.models import Destseg, DestsegWeak, DraemWeak

    size = (args.image_size, args.image_size)
    curves = args.eval_every or args.compare_defaults
    common = {"evaluator": curve_evaluator() if curves else anogen_evaluator(), "visualizer": False}
    kind = row["kind"]
    if kind == "draem":
        model = Draem(dtd_dir=DTD, pre_processor=Draem.configure_pre_processor(size), **common)
        if (args.reconstructive_width, args.discriminative_width) != (128, 64):
            model.model = draem_network(args)
        if args.learning_rate != PAPER["draem_lr"]:
            model.configure_optimizers = adam_with_draem_milestones(model, args.learning_rate)
    elif kind == "draem_weak":
        model = DraemWeak(
            dtd_dir=DTD,
            generator=row["generator"],
            bank_dir=row.get("bank"),
            reconstructive_width=args.reconstructive_width,
            discriminative_width=args.discriminative_width,
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
    if row.get("mix") == "old":  # DestsegWeak before 2026-12-07: DRAEM's mix and rotation
        model.generator_spec = model.generator_spec.with_options(clean_share=OLD_CLEAN_SHARE)
        model.setup = setup_with_draem_rotation(model)
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


def rows_to_run(args: Any, workdir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The table's rows (with banks made) and the lines saying which rows are skipped and why."""
    paste = paste_bank(workdir, args.paste_images, args.paste_per_image)
    banks = {"paste bank": paste}
    skipped = []
    diffusion, why = diffusion_bank(args, workdir)
    if diffusion is None:
        skipped.append(f"DraemWeak/DestsegWeak + diffusion bank: skipped, {why}")
    else:
        banks["diffusion bank"] = diffusion
    rows: list[dict[str, Any]] = [
        {"name": "Draem", "kind": "draem", "steps": args.steps},
        {"name": "DraemWeak perlin", "kind": "draem_weak", "generator": "perlin", "steps": args.steps},
    ]
    rows += [
        {"name": f"DraemWeak + {label}", "kind": "draem_weak", "generator": "anogen", "bank": bank, "steps": args.steps}
        for label, bank in banks.items()
    ]
    if args.smoke and not args.destseg_teacher:
        args.destseg_teacher = "random"
    if args.smoke:  # the diffusion-bank path is exercised by DraemWeak already
        banks.pop("diffusion bank", None)
    if args.destseg_teacher:
        rows.append({"name": "Destseg", "kind": "destseg", "steps": args.destseg_steps})
        rows += [
            {
                "name": f"DestsegWeak + {label}",
                "kind": "destseg_weak",
                "generator": "anogen",
                "bank": bank,
                "steps": args.destseg_steps,
            }
            for label, bank in banks.items()
        ]
    else:
        skipped.append(
            "Destseg, DestsegWeak: skipped, no ImageNet ResNet-18 teacher weights on this machine (give "
            "--destseg_teacher PATH); a random teacher is not DeSTSeg"
        )
    return rows, skipped


# ----------------------------------------------------------------------------------------- runs


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
    for name in ("every", "beta", "mix", "pools"):  # the --compare_defaults rows
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
    """Fit one model through anomalib's Engine and return its test metrics and times."""
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
    with tempfile.TemporaryDirectory(prefix="bench_accuracy_") as scratch:
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


def probe_seconds_per_step(args: Any, device: str, kind: str, steps: int = 3) -> float:
    """Median time of one training step (synthesis, forward, backward, optimiser) of a DRAEM or DeSTSeg row."""
    import torch

    from anomalib_anogen.models import DestsegWeak, DraemWeak

    if kind == "draem":
        model = DraemWeak(
            dtd_dir=DTD,
            reconstructive_width=args.reconstructive_width,
            discriminative_width=args.discriminative_width,
        ).to(device)
        parameters = model.model.parameters()
    else:
        model = DestsegWeak(pretrained_weights="random", dtd_dir=DTD, steps=2, de_st_steps=1).to(device)
        parameters = model.model.segmentation.parameters()
    model.train()
    optimizer = torch.optim.Adam(parameters, lr=1e-4)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    times = []
    for index in range(steps + 1):  # the first one warms up
        started = time.perf_counter()
        synthetic = model.synthesize(images)
        if kind == "draem":
            reconstruction, prediction = model.model(synthetic.image)
            loss = model.loss(synthetic.target, reconstruction, synthetic.mask, prediction, synthetic.is_box)
        else:
            teacher = model.model.teacher_features(synthetic.image)
            with torch.no_grad():
                student = model.model.student_features(synthetic.image, [f.shape[-2:] for f in teacher])
            logits = model.model.segment(teacher, student)
            loss = model.loss.segmentation(logits, synthetic.mask, synthetic.is_box)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if index:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def fit_to_budget(args: Any, device: str, rows: list[dict[str, Any]], minutes: float) -> str:
    """Scale the steps of every row by one factor so that all runs are estimated to fit ``minutes``."""
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
    return (
        f"--max_minutes {minutes:g}: probe {draem_rate:.3f} s/DRAEM step"
        + (f", {destseg_rate:.3f} s/DeSTSeg step" if destseg_rows else "")
        + f"; estimated {estimate / 60:.1f} min for the full schedule, running {100 * factor:.1f}% of it "
        f"({args.steps} DRAEM steps, {args.destseg_steps} DeSTSeg steps)"
    )


# ----------------------------------------------------------------------------------------- table


def schedule_label(args: Any, notes: list[str]) -> str:
    """smoke, reduced, paper, or the share of the paper's schedule that ``--max_minutes`` allowed."""
    if args.smoke:
        return "smoke"
    if notes[0].startswith("REDUCED"):
        return "reduced"
    share = getattr(args, "schedule_share", 1.0)
    return "paper" if share >= 1.0 else f"paper x {share:.3f} (--max_minutes)"


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and sample standard deviation (n - 1; 0 for one seed) of every metric of every row."""
    table = {}
    for name, runs in results.items():
        table[name] = {}
        for metric in METRICS:
            values = [run["metrics"][metric] for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            table[name][metric] = (statistics.fmean(values), spread)
    return table


def print_table(table: dict[str, dict[str, tuple[float, float]]], seeds: int) -> None:
    """One row per model: mean ± std of every metric."""
    width = max(len(name) for name in table) + 2
    print(f"\nbottle, {seeds} seed(s), mean ± sample std (n-1)")
    print(f"{'model':<{width}}" + "".join(f"{column:>18}" for column in METRICS.values()))
    for name, metrics in table.items():
        cells = "".join(f"{f'{mean:.4f} ± {spread:.4f}':>18}" for mean, spread in metrics.values())
        print(f"{name:<{width}}{cells}")


CURVE_PANELS = {"pixel_AUPR": "pixel AP", "pixel_AUPRO": "pixel PRO", "image_AUROC": "image AUROC"}


def curve_bands(runs: list[dict[str, Any]], metric: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps evaluated in every seed's run, and the mean, minimum and maximum over the seeds at each."""
    common = sorted(set.intersection(*({point["step"] for point in run["curve"]} for run in runs)))
    values = [[next(p[metric] for p in run["curve"] if p["step"] == step) for run in runs] for step in common]
    return common, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_curves(results: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """Pixel AP, pixel PRO and image AUROC against training steps, a line per row (seed mean), min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(5 * len(CURVE_PANELS), 4), constrained_layout=True)
    for axis, (metric, label) in zip(axes, CURVE_PANELS.items(), strict=True):
        for name, runs in results.items():
            steps, mean, low, high = curve_bands(runs, metric)
            (line,) = axis.plot(steps, mean, marker="o", markersize=3, label=name)
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        axis.set_xlabel("training step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def curve_summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The last curve point of every row: mean and spread (max - min over the seeds) of each panel's metric."""
    summary: dict[str, Any] = {}
    for name, runs in results.items():
        for metric, label in CURVE_PANELS.items():
            steps, mean, low, high = curve_bands(runs, metric)
            if steps:
                summary[f"curve end ({steps[-1]} steps) {name}: {label} mean"] = mean[-1]
                summary[f"curve end ({steps[-1]} steps) {name}: {label} spread"] = high[-1] - low[-1]
    return summary


def target_check(table: dict[str, dict[str, tuple[float, float]]], seeds: int) -> dict[str, Any]:
    """DraemWeak + paste bank above Draem in pixel AP by more than the larger seed spread."""
    check: dict[str, Any] = {}
    base = table.get("Draem", {}).get("pixel_AUPR")
    for name in ("DraemWeak + paste bank", "DraemWeak + diffusion bank", "DraemWeak perlin"):
        ours = table.get(name, {}).get("pixel_AUPR")
        if base is None or ours is None:
            continue
        delta, spread = ours[0] - base[0], max(ours[1], base[1])
        label = name.removeprefix("DraemWeak").strip(" +") or "perlin"
        check[f"pixel AP gain over Draem: {label}"] = delta
        check[f"larger std: {label}"] = spread
        if name != "DraemWeak perlin":
            passed = delta > spread and seeds > 1
            check[f"target met: {label}"] = "yes" if passed else ("n/a (1 seed)" if seeds < 2 else "no")
    return check


# ----------------------------------------------------------------------------------------- --compare_defaults


def compare_rows(args: Any, workdir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The pairs of ``--compare_defaults``, and the lines saying what is not measured and why."""
    draem = {"kind": "draem_weak", "generator": "perlin", "pools": [NEW_POOL, OLD_POOL]}
    rows: list[dict[str, Any]] = [
        {"name": "DraemWeak perlin, new defaults", **draem, "beta": list(NEW_BETA), "batch_size": NEW_BATCH},
        {"name": f"DraemWeak perlin, beta {OLD_BETA}", **draem, "beta": list(OLD_BETA), "batch_size": NEW_BATCH},
        {"name": f"DraemWeak perlin, batch {OLD_BATCH}", **draem, "beta": list(NEW_BETA), "batch_size": OLD_BATCH},
    ]
    notes = [
        "keep_outside (anogen generate, now false): NOT MEASURED: it changes only banks of the diffusion backend, "
        "and there are no pretrained diffusion weights on this machine (the paste backend pastes into the normal "
        "image either way; the tiny backbone has random weights and makes no defects)"
    ]
    if args.smoke and not args.destseg_teacher:
        args.destseg_teacher = "random"
    if args.destseg_teacher:
        bank = paste_bank(workdir, args.paste_images, args.paste_per_image)
        destseg = {"kind": "destseg_weak", "generator": "anogen", "bank": bank, "batch_size": args.batch_size}
        rows += [
            {"name": "DestsegWeak + paste bank, new mix", **destseg, "mix": "new"},
            {"name": "DestsegWeak + paste bank, old mix", **destseg, "mix": "old"},
        ]
        if args.destseg_teacher == "random":
            notes.append(
                "DestsegWeak pair: RANDOM teacher weights (no ImageNet ResNet-18 weights on this machine): "
                "a random-feature DeSTSeg, not DeSTSeg; the pair shows the mix's effect on that model only"
            )
    else:
        notes.append(
            "DestsegWeak new mix vs old mix: not run (give --destseg_teacher PATH, or --destseg_teacher random for "
            "a random-feature teacher, which is not DeSTSeg)"
        )
    return rows, notes


def compare_schedule(args: Any, rows: list[dict[str, Any]]) -> str:
    """Steps and evaluation interval of every row: DRAEM rows the same epochs at their batch, evaluated per epoch."""
    per_epoch = math.ceil(TRAIN_IMAGES / args.batch_size)  # the last batch of an epoch is partial (209 images)
    epochs = args.compare_epochs or max(LAST_EVALUATIONS, round(args.steps / per_epoch))
    args.compare_epochs = epochs
    for row in rows:
        batches = math.ceil(TRAIN_IMAGES / row["batch_size"])
        if args.smoke:  # just enough evaluations for the last-3 mean
            row["steps"], row["every"] = LAST_EVALUATIONS, 1
        elif row["kind"] == "destseg_weak":  # whole epochs too, the student phase inside the first
            row["steps"] = max(args.destseg_student_steps + LAST_EVALUATIONS * batches, args.destseg_steps)
            row["steps"] = math.ceil(row["steps"] / batches) * batches
            row["every"] = batches
        else:
            row["steps"], row["every"] = epochs * batches, batches
    if args.smoke:
        return f"--compare_defaults SMOKE: every row {LAST_EVALUATIONS} steps, evaluated after each"
    draem = ", ".join(f"{row['steps']} steps of batch {row['batch_size']}" for row in rows[:3:2])
    text = (
        f"--compare_defaults: DRAEM rows {epochs} epochs each ({draem}: the same images, the same number of times; "
        f"an epoch of {TRAIN_IMAGES} images ends in a partial batch), evaluated at the end of every epoch; "
        f"a run's value = mean of its last {LAST_EVALUATIONS} evaluations"
    )
    destseg = [row for row in rows if row["kind"] == "destseg_weak"]
    if destseg:
        args.destseg_steps = destseg[0]["steps"]
        text += (
            f"; DestsegWeak rows {destseg[0]['steps']} steps of batch {destseg[0]['batch_size']} "
            f"({args.destseg_student_steps} student), evaluated every {destseg[0]['every']} steps"
        )
    return text


def defaults_check() -> str | None:
    """A line when the package's defaults are no longer the 'new' ones compared here, else ``None``."""
    import inspect

    from anomalib_anogen.models import DraemWeak

    parameters = inspect.signature(DraemWeak).parameters
    found = {"beta": tuple(parameters["beta"].default), "score_pool": parameters["score_pool"].default}
    config = (REPO / "configs" / "draem_weak.yaml").read_text()
    batch = re.search(r"train_batch_size:\s*(\d+)", config)
    found["train_batch_size (configs/draem_weak.yaml)"] = int(batch.group(1)) if batch else None
    expected = {"beta": NEW_BETA, "score_pool": NEW_POOL, "train_batch_size (configs/draem_weak.yaml)": NEW_BATCH}
    changed = {name: value for name, value in found.items() if value != expected[name]}
    return f"WARNING: the package's defaults differ from the 'new' ones compared: {changed}" if changed else None


# Row columns: curve-point metric -> label. "image AUROC" is the model's own score (DraemWeak: pooled 21 x 21).
COMPARE_METRICS = {
    "image_AUROC": "image AUROC",
    "image_AUROC_pool1": "img AUROC pool 1",
    "image_AUPR": "image AP",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AUPR": "pixel AP",
    "pixel_AUPRO": "pixel PRO",
}
PAIR_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO")
NEW_ROW = "DraemWeak perlin, new defaults"
PAIRS: list[tuple[str, str, str, tuple[str, ...]]] = [  # label, new row, old row, metrics
    (f"beta {NEW_BETA} - {OLD_BETA}", NEW_ROW, f"DraemWeak perlin, beta {OLD_BETA}", PAIR_METRICS),
    (f"batch {NEW_BATCH} - {OLD_BATCH} (same epochs)", NEW_ROW, f"DraemWeak perlin, batch {OLD_BATCH}", PAIR_METRICS),
    (
        "DestsegWeak mix: new - old",
        "DestsegWeak + paste bank, new mix",
        "DestsegWeak + paste bank, old mix",
        PAIR_METRICS,
    ),
]


def last_evaluations(run: dict[str, Any], metric: str) -> float | None:
    """Mean of the last ``LAST_EVALUATIONS`` curve points of a run that have ``metric``."""
    values = [point[metric] for point in run["curve"] if metric in point][-LAST_EVALUATIONS:]
    return statistics.fmean(values) if len(values) == LAST_EVALUATIONS else None


def compare_summary(results: dict[str, list[dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """Per row: each metric's per-seed values, mean and spread; per pair: new minus old per seed and the mean."""
    rows: dict[str, dict[str, list[float]]] = {}
    for name, runs in results.items():
        for metric in COMPARE_METRICS:
            values = [last_evaluations(run, metric) for run in runs]
            if all(value is not None for value in values):
                rows.setdefault(name, {})[metric] = values
    pairs: dict[str, dict[str, list[float]]] = {}
    pool_new, pool_old = f"image_AUROC_pool{NEW_POOL}", f"image_AUROC_pool{OLD_POOL}"
    for name in results:  # score_pool: the same models, two scores of the same maps
        if pool_old in rows.get(name, {}):
            label = f"score_pool {NEW_POOL} - {OLD_POOL} (same models): {name}"
            new = [last_evaluations(run, pool_new) for run in results[name]]
            pairs[label] = {"image_AUROC": [a - b for a, b in zip(new, rows[name][pool_old], strict=True)]}
    for label, new_row, old_row, metrics in PAIRS:
        if new_row in rows and old_row in rows:
            pairs[label] = {
                metric: [a - b for a, b in zip(rows[new_row][metric], rows[old_row][metric], strict=True)]
                for metric in metrics
            }
    checks = [  # the model's own pred_score is the pooled one: its AUROC must equal the recomputation
        abs(point["image_AUROC"] - point[pool_new])
        for runs in results.values()
        for run in runs
        for point in run["curve"]
        if pool_new in point and "image_AUROC" in point
    ]
    return {"seeds": seeds, "rows": rows, "pairs": pairs, "pool_check": max(checks, default=None)}


def print_comparison(comparison: dict[str, Any], header: str) -> dict[str, Any]:
    """The rows and the pairs as tables; return the same numbers flat for the report."""
    seeds, flat = comparison["seeds"], {}
    print(f"\n{header}")
    width = max(len(name) for name in comparison["rows"]) + 2
    print(f"{'row (mean over seeds, spread max-min)':<{width}}" + "".join(f"{c:>19}" for c in COMPARE_METRICS.values()))
    for name, metrics in comparison["rows"].items():
        cells = ""
        for metric in COMPARE_METRICS:
            values = metrics.get(metric)
            if values is None:
                cells += f"{'-':>19}"
                continue
            mean, spread = statistics.fmean(values), max(values) - min(values)
            cells += f"{f'{mean:.4f} ({spread:.4f})':>19}"
            flat[f"{name}: {COMPARE_METRICS[metric]} mean"] = mean
            flat[f"{name}: {COMPARE_METRICS[metric]} spread"] = spread
        print(f"{name:<{width}}{cells}")
    width = max([len(label) for label in comparison["pairs"]] + [20]) + 2
    print(
        f"\n{'pair: new - old':<{width}}{'metric':<14}" + "".join(f"{f'seed {s}':>10}" for s in seeds) + f"{'mean':>10}"
    )
    for label, metrics in comparison["pairs"].items():
        for metric, differences in metrics.items():
            mean = statistics.fmean(differences)
            print(
                f"{label:<{width}}{METRICS.get(metric, metric):<14}"
                + "".join(f"{d:>+10.4f}" for d in differences)
                + f"{mean:>+10.4f}"
            )
            for seed, difference in zip(seeds, differences, strict=True):
                flat[f"{label}: {METRICS.get(metric, metric)} diff seed {seed}"] = difference
            flat[f"{label}: {METRICS.get(metric, metric)} diff mean"] = mean
    if comparison["pool_check"] is not None:
        print(
            f"check: the model's own image AUROC minus that of the recomputed {NEW_POOL} x {NEW_POOL} pooled score, "
            f"largest |difference| over all evaluations: {comparison['pool_check']:.2e}"
        )
        flat["pool check: max |own - recomputed| image AUROC"] = comparison["pool_check"]
    return flat


# ----------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Train, test, print the table."""
    args = parse_args(argv)
    logging.getLogger("anomalib").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    device = pick_device(args.device)
    notes = fill_schedule(args, device)
    import torch

    if args.threads is None and device == "cpu" and os.getloadavg()[0] > 1.0:
        args.threads = 1
        notes.append(f"load average {os.getloadavg()[0]:.1f}: other jobs share the CPU, so 1 torch thread")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_size % 32:
        msg = f"--image_size must be a multiple of 32 (DRAEM's U-Nets), got {args.image_size}"
        raise SystemExit(msg)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_accuracy_work_") as scratch:
        workdir = args.workdir or (Path(scratch) if args.smoke else REPO / "runs" / "bench_accuracy")
        workdir.mkdir(parents=True, exist_ok=True)
        if args.compare_defaults:
            if args.eval_every and not args.smoke:
                msg = "--compare_defaults evaluates at the end of every epoch: leave out --eval_every"
                raise SystemExit(msg)
            args.eval_every = None  # the rows carry their own interval (an epoch)
            if args.plot:
                msg = "--plot draws against steps, which differ between batch sizes: not with --compare_defaults"
                raise SystemExit(msg)
            rows, skipped = compare_rows(args, workdir)
        else:
            rows, skipped = rows_to_run(args, workdir)
        if args.max_minutes is not None or args.smoke:
            notes.append(fit_to_budget(args, device, rows, args.max_minutes or 10.0))
        if args.compare_defaults:
            notes.append(compare_schedule(args, rows))
            warning = defaults_check()
            if warning:
                notes.append(warning)
        print(f"device: {device}; data: {MVTEC / CATEGORY}; DTD: {DTD}; workdir: {workdir}")
        for line in notes + skipped:
            print(line)
        batches, steps = str(args.batch_size), str(args.steps)
        if args.compare_defaults:
            draem = [row for row in rows if row["kind"] == "draem_weak"]
            batches, steps = (" / ".join(str(row[key]) for row in draem) for key in ("batch_size", "steps"))
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
        if not args.compare_defaults:
            print(
                "caveat (Draem row): anomalib's DraemLoss uses kornia FocalLoss(alpha=1), which under kornia >= 0.9 "
                "weights the normal class by 1 - alpha = 0, so normal pixels get no segmentation loss; DraemWeak "
                "uses alpha=None as the original DRAEM. 'DraemWeak perlin' isolates that loss difference."
            )
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
                shown = ", ".join(f"{column} {run['metrics'][metric]:.4f}" for metric, column in METRICS.items())
                if args.compare_defaults:
                    last = {c: last_evaluations(run, m) for m, c in COMPARE_METRICS.items()}
                    shown = f"mean of the last {LAST_EVALUATIONS} evaluations: " + ", ".join(
                        f"{column} {value:.4f}" for column, value in last.items() if value is not None
                    )
                print(f"  {row['name']}, seed {seed} (train {run['train_s']} s, test {run['test_s']} s): {shown}")
    table = summarise(results)
    if args.compare_defaults:
        comparison = compare_summary(results, args.seeds)
        header = (
            f"Effect of each changed default: {CATEGORY}, seeds {args.seeds}, {args.image_size} px, DRAEM widths "
            f"{args.reconstructive_width}/{args.discriminative_width}, lr {args.learning_rate:g}, "
            f"{'SMOKE' if args.smoke else args.compare_epochs} epochs; a run's value = mean of its last "
            f"{LAST_EVALUATIONS} evaluations"
        )
        compare_flat = print_comparison(comparison, header)
        for line in skipped:
            print(line)
    else:
        print_table(table, len(args.seeds))
    summary: dict[str, Any] = {
        "device": device,
        "schedule": schedule_label(args, notes),
        "seeds": " ".join(map(str, args.seeds)),
        "image_size": args.image_size,
        "batch_size": f"{NEW_BATCH} / {OLD_BATCH}" if args.compare_defaults else args.batch_size,
        "draem_steps": args.steps,
        "draem_widths": f"{args.reconstructive_width}/{args.discriminative_width}",
        "learning_rate": args.learning_rate,
    }
    if args.destseg_teacher:
        summary |= {"destseg_steps": args.destseg_steps, "destseg_student_steps": args.destseg_student_steps}
    if args.compare_defaults:
        summary |= {"draem_steps": " / ".join(str(row["steps"]) for row in rows[:3]), "epochs": args.compare_epochs}
        summary |= compare_flat
    for name, metrics in ({} if args.compare_defaults else table).items():
        for metric, (mean, spread) in metrics.items():
            summary[f"{name}: {METRICS[metric]} mean"] = mean
            summary[f"{name}: {METRICS[metric]} std"] = spread
    summary |= target_check(table, len(args.seeds))
    if args.eval_every:
        summary |= curve_summary(results)
        if args.plot or args.smoke:
            args.plot = args.plot or Path(tempfile.gettempdir()) / "bench_accuracy_smoke_curves.png"
            title = (
                f"MVTec AD bottle, {schedule_label(args, notes)} schedule: {args.image_size} px, "
                f"batch {args.batch_size}, DRAEM widths {args.reconstructive_width}/{args.discriminative_width}, "
                f"lr {args.learning_rate:g}; "
                f"line = mean of seeds {args.seeds}, band = min-max"
            )
            plot_curves(results, args.plot, title)
            print(f"curves: {args.plot}")
    all_runs = [run for runs in results.values() for run in runs]
    summary["train_and_test_s_all_runs"] = round(sum(run["train_s"] + run["test_s"] for run in all_runs), 1)
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)  # this invocation (resumed runs: ~0)
    print()
    report(summary, args.json)
    if args.json:  # the per-seed numbers and the notes beside the summary
        data = json.loads(args.json.read_text())
        data["notes"] = notes + skipped
        data["runs"] = results
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
