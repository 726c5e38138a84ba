"""Bank quality by the anchors' protocol: ``anogen evaluate`` of several banks side by side, on the real bottle.

Every row is a bank; each is judged by ``anogen evaluate`` (a U-Net trained on the bank alone, tested on the real
MVTec AD bottle test set, docs/evaluate.md) with the same seeds and schedule in one run, and the table gives per
bank the mean over the seeds of pixel AP, PRO, pixel AUROC and image AUROC, with their spread (max - min), and
pixel AP per seed. Rows (a list of bank builders, :data:`ROWS`; a new row is one more entry):

1. ``clean paste bank``: ``anogen generate --backend paste`` from the 3-shot support set, ``--images`` normal
   images x 3 defect types x ``--per_image`` records;
2. ``no defect``: the same bank with every image replaced by its normal source (same boxes, same masks, no
   defect): what a bank whose defects are invisible teaches; the protocol must put it clearly below row 1.

The check under the table: pixel AP of row 1 minus row 2 against the larger seed spread of the two.

Resumable: each finished bank's result is kept in ``--workdir``/results.json under its row name and every
setting that changes it, and is not recomputed by a rerun with the same settings (banks are kept there too).

    python benchmarks/bench_bank_quality.py --json runs/bench_bank_quality.json     # 3 seeds, the defaults
    python benchmarks/bench_bank_quality.py --smoke      # seconds: tiny banks and schedule, checks the script
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import CATEGORY, MVTEC, REPO, machine, make_paste_bank, parser

METRICS = ("pixel_AP", "pixel_PRO", "pixel_AUROC", "image_AUROC")


@dataclass(frozen=True)
class Context:
    """What a bank builder gets: the scratch folder, the clean bank and the command line."""

    workdir: Path
    clean: Path
    args: Any


@dataclass(frozen=True)
class Row:
    """One bank of the table: its name and how to make it (``None``: skipped, the builder logged why)."""

    name: str
    build: Callable[[Context], Path | None]


def clean_bank(context: Context) -> Path:
    """The paste bank every other row derives from."""
    return context.clean


def no_defect_bank(context: Context) -> Path:
    """The clean bank with each image replaced by its normal source: the same boxes and masks, no defect."""
    from PIL import Image

    from anomalib_anogen.data.bank import MANIFEST_NAME, load_bank

    target = context.workdir / "bank_no_defect"
    if (target / MANIFEST_NAME).is_file():
        return target
    scratch = target.with_name(target.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(context.clean, scratch)
    for record in load_bank(context.clean):
        image = scratch / record.image.relative_to(context.clean)
        size = Image.open(record.image).size
        Image.open(record.source).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(image)
    lines = []
    for line in (scratch / MANIFEST_NAME).read_text().splitlines():
        entry = json.loads(line)
        image = scratch / "images" / entry["defect"] / f"{entry['id']}.png"
        entry["image_sha256"] = hashlib.sha256(image.read_bytes()).hexdigest()
        lines.append(json.dumps(entry) + "\n")
    (scratch / MANIFEST_NAME).write_text("".join(lines))
    scratch.rename(target)
    return target


# The table's rows, in order. The quality gate's rows (faults injected, after the gate) go here.
ROWS: list[Row] = [
    Row("clean paste bank", clean_bank),
    Row("no defect (images = their sources)", no_defect_bank),
]


def evaluate_bank(bank: Path, args: Any, output: Path) -> dict[str, Any]:
    """``anogen evaluate`` of one bank with the run's seeds and schedule; its JSON report."""
    from anomalib_anogen.evaluate.command import evaluate
    from anomalib_anogen.evaluate.options import EvaluateOptions

    options = EvaluateOptions(
        bank=str(bank),
        test=str(MVTEC / CATEGORY),
        seeds=args.seeds,
        image_size=args.image_size,
        steps=args.steps,
        batch_size=args.batch_size,
        width=args.width,
        threads=args.threads,
        output=str(output),
        progress=False,
        **({"lr": args.lr} if args.lr is not None else {}),
    )
    return evaluate(options).report


def settings_key(row: Row, args: Any) -> str:
    """What a stored result depends on: the row, the bank's making and the evaluation's settings."""
    fields = {
        "row": row.name,
        "images": args.images,
        "per_image": args.per_image,
        "seeds": args.seeds,
        "image_size": args.image_size,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "width": args.width,
        "lr": args.lr,
    }
    return json.dumps(fields, sort_keys=True)


def print_table(results: dict[str, dict[str, Any]], seeds: list[int]) -> None:
    """Per bank: mean (spread) of each metric, pixel AP per seed, and the wall time."""
    width = max(len(name) for name in results) + 2
    header = f"{'bank (mean over seeds, spread max-min)':<{width}}"
    header += "".join(f"{name:>20}" for name in METRICS)
    header += "".join(f"{f'AP seed {s}':>12}" for s in seeds) + f"{'min':>7}"
    print(header)
    for name, result in results.items():
        line = f"{name:<{width}}"
        for metric in METRICS:
            mean, spread = result["mean"][metric], result["spread"][metric]
            line += f"{'n/a':>20}" if mean is None else f"{f'{mean:.4f} ({spread:.4f})':>20}"
        line += "".join(f"{seed['pixel_AP']:>12.4f}" for seed in result["seeds"])
        print(line + f"{result['wall_s'] / 60:>7.1f}")


def separation(results: dict[str, dict[str, Any]], good: str, bad: str) -> dict[str, float] | None:
    """Pixel AP of ``good`` minus ``bad`` and the larger of their seed spreads."""
    if good not in results or bad not in results:
        return None
    difference = results[good]["mean"]["pixel_AP"] - results[bad]["mean"]["pixel_AP"]
    spread = max(results[good]["spread"]["pixel_AP"], results[bad]["spread"]["pixel_AP"])
    return {"difference": difference, "larger_spread": spread, "separated": difference > spread}


def main(argv: list[str] | None = None) -> int:
    """Make the banks, evaluate each with every seed, print the table."""
    from anomalib_anogen.evaluate.options import DEFAULT_BATCH_SIZE, DEFAULT_STEPS, DEFAULT_WIDTH

    parser_ = parser(__doc__)
    parser_.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_bank_quality")
    parser_.add_argument("--images", type=int, default=40, help="normal bottle images of the paste bank")
    parser_.add_argument("--per_image", type=int, default=4, help="records per normal image and defect type")
    parser_.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser_.add_argument("--image_size", type=int, default=128)
    parser_.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser_.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser_.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser_.add_argument("--lr", type=float, default=None, help="default: anogen evaluate's")
    parser_.add_argument("--threads", type=int, default=None)
    parser_.add_argument("--rows", nargs="+", help="only the rows whose name starts with one of these")
    args = parser_.parse_args(argv)
    if args.smoke:
        args.images, args.per_image, args.image_size, args.steps, args.batch_size, args.width = 4, 1, 32, 2, 4, 4
        args.workdir = args.workdir.with_name(args.workdir.name + "_smoke")
        shutil.rmtree(args.workdir, ignore_errors=True)

    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    clean = make_paste_bank(args.workdir / "bank_paste", args.images, per_image=args.per_image, resume=True)
    context = Context(workdir=args.workdir, clean=clean, args=args)
    store = args.workdir / "results.json"
    stored = json.loads(store.read_text()) if store.is_file() else {}
    results: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        if args.rows and not any(row.name.startswith(prefix) for prefix in args.rows):
            continue
        key = settings_key(row, args)
        if key in stored:
            print(f"{row.name}: stored result reused", file=sys.stderr)
            results[row.name] = stored[key]
            continue
        bank = row.build(context)
        if bank is None:
            continue
        started = time.perf_counter()
        slug = "".join(c if c.isalnum() else "_" for c in row.name)[:40]
        result = evaluate_bank(bank, args, args.workdir / f"{slug}.json")
        result["wall_s"] = time.perf_counter() - started
        results[row.name] = stored[key] = result
        store.write_text(json.dumps(stored, indent=2) + "\n")
    print(
        f"\nanogen evaluate on {CATEGORY}: seeds {args.seeds}, {args.image_size} px, {args.steps} steps of "
        f"{args.batch_size}, U-Net width {args.width}; paste bank of {args.images} images x 3 defects x "
        f"{args.per_image}"
    )
    print_table(results, args.seeds)
    check = separation(results, ROWS[0].name, ROWS[1].name)
    if check:
        print(
            f"\nclean - no defect, pixel AP: {check['difference']:+.4f}; larger seed spread "
            f"{check['larger_spread']:.4f}: {'separated' if check['separated'] else 'NOT separated'}"
        )
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
        document = {"machine": machine(), "settings": settings, "banks": results, "clean_minus_no_defect": check}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
