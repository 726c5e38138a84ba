"""Effect of each changed default on real MVTec AD bottle: pairs of models that differ in exactly one of them.

The defaults this project took from the AnoGen authors' code on 2026-12-07, each against the one it replaced,
trained side by side with the same seeds, initial networks and schedule through anomalib's ``Engine`` (as
bench_accuracy.py trains, _runs.py) and evaluated on the test set at the end of every epoch:

- ``DraemWeak perlin, new defaults`` (beta (0.2, 1.0), batch 16, image score = maximum of the 21 x 21
  average-pooled map) against ``... beta (0.1, 1.0)`` and ``... batch 8``. Every row trains the same number of
  epochs (``--epochs``; CPU: 7 = 98 steps of batch 16 or 189 of batch 8), so both batch sizes see the same images
  the same number of times, as the configs' ``max_epochs`` does; the step counts differ.
- image score pooled 21 x 21 against the raw maximum (``score_pool`` 1): no extra training, both AUROCs are
  computed from the same anomaly maps of the same evaluation (the model's own ``pred_score`` is the pooled one,
  checked against the recomputation).
- with ``--destseg_teacher`` (``random`` allowed here, and said so): ``DestsegWeak + paste bank`` with the
  authors' DeSTSeg mix (no clean bank images, DeSTSeg's per-category rotation) against the old one (half the bank
  draws the clean source image, DRAEM's rotation p 0.3 within ±90°); same batch and steps.
- ``anogen generate --keep_outside``: not measured (it changes only diffusion banks; no diffusion weights here).

Each run's value is the mean of its last 3 evaluations (to damp the in-run swings of the short schedule); a row
gives the mean over the seeds and their spread (max - min); a pair gives new minus old per seed and the mean.
The schedule options are bench_accuracy.py's (CPU: 128 px, DRAEM widths 16/8, Adam lr 1e-3; GPU: the paper's).

Resumable: each finished (model, seed) is stored in ``--workdir``/results.json (default runs/bench_defaults) and
skipped on a rerun with the same settings.

    python benchmarks/bench_defaults.py --threads 1 --json runs/compare_defaults.json
    python benchmarks/bench_defaults.py --smoke     # seconds-scale check of every code path (random teacher)
"""

import inspect
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import CATEGORY, REPO, parse, print_table, report
from _runs import (
    METRICS,
    SMOKE,
    TRAIN_IMAGES,
    fit_to_budget,
    paste_bank,
    prepare,
    print_setup,
    run_rows,
    run_totals,
    schedule_parser,
    schedule_summary,
    workspace,
)

# The defaults taken from the authors' code on 2026-12-07 and the ones they replaced.
NEW_BATCH, OLD_BATCH = 16, 8  # configs/draem_weak.yaml train_batch_size (A DRAEM/train.sh) / DRAEM's README
NEW_BETA, OLD_BETA = (0.2, 1.0), (0.1, 1.0)  # DraemWeak beta: DRAEM's / anomalib's Draem
NEW_POOL, OLD_POOL = 21, 1  # DraemWeak score_pool: DRAEM's and A's test code / anomalib's raw maximum
OLD_CLEAN_SHARE = 0.5  # DestsegWeak before: half the bank draws the clean source image (DRAEM's mix); now 0
LAST_EVALUATIONS = 3  # a run's value: the mean of its last 3 evaluations

# Row columns: curve-point metric -> label. "image AUROC" is the model's own score (DraemWeak: pooled 21 x 21).
COMPARE_METRICS = {"image_AUROC": METRICS["image_AUROC"], f"image_AUROC_pool{OLD_POOL}": "img AUROC pool 1", **METRICS}
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


def parse_args(argv: list[str] | None) -> Any:
    """bench_accuracy's schedule options and ``--epochs``; ``None`` defaults are filled in per device."""
    p = schedule_parser(__doc__)
    p.add_argument(
        "--epochs",
        type=int,
        help="training epochs of every DRAEM row, the same for batch 16 and 8 (default: --steps at --batch_size in "
        "whole epochs: CPU 7, GPU 700); evaluated at the end of each",
    )
    args = parse(p, argv, smoke=SMOKE)
    args.eval_every = None  # the rows carry their own interval (an epoch)
    return args


def old_mix(model: Any) -> None:
    """``DestsegWeak`` before 2026-12-07: DRAEM's mix (half the bank draws the clean image) and rotation.

    The clean share goes into the generator's spec; DRAEM's rotation replaces DeSTSeg's once the model's own
    ``setup`` has given the generator the category's rotation.
    """
    from anomalib_anogen.data.generators.rotation import DRAEM_ROTATION

    model.generator_spec = model.generator_spec.with_options(clean_share=OLD_CLEAN_SHARE)
    setup = model.setup

    def setup_then_draem_rotation(stage: str) -> None:
        setup(stage)
        if stage == "fit":
            model.augmenter.rotation = DRAEM_ROTATION

    model.setup = setup_then_draem_rotation


def compare_rows(args: Any, workdir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The pairs' rows, and the lines saying what is not measured and why."""
    draem = {"kind": "draem_weak", "generator": "perlin", "pools": [NEW_POOL, OLD_POOL]}
    rows: list[dict[str, Any]] = [
        {"name": NEW_ROW, **draem, "beta": list(NEW_BETA), "batch_size": NEW_BATCH},
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
            {"name": "DestsegWeak + paste bank, old mix", **destseg, "mix": "old", "adjust": old_mix},
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
    epochs = args.epochs or max(LAST_EVALUATIONS, round(args.steps / per_epoch))
    args.epochs = epochs
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
        return f"SMOKE: every row {LAST_EVALUATIONS} steps, evaluated after each"
    draem = ", ".join(f"{row['steps']} steps of batch {row['batch_size']}" for row in rows[:3:2])
    text = (
        f"DRAEM rows {epochs} epochs each ({draem}: the same images, the same number of times; "
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
    from anomalib_anogen.models import DraemWeak

    parameters = inspect.signature(DraemWeak).parameters
    found = {"beta": tuple(parameters["beta"].default), "score_pool": parameters["score_pool"].default}
    config = (REPO / "configs" / "draem_weak.yaml").read_text()
    batch = re.search(r"train_batch_size:\s*(\d+)", config)
    found["train_batch_size (configs/draem_weak.yaml)"] = int(batch.group(1)) if batch else None
    expected = {"beta": NEW_BETA, "score_pool": NEW_POOL, "train_batch_size (configs/draem_weak.yaml)": NEW_BATCH}
    changed = {name: value for name, value in found.items() if value != expected[name]}
    return f"WARNING: the package's defaults differ from the 'new' ones compared: {changed}" if changed else None


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
    seeds, flat, cells = comparison["seeds"], {}, {}
    print(f"\n{header}")
    for name, metrics in comparison["rows"].items():
        cells[name] = []
        for metric in COMPARE_METRICS:
            values = metrics.get(metric)
            if values is None:
                cells[name].append("-")
                continue
            mean, spread = statistics.fmean(values), max(values) - min(values)
            cells[name].append(f"{mean:.4f} ({spread:.4f})")
            flat[f"{name}: {COMPARE_METRICS[metric]} mean"] = mean
            flat[f"{name}: {COMPARE_METRICS[metric]} spread"] = spread
    print_table("row (mean over seeds, spread max-min)", list(COMPARE_METRICS.values()), cells, width=19)
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


def main(argv: list[str] | None = None) -> int:
    """Train the pairs, print the rows, the pairs' differences and the check."""
    args = parse_args(argv)
    device, notes = prepare(args, draem_schedule="DRAEM epochs as in the 'DRAEM rows' line below")
    started = time.perf_counter()
    with workspace(args, "bench_defaults") as workdir:
        rows, skipped = compare_rows(args, workdir)
        notes += [*fit_to_budget(args, device, rows), compare_schedule(args, rows)]
        warning = defaults_check()
        if warning:
            notes.append(warning)
        draem = [row for row in rows if row["kind"] == "draem_weak"]
        batches, steps = (" / ".join(str(row[key]) for row in draem) for key in ("batch_size", "steps"))
        print_setup(args, device, workdir, notes + skipped, rows, batches, steps)

        def show(run: dict[str, Any]) -> str:
            last = {column: last_evaluations(run, metric) for metric, column in COMPARE_METRICS.items()}
            return f"mean of the last {LAST_EVALUATIONS} evaluations: " + ", ".join(
                f"{column} {value:.4f}" for column, value in last.items() if value is not None
            )

        results = run_rows(rows, args, device, workdir, started, show)
    header = (
        f"Effect of each changed default: {CATEGORY}, seeds {args.seeds}, {args.image_size} px, DRAEM widths "
        f"{args.reconstructive_width}/{args.discriminative_width}, lr {args.learning_rate:g}, "
        f"{'SMOKE' if args.smoke else args.epochs} epochs; a run's value = mean of its last "
        f"{LAST_EVALUATIONS} evaluations"
    )
    flat = print_comparison(compare_summary(results, args.seeds), header)
    for line in skipped:
        print(line)
    summary = schedule_summary(args, device, notes, f"{NEW_BATCH} / {OLD_BATCH}", steps)
    summary |= {"epochs": args.epochs} | flat | run_totals(results, started)
    print()
    report(summary, args.json, extra={"notes": notes + skipped, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
