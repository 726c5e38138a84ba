"""Foreground rules of ``anogen generate --foreground``: IoU against a reference mask, time, and box fallbacks.

Cases (the reference mask in brackets):
- bottle: the real MVTec bottle training images [the minimum enclosing circle of the bottle],
- dark bottle: the same with the background darkened to the bottle's mean brightness [the same circle],
- dark bottle 2448x2048: the dark bottle upscaled to a line camera's size (time is per image),
- dark part: a dark textured part on dark noise, 256 px (``anomalib_anogen.data.toy.dark_part``) [its shape].

Then, for each rule, the bottle boxes (2 per image and defect type, seed 0 as in a bank, ``--max_tries`` 100) that
fall back below 75% on the region and the mean draws per box, with the paper's priors and ``--priors auto``'s (which
it prints), with and without the authors' placement templates.

    python benchmarks/bench_foreground.py [--images 209] [--json runs/bench/foreground.json]
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
from _common import NORMAL, SHARED, SUPPORT, Stopwatch, normal_images, parse, parser, report
from PIL import Image

from anomalib_anogen.data.toy import dark_part, darken_background, disc_reference
from anomalib_anogen.generate.boxes import AUTO_MARGIN, MAX_TRIES, MIN_FOREGROUND, BoxPrior, derived_seed, sample_box
from anomalib_anogen.generate.foreground import foreground_mask
from anomalib_anogen.generate.inputs import choose_priors, discover_cutouts
from anomalib_anogen.generate.placement import load_placement

RULES = ("border", "otsu")
TEMPLATES = SHARED / "anogen_reference" / "mask_template"
LARGE = (2448, 2048)


def _iou(mask: np.ndarray, reference: np.ndarray) -> float:
    return float((mask & reference).sum() / max(1, (mask | reference).sum()))


def _measure(cases: list[tuple[np.ndarray, np.ndarray]], rule: str) -> tuple[float, float, float]:
    """Mean and minimum IoU over ``cases`` and the mean time per image in ms."""
    with Stopwatch() as watch:
        scores = [_iou(foreground_mask(image, rule), reference) for image, reference in cases]
    return float(np.mean(scores)), float(np.min(scores)), 1000 * watch.wall / len(cases)


def _priors(kind: str) -> dict[str, BoxPrior]:
    """The paper's bottle priors, or ``--priors auto``'s from the support masks, as `anogen generate` gets them."""
    sources = discover_cutouts(str(SUPPORT))
    chosen = None if kind == "paper" else "auto"
    return choose_priors(chosen, None, NORMAL, sources, str(SUPPORT), "paste", AUTO_MARGIN, True).table


def _fallbacks(
    images: list[np.ndarray], names: list[str], rule: str, priors: dict[str, BoxPrior], templates: bool
) -> tuple[int, int, list[float]]:
    """Fallback boxes, boxes, and the mean draws per box of each defect type (2 boxes per image and type)."""
    defects = sorted(priors)
    placement = load_placement(TEMPLATES, defects, defects, "bottle") if templates else None
    fallback, tries = 0, {defect: [] for defect in defects}
    for image, stem in zip(images, names, strict=True):
        size = image.shape[0]
        foreground = foreground_mask(image, rule)
        for defect in defects:
            region = foreground & placement.region(defect, size) if placement else foreground
            for box_index in range(2):
                rng = np.random.default_rng(derived_seed(0, "box", stem, defect, box_index))
                placed = sample_box(priors[defect], size, region, rng, MIN_FOREGROUND, MAX_TRIES)
                fallback += placed.fallback
                tries[defect].append(placed.tries)
    return fallback, sum(len(t) for t in tries.values()), [float(np.mean(tries[d])) for d in defects]


def main(argv: list[str] | None = None) -> int:
    """Print the IoU, time and fallback table."""
    args_parser = parser(__doc__)
    args_parser.add_argument("--images", type=int, default=209, help="bottle training images (all: 209)")
    args_parser.add_argument("--large", type=int, default=5, help="2448x2048 images")
    args = parse(args_parser, argv, smoke={"images": 4, "large": 1})
    large, parts = args.large, 3 if args.smoke else 20
    paths = normal_images(args.images)
    bottles = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    references = [disc_reference(image) for image in bottles]
    dark = [darken_background(image, reference) for image, reference in zip(bottles, references, strict=True)]
    upscaled = [
        (
            cv2.resize(image, LARGE, interpolation=cv2.INTER_CUBIC),
            cv2.resize(reference.astype(np.uint8), LARGE, interpolation=cv2.INTER_NEAREST).astype(bool),
        )
        for image, reference in list(zip(dark, references, strict=True))[:large]
    ]
    cases = {
        "bottle": list(zip(bottles, references, strict=True)),
        "dark bottle": list(zip(dark, references, strict=True)),
        "dark bottle 2448x2048": upscaled,
        "dark part": [dark_part(256, seed) for seed in range(parts)],
    }
    results: dict[str, float | int | str] = {"bottle images": len(bottles)}
    for case, items in cases.items():
        for rule in RULES:
            mean, worst, ms = _measure(items, rule)
            results[f"{case}: {rule} IoU mean"] = mean
            results[f"{case}: {rule} IoU min"] = worst
            results[f"{case}: {rule} ms/image"] = ms
    names = [path.stem for path in paths]
    for kind in ("paper", "auto"):
        priors = _priors(kind)
        if kind == "auto":
            for defect, prior in priors.items():
                results[f"auto prior {defect} (w / h)"] = "{:.3f}-{:.3f} / {:.3f}-{:.3f}".format(
                    *prior.width, *prior.height
                )
        for rule in RULES:
            for templates in (False, True):
                if templates and not TEMPLATES.is_dir():
                    continue
                fallback, total, draws = _fallbacks(bottles, names, rule, priors, templates)
                where = f"{kind} priors, {rule}{' + templates' if templates else ''}"
                results[f"fallback boxes, {where}"] = f"{fallback} of {total}"
                results[f"mean draws ({'/'.join(sorted(priors))}), {where}"] = " / ".join(f"{d:.2f}" for d in draws)
    report(results, args.json, "foreground rule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
