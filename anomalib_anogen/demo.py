"""End-to-end AnoGen demo on 2 CPU cores, offline.

1. learn one anomaly embedding per defect type from the 3-shot support set (``anogen learn``);
2. generate a small anomaly bank into normal training images (``anogen generate``, the diffusion backend), and
   a paste bank of the real support anomalies (``--backend paste``); print what the quality gate measured;
3. draw their contact sheets (``anogen show``);
4. train ``DraemWeak`` with the ``anogen`` generator on one of the banks, test it (anomalib's metrics),
5. export it to OpenVINO, run it at an explicit precision (``--precision``, default f32) on every test image,
   draw the prediction sheet and compare its raw anomaly maps with torch's, at f32 and at this CPU's default
   precision (docs/deploy.md).

Data: MVTec AD bottle and its support set from ``../shared/data`` when present, otherwise a
small MVTec-layout dataset that ``anomalib_anogen.data.toy`` makes (its own test anomalies
then serve as the support set). The backbone is the built-in random-weight ``tiny`` unless
``--backbone`` names a real diffusers/LDM model you have locally. With ``tiny`` the embeddings and the
generated defects are mechanically right but not realistic: its random VAE cannot reproduce an image, so the
demo composites the decoded box onto the normal image (``--keep_outside true``; the paper's whole-latent
decode would turn every frame into noise, and the gate would reject every record for leaking), and the
detector trains on the paste bank (real defects), since noise in a box teaches it nothing about real defects.
Run ``python -m anomalib_anogen.demo --help`` for the knobs.
"""

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from anomalib_anogen.deploy.openvino import PRECISIONS
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.show import ShowOptions
from anomalib_anogen.learn.options import LearnOptions

DEFAULT_SHARED = Path("../shared/data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the demo."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="where results go (default runs/demo)")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="folder holding MVTecAD/ and dtd/")
    parser.add_argument("--image_size", type=int, default=128, help="training and export resolution")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument(
        "--detector_bank",
        choices=("auto", "paste", "diffusion"),
        default="auto",
        help="the bank DraemWeak trains on (auto: paste with the random-weight tiny backbone, else diffusion)",
    )
    parser.add_argument(
        "--keep_outside",
        choices=("auto", "true", "false"),
        default="auto",
        help="generate's --keep_outside (auto: true with the random-weight tiny backbone, else the paper's false)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--reconstructive_width", type=int, default=32, help="DRAEM: 128; smaller runs on CPU")
    parser.add_argument("--discriminative_width", type=int, default=16, help="DRAEM: 64")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="DRAEM: 1e-4 over 700 epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="tiny", help="tiny (random weights) or a local diffusers/LDM model")
    parser.add_argument("--learn_steps", type=int, default=150, help="textual-inversion steps per defect")
    parser.add_argument("--bank_images", type=int, default=24, help="normal images that receive anomalies")
    parser.add_argument("--ddim_steps", type=int, default=10, help="DDIM steps per generated anomaly (paper: 50)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="f32",
        help="OpenVINO inference precision of the exported model (default f32: torch's numbers on any CPU)",
    )
    return parser.parse_args(argv)


def pick_data(shared: Path, output: Path) -> tuple[Path, str, Path, Path | None]:
    """Return (MVTec root, category, support set, DTD folder or None), making toy data when the real data is absent."""
    bottle = shared / "MVTecAD" / "bottle"
    support = shared / "support" / "bottle"
    dtd = shared / "dtd" / "images"
    if (bottle / "train" / "good").is_dir() and support.is_dir():
        print(f"data: real MVTec AD bottle from {bottle}, support set {support}")
        return shared / "MVTecAD", "bottle", support, dtd if dtd.is_dir() else None
    from anomalib_anogen.data.toy import make_toy_category

    root = output / "toy_data"
    if not (root / "toy_bottle").is_dir():
        make_toy_category(root, size=128, n_train=48, n_test_good=8, n_test_per_defect=6)
    print(f"data: {bottle} not found, using the generated toy category in {root / 'toy_bottle'}")
    return root, "toy_bottle", root / "toy_bottle", dtd if dtd.is_dir() else None


def toy_priors(output: Path) -> Path:
    """Box priors for the toy category's defect types (the shipped ones cover MVTec AD only)."""
    from anomalib_anogen.data.toy import DEFECT_TYPES

    path = output / "toy_priors.json"
    path.write_text(json.dumps({defect: [[0.1, 0.3], [0.1, 0.3], True] for defect in DEFECT_TYPES}))
    return path


def write_prediction_sheet(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]], path: Path) -> None:
    """Save image | anomaly map overlay | ground truth rows as one PNG, drawn with anomalib's visualisation helpers."""
    from anomalib.visualization.image.functional import (
        add_text_to_image,
        create_image_grid,
        overlay_image,
        visualize_anomaly_map,
        visualize_gt_mask,
    )
    from PIL import Image

    tiles = []
    for image, anomaly_map, gt_mask, title in rows:
        base = Image.fromarray(image)
        heat = visualize_anomaly_map((np.clip(anomaly_map, 0, 1) * 255).astype(np.uint8)).resize(base.size)
        truth = np.zeros(image.shape[:2], np.uint8) if gt_mask is None else (gt_mask > 0).astype(np.uint8) * 255
        truth_tile = visualize_gt_mask(truth).convert("RGB").resize(base.size, Image.Resampling.NEAREST)
        labelled = add_text_to_image(base, title, size=max(8, base.height // 16), position=(2, 2), padding=1)
        tiles += [labelled.convert("RGB"), overlay_image(base, heat, alpha=0.5).convert("RGB"), truth_tile]
    path.parent.mkdir(parents=True, exist_ok=True)
    create_image_grid(tiles, nrow=3).save(path)


def print_quality(bank: Path) -> None:
    """What the quality gate measured in ``bank`` and what it did (the table ``anogen check`` prints)."""
    from anomalib_anogen.generate.check import measure_bank, table

    result = measure_bank(bank)
    print("  " + table(result).replace("\n", "\n  "))
    rejected = len(result.rejected())
    if rejected:
        print(f"  the gate rejected {rejected} of {len(result.records)} records: training skips them (docs/quality.md)")
    else:
        print(f"  the gate accepted all {len(result.records)} records")


@dataclass(frozen=True)
class Separation:
    """How the test images' scores separate good from defective images.

    Attributes:
        good: (lowest, highest) score of the good test images.
        defective: (lowest, highest) score of the defective ones.
        image_auroc: The area under the ROC curve of those scores (1: every defective image above every good one).
        flagged: Share of defective images scored above the threshold (0.5).
        passed: Share of good images scored below it.
    """

    good: tuple[float, float]
    defective: tuple[float, float]
    image_auroc: float
    flagged: float
    passed: float

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"good {self.good[0]:.2f}-{self.good[1]:.2f}, defective {self.defective[0]:.2f}-{self.defective[1]:.2f}, "
            f"image AUROC {self.image_auroc:.3f}; {self.flagged:.0%} of defective images flagged, "
            f"{self.passed:.0%} of good ones passed"
        )


def score_separation(scores: dict[Path, float]) -> Separation:
    """Good (``test/good``) against defective images: ranges, AUROC (ties count half) and shares at 0.5."""
    good = np.array([s for path, s in scores.items() if path.parent.name == "good"])
    bad = np.array([s for path, s in scores.items() if path.parent.name != "good"])
    pairs = (bad[:, None] > good[None, :]).mean() + 0.5 * (bad[:, None] == good[None, :]).mean()
    return Separation(
        good=(float(good.min()), float(good.max())),
        defective=(float(bad.min()), float(bad.max())),
        image_auroc=float(pairs),
        flagged=float((bad > 0.5).mean()),
        passed=float((good <= 0.5).mean()),
    )


def sheet_rows(scores: dict[Path, float]) -> list[Path]:
    """The images the prediction sheet shows: per test type (folder), its lowest- and highest-scored image."""
    by_type: dict[str, list[Path]] = {}
    for path in sorted(scores):
        by_type.setdefault(path.parent.name, []).append(path)
    chosen = []
    for kind in sorted(by_type, key=lambda name: (name != "good", name)):  # good first
        ranked = sorted(by_type[kind], key=lambda path: scores[path])
        chosen += [ranked[0], ranked[-1]] if len(ranked) > 1 else ranked
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    args = parse_args(argv)
    started = time.perf_counter()
    logging.getLogger("anomalib").setLevel(logging.WARNING)

    import torch
    from anomalib.data import MVTecAD
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything
    from PIL import Image

    from anomalib_anogen.deploy import check_parity, compiled_precision, cpu_info, export_raw, load_inferencer
    from anomalib_anogen.generate.command import generate
    from anomalib_anogen.generate.show import show
    from anomalib_anogen.learn.command import learn
    from anomalib_anogen.models import DraemWeak

    seed_everything(args.seed, workers=True)
    output = args.output.resolve()
    root, category, support, dtd_dir = pick_data(args.shared, output)
    print(
        f"backbone: {args.backbone}" + (" (built-in, random weights: no download)" if args.backbone == "tiny" else "")
    )
    print(f"Perlin fallback: {'DTD textures from ' + str(dtd_dir) if dtd_dir else 'Perlin noise alone'}")

    random_weights = args.backbone in {"tiny", "tiny-ldm"}
    keep_outside = random_weights if args.keep_outside == "auto" else args.keep_outside == "true"
    detector_bank = ("paste" if random_weights else "diffusion") if args.detector_bank == "auto" else args.detector_bank
    normal = root / category / "train" / "good"
    priors = None if category == "bottle" else str(toy_priors(output))

    print(f"[1/8] anogen learn: {args.learn_steps} steps per defect type from {support}")
    embeddings = output / "embeddings"
    learn(
        LearnOptions(
            support=str(support),
            output=str(embeddings),
            backbone=args.backbone,
            shots=None if category == "bottle" else 3,
            steps=args.learn_steps,
            seed=args.seed,
            overwrite=True,
        )
    )

    print(
        f"[2/8] anogen generate: {args.bank_images} normal images x every defect type, {args.ddim_steps} DDIM steps, "
        f"--keep_outside {str(keep_outside).lower()}"
    )
    if random_weights and keep_outside:
        print(
            f"  {args.backbone} has random weights: its VAE cannot reproduce an image, so the paper's whole-latent "
            "decode (--keep_outside false) would turn every frame into noise. --keep_outside true composites the "
            "decoded box onto the normal image: intact outside the box, noise (not a real defect) inside it."
        )
    bank = output / "bank"
    common = {"normal": str(normal), "priors": priors, "seed": args.seed, "max_images": args.bank_images}
    generate(
        GenerateOptions(
            output=str(bank),
            embeddings=str(embeddings),
            backbone=args.backbone,
            support=str(support),  # the quality gate's references: the real anomalies
            per_image=2,
            samples_per_box=1,
            steps=args.ddim_steps,
            keep_outside=keep_outside,
            overwrite=True,
            **common,
        )
    )
    print_quality(bank)
    paste_bank = output / "paste_bank"
    print(f"  anogen generate --backend paste: the real support anomalies cut out and blended into {normal.name}/")
    generate(
        GenerateOptions(
            output=str(paste_bank),
            backend="paste",
            support=str(support),
            per_image=2,
            samples_per_box=1,
            overwrite=True,
            **common,
        )
    )
    print_quality(paste_bank)

    print("[3/8] anogen show: contact sheets of the banks")
    sheet = show(ShowOptions(bank=str(bank), output=str(output / "bank_sheet.png"), per_defect=3))
    paste_sheet = show(ShowOptions(bank=str(paste_bank), output=str(output / "paste_bank_sheet.png"), per_defect=3))
    print(f"  {sheet}\n  {paste_sheet}")
    trained_on = paste_bank if detector_bank == "paste" else bank

    size = (args.image_size, args.image_size)
    datamodule = MVTecAD(
        root=root,
        category=category,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=2,
        seed=args.seed,
    )
    model = DraemWeak(
        dtd_dir=dtd_dir,
        generator="anogen",
        bank_dir=trained_on,
        reconstructive_width=args.reconstructive_width,
        discriminative_width=args.discriminative_width,
        learning_rate=args.learning_rate,
        pre_processor=DraemWeak.configure_pre_processor(size),
    )
    engine = Engine(
        default_root_dir=output,
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        check_val_every_n_epoch=args.epochs,
        enable_checkpointing=True,
    )
    print(
        f"[4/8] training DraemWeak (generator anogen on the {detector_bank} bank {trained_on.name}/, mixed with "
        f"Perlin/DTD) for {args.epochs} epochs at {args.image_size} px on {category}"
    )
    engine.fit(model=model, datamodule=datamodule)

    print("[5/8] testing")
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    print("test metrics:")
    for name in sorted(metrics):
        print(f"  {name:<16} {metrics[name]:.4f}")

    print("[6/8] exporting to OpenVINO (FP32)")
    xml_path = Path(
        engine.export(
            model=model,
            export_type=ExportType.OPENVINO,
            export_root=output / "export",
            input_size=size,
        ),
    )
    print(f"  {xml_path}")

    print("[7/8] OpenVINO inference on every test image, precision set explicitly")
    info = cpu_info()
    print(f"  CPU: {info}")
    inferencer = load_inferencer(xml_path, precision=args.precision)
    print(f"  OpenVINO runs the exported model in {compiled_precision(inferencer.model)} (asked: {args.precision})")
    test_images = sorted(path for path in (root / category / "test").rglob("*.png"))
    model.eval()
    scores: dict[Path, float] = {}
    shown: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
    tensors = []
    for path in test_images:
        image = np.array(Image.open(path).convert("RGB").resize(size, Image.BILINEAR))
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
        tensors.append(tensor)
        prediction = inferencer.predict(tensor)
        scores[path] = float(np.asarray(prediction.pred_score).squeeze())
        mask_path = root / category / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        gt_mask = np.asarray(Image.open(mask_path).convert("L")) > 127 if mask_path.exists() else None
        shown[path] = (image, np.asarray(prediction.anomaly_map).squeeze(), gt_mask)
    separation = score_separation(scores)
    print(f"  scores (OpenVINO, normalised: 0.5 is the threshold): {separation.describe()}")
    rows = [(*shown[path], f"{path.parent.name} {scores[path]:.2f}") for path in sheet_rows(scores)]
    sheet_path = output / "predictions.png"
    write_prediction_sheet(rows, sheet_path)
    print(f"  prediction sheet: {sheet_path} (per test type the lowest- and highest-scored image)")
    print("[8/8] raw-map parity of OpenVINO against torch, at f32 and at this CPU's default precision")
    # Parity on the raw network outputs (before normalisation), for f32 and for what this CPU picks by default.
    raw_xml = export_raw(model, output / "export_raw", size)
    parities = {}
    for precision in ("f32", None):
        parity = check_parity(model, raw_xml, tensors, precision=precision)
        parities[precision or "cpu_default"] = parity
        print(f"  raw-map parity: {parity}")

    summary = {
        "data": str(root / category),
        "backbone": args.backbone,
        "bank": str(bank),
        "bank_sheet": str(sheet),
        "paste_bank": str(paste_bank),
        "paste_bank_sheet": str(paste_sheet),
        "detector_bank": detector_bank,
        "scores": asdict(separation),
        "image_size": args.image_size,
        "epochs": args.epochs,
        "metrics": {name: float(value) for name, value in metrics.items()},
        "openvino_model": str(xml_path),
        "openvino_precision": compiled_precision(inferencer.model),
        "cpu": str(info),
        "raw_parity": {name: asdict(parity) for name, parity in parities.items()},
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    (output / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['wall_time_s']} s; summary in {output / 'demo_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
