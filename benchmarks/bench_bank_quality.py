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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import CATEGORY, MVTEC, NORMAL, REPO, SUPPORT, machine, make_paste_bank, parser

METRICS = ("pixel_AP", "pixel_PRO", "pixel_AUROC", "image_AUROC")


@dataclass
class Context:
    """What a bank builder gets: the scratch folder, the clean bank and the command line; where it puts notes."""

    workdir: Path
    clean: Path
    args: Any
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per row: what the table prints beside it


@dataclass(frozen=True)
class Row:
    """One bank of the table: its name and how to make it (``None``: skipped, the builder logged why)."""

    name: str
    build: Callable[[Context], Path | None]


def clean_bank(context: Context) -> Path:
    """The paste bank every other row derives from, as ``anogen generate`` made it (its gate on)."""
    return context.clean


def _finished(target: Path) -> Path | None:
    """``target`` when an earlier run finished it, else ``None`` (a partial one is removed)."""
    if (target / ".bench-done").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    return None


def _done(target: Path) -> Path:
    (target / ".bench-done").write_text("")
    return target


def no_defect_bank(context: Context) -> Path:
    """The clean bank with each image replaced by its normal source: the same boxes and masks, no defect."""
    from PIL import Image

    from anomalib_anogen.data.bank import MANIFEST_NAME, load_bank

    target = context.workdir / "bank_no_defect"
    if _finished(target):
        return target
    shutil.copytree(context.clean, target)
    for record in load_bank(context.clean):
        image = target / record.image.relative_to(context.clean)
        size = Image.open(record.image).size
        Image.open(record.source).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(image)
    lines = []
    for line in (target / MANIFEST_NAME).read_text().splitlines():
        entry = json.loads(line)
        image = target / "images" / entry["defect"] / f"{entry['id']}.png"
        entry["image_sha256"] = hashlib.sha256(image.read_bytes()).hexdigest()
        for key in ("rejected", "rejected_for"):  # the gate judged the images with defects
            entry.pop(key, None)
        lines.append(json.dumps(entry) + "\n")
    (target / MANIFEST_NAME).write_text("".join(lines))
    return _done(target)


def _judge(bank: Path, gate: bool) -> Any:
    """``anogen check BANK --gate GATE --write true``: the verdicts that training follows (quality.json)."""
    from anomalib_anogen.generate.check import CheckOptions, check

    return check(CheckOptions(bank=str(bank), gate=gate, write=True))


def faulty_bank(context: Context) -> Path:
    """The clean bank with injected faults (30% invisible, 10% off the object, 10% leaking), no record rejected."""
    from anomalib_anogen.generate.faults import inject_faults

    target = context.workdir / "bank_faulty"
    if not _finished(target):
        inject_faults(context.clean, target, seed=0)
        _judge(target, gate=False)
        _done(target)
    faults = json.loads((target / "faults.json").read_text())["faults"]
    kinds = sorted(set(faults.values()))
    context.notes["faulty"] = {"faults": len(faults), **{k: sum(v == k for v in faults.values()) for k in kinds}}
    return target


def gated_bank(context: Context) -> Path:
    """The faulty bank after the gate (``anogen check --write true``); the gate's recall of the injected faults."""
    from anomalib_anogen.generate.faults import gate_scores

    faulty = faulty_bank(context)
    target = context.workdir / "bank_faulty_gated"
    if not _finished(target):
        shutil.copytree(faulty, target)
        _judge(target, gate=True)
        _done(target)
    verdicts = json.loads((target / "quality.json").read_text())["records"]
    faults = json.loads((target / "faults.json").read_text())["faults"]
    rejected = {key for key, value in verdicts.items() if value["rejected"]}
    context.notes["gate"] = gate_scores(faults, rejected, set(verdicts))
    return target


def tiny_diffusion_bank(keep_outside: bool) -> Callable[[Context], Path]:
    """A diffusion bank of the built-in ``tiny`` backbone (random weights and embeddings) with ``--keep_outside``.

    Its gate runs as in ``anogen generate``; the row notes how many records it rejected and for what. A bank that
    the gate rejects whole cannot train, so its verdicts are then rewritten with the gate off (``anogen check
    --gate false --write true``) to evaluate what it would teach.
    """

    def build(context: Context) -> Path:
        target = context.workdir / f"bank_tiny_keep_outside_{str(keep_outside).lower()}"
        if not _finished(target):
            embeddings = _tiny_embeddings(context.workdir / "tiny_embeddings")
            from anomalib_anogen.generate.command import generate
            from anomalib_anogen.generate.options import GenerateOptions

            generate(
                GenerateOptions(
                    normal=str(NORMAL),
                    embeddings=str(embeddings),
                    support=str(SUPPORT),
                    output=str(target),
                    keep_outside=keep_outside,
                    resolution=context.args.image_size,
                    steps=context.args.diffusion_steps,
                    max_images=context.args.images,
                    per_image=context.args.per_image,
                    samples_per_box=1,
                    progress=False,
                )
            )
            manifest = [json.loads(line) for line in (target / "manifest.jsonl").read_text().splitlines()]
            reasons: dict[str, int] = {}
            for entry in manifest:
                for reason in entry.get("rejected_for") or ():
                    reasons[reason] = reasons.get(reason, 0) + 1
            gate = {"records": len(manifest), "rejected": sum(bool(e.get("rejected")) for e in manifest), **reasons}
            (target / ".bench-gate.json").write_text(json.dumps(gate))
            if gate["rejected"] == gate["records"]:
                _judge(target, gate=False)
            _done(target)
        context.notes[f"keep_outside {str(keep_outside).lower()}"] = json.loads(
            (target / ".bench-gate.json").read_text()
        )
        return target

    return build


def _tiny_embeddings(folder: Path) -> Path:
    """Random embeddings of the bottle's defect types for the ``tiny`` backbone (nothing to learn from noise)."""
    import torch

    from anomalib_anogen.core.backbones import build_tiny
    from anomalib_anogen.learn.embeddings import write_embedding_dir

    if folder.is_dir():
        return folder
    described = build_tiny(0).describe()
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    for index, defect in enumerate(sorted(p.name for p in SUPPORT.iterdir() if p.is_dir())):
        vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(index))
        write_embedding_dir(scratch, defect, f"<anogen-{defect}>", vector, {"backbone": described}, overwrite=False)
    scratch.rename(folder)
    return folder


# The table's rows, in order; a new bank is one more entry.
ROWS: list[Row] = [
    Row("clean paste bank", clean_bank),
    Row("no defect (images = their sources)", no_defect_bank),
    Row("faulty (30% invisible, 10% off, 10% leak)", faulty_bank),
    Row("faulty, after the gate", gated_bank),
    Row("tiny diffusion, keep_outside false", tiny_diffusion_bank(keep_outside=False)),
    Row("tiny diffusion, keep_outside true", tiny_diffusion_bank(keep_outside=True)),
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
        **{name: getattr(args, name) for name in ("lr", "average_last") if getattr(args, name) is not None},
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
        "average_last": args.average_last,
        "diffusion_steps": args.diffusion_steps if "diffusion" in row.name else None,
    }
    return json.dumps(fields, sort_keys=True)


def print_table(results: dict[str, dict[str, Any]], seeds: list[int]) -> None:
    """Per bank: records used (rejected), mean (spread) of each metric, pixel AP per seed, and the minutes."""
    width = max(len(name) for name in results) + 2
    header = f"{'bank (mean over seeds, spread max-min)':<{width}}{'used (rej.)':>13}"
    header += "".join(f"{name:>20}" for name in METRICS)
    header += "".join(f"{f'AP seed {s}':>12}" for s in seeds) + f"{'min':>7}"
    print(header)
    for name, result in results.items():
        used = f"{result['records']} ({result['rejected']})"
        line = f"{name:<{width}}{used:>13}"
        for metric in METRICS:
            mean, spread = result["mean"][metric], result["spread"][metric]
            line += f"{'n/a':>20}" if mean is None else f"{f'{mean:.4f} ({spread:.4f})':>20}"
        line += "".join(f"{seed['pixel_AP']:>12.4f}" for seed in result["seeds"])
        print(line + f"{result['wall_s'] / 60:>7.1f}")


def _ap(results: dict[str, dict[str, Any]], row: int) -> tuple[float, float] | None:
    """Pixel AP mean and spread of ``ROWS[row]``, if it ran."""
    result = results.get(ROWS[row].name)
    return (result["mean"]["pixel_AP"], result["spread"]["pixel_AP"]) if result else None


def _per_seed(results: dict[str, dict[str, Any]], row: int, minus: int) -> list[float]:
    """Pixel AP of ``ROWS[row]`` minus that of ``ROWS[minus]``, seed by seed."""
    first, second = results[ROWS[row].name]["seeds"], results[ROWS[minus].name]["seeds"]
    return [a["pixel_AP"] - b["pixel_AP"] for a, b in zip(first, second, strict=True)]


def checks(results: dict[str, dict[str, Any]], notes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The claims of the table, each with the numbers it rests on."""
    found: dict[str, Any] = {}
    clean, blank, faulty, gated = (_ap(results, row) for row in range(4))
    if clean and blank:
        difference, spread = clean[0] - blank[0], max(clean[1], blank[1])
        found["clean_minus_no_defect"] = {"pixel_AP": difference, "larger_spread": spread, "ok": difference > spread}
    if "gate" in notes:
        gate = notes["gate"]
        found["gate"] = {**gate, "ok": gate["recall"] >= 0.9 and gate["false_rejection"] <= 0.05}
    if clean and faulty and gated:
        cost, recovered = clean[0] - faulty[0], gated[0] - faulty[0]
        spread = max(clean[1], faulty[1], gated[1])
        found["gate_recovers"] = {
            "cost": cost,
            "recovered": recovered,
            "share": recovered / cost if cost else None,
            "larger_spread": spread,
            "ok": cost > spread and recovered >= 0.8 * cost,
            # the same seed starts the same network on each bank: per-seed differences see past the seeds' spread
            "cost_per_seed": _per_seed(results, 0, 2),
            "recovered_per_seed": _per_seed(results, 3, 2),
        }
        for metric in METRICS[1:]:  # the same claim on the other metrics, for comparison (the goal is on pixel AP)
            means = [results[ROWS[row].name]["mean"][metric] for row in (0, 2, 3)]
            if None not in means:
                found[f"gate_recovers {metric}"] = {
                    "cost": means[0] - means[1],
                    "recovered": means[2] - means[1],
                    "larger_spread": max(results[ROWS[row].name]["spread"][metric] for row in (0, 2, 3)),
                }
    for keep in ("false", "true"):
        if f"keep_outside {keep}" in notes:
            found[f"keep_outside_{keep}"] = notes[f"keep_outside {keep}"]
    return found


def print_checks(found: dict[str, Any]) -> None:
    """One line per claim."""
    verdict = {True: "met", False: "NOT met"}
    if "clean_minus_no_defect" in found:
        c = found["clean_minus_no_defect"]
        print(
            f"clean - no defect, pixel AP {c['pixel_AP']:+.4f} against the larger seed spread "
            f"{c['larger_spread']:.4f}: {'separated' if c['ok'] else 'NOT separated'}"
        )
    if "gate" in found:
        g = found["gate"]
        kinds = ", ".join(f"{k.removeprefix('recall_')} {v:.2f}" for k, v in g.items() if k.startswith("recall_"))
        print(
            f"gate: recall of injected faults {g['recall']:.3f} ({kinds}; goal >= 0.9), clean records rejected "
            f"{g['false_rejection']:.3f} (goal <= 0.05): {verdict[g['ok']]}"
        )
    if "gate_recovers" in found:
        r = found["gate_recovers"]
        share = "n/a" if r["share"] is None else f"{r['share']:.0%}"
        print(
            f"faults cost {r['cost']:+.4f} pixel AP, the gate recovers {r['recovered']:+.4f} = {share} (goal >= 80%, "
            f"cost above the larger seed spread {r['larger_spread']:.4f}): {verdict[r['ok']]}"
        )
        for name in ("cost", "recovered"):
            values = ", ".join(f"{value:+.4f}" for value in r[f"{name}_per_seed"])
            print(f"  {name} seed by seed (same seed, same initial network): {values}")
        for metric in METRICS[1:]:
            if f"gate_recovers {metric}" in found:
                m = found[f"gate_recovers {metric}"]
                print(
                    f"  {metric}: faults cost {m['cost']:+.4f}, the gate recovers {m['recovered']:+.4f}, "
                    f"larger seed spread {m['larger_spread']:.4f}"
                )
    for keep in ("false", "true"):
        if f"keep_outside_{keep}" in found:
            k = found[f"keep_outside_{keep}"]
            reasons = ", ".join(f"{key} {value}" for key, value in k.items() if key not in ("records", "rejected"))
            print(
                f"tiny diffusion, --keep_outside {keep}: the gate rejected {k['rejected']} of {k['records']} records"
                + (f" ({reasons})" if reasons else "")
                + (": flagged as leaking" if k.get("leak", 0) == k["records"] else "")
            )


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
    parser_.add_argument("--average_last", type=int, default=None, help="default: anogen evaluate's")
    parser_.add_argument("--threads", type=int, default=None)
    parser_.add_argument("--diffusion_steps", type=int, default=10, help="DDIM steps of the tiny diffusion banks")
    parser_.add_argument("--rows", nargs="+", help="only the rows whose name starts with one of these")
    args = parser_.parse_args(argv)
    if args.smoke:
        args.images, args.per_image, args.image_size, args.steps, args.batch_size, args.width = 4, 1, 32, 2, 4, 4
        args.diffusion_steps, args.average_last = 2, 1
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
        bank = row.build(context)  # a bank made before is reused: its notes only
        if bank is None:
            continue
        key = settings_key(row, args)
        if key in stored:
            print(f"{row.name}: stored result reused", file=sys.stderr)
            results[row.name] = stored[key]
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
    found = checks(results, context.notes)
    print()
    print_checks(found)
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
        document = {"machine": machine(), "settings": settings, "banks": results, "checks": found}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
