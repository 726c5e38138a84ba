"""Does the paste backend keep real defects real? Aspect ratio and colours of pasted defects against their support.

Measured on a paste bank's files alone (any paste bank, of any version), per record against the support anomaly
it was cut from (the record's ``support_image`` and its ``_mask``):

- the **defect's pixels**, in the bank image and in its support anomaly alike, are those whose change (ΔE)
  is at least half the 90th percentile of the change in the box: against the normal source in the bank, against
  the support image inpainted over its dilated mask (generate/quality.py) for the support anomaly, scaled to the
  bank's resolution. Measured the same way on both, the edges that resampling blurs count on both sides;
- **aspect error**: ``|ln(e_pasted / e_support)|``, ``e`` the elongation of those pixels (the ratio of their
  principal extents, from their second moments: 1 for a disc, length / width for a bar, at any angle). 0 is the
  same shape; ``ln 1.5 = 0.41`` is one side 1.5 times too long for the other;
- **colour shift**: ΔE between the mean CIELAB colours of the two sets of pixels; **tint**: the same in the
  a/b plane only (hue and saturation, not brightness: a pink or green cast);
- **out of range**: the share of the pasted pixels whose L, a or b lies outside the support anomaly's own
  [1st, 99th] percentile range of that channel, widened by 2 units.

Cases: the real bottle (3-shot support, the paper's priors) and the toy dark product
(``anomalib_anogen.data.toy.make_dark_product``: dark beads and thin cuts on a dark textured part,
``--priors auto``).

    python benchmarks/bench_paste.py [--images 20] [--json runs/bench/paste.json]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from _common import NORMAL, SUPPORT, machine, parser
from PIL import Image

from anomalib_anogen.generate.quality import change_map, lab, support_change

TOLERANCE = 2.0  # Lab units added to each side of the support's percentile range


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _pasted(change: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The pixels of the box that changed at least half as much as its 90th percentile."""
    values = change[box]
    if not values.size or values.max() <= 0:
        return np.zeros_like(box)
    return box & (change >= 0.5 * np.quantile(values, 0.9)) & (change > 0)


def _elongation(mask: np.ndarray) -> float:
    """The ratio of the principal extents of the mask's pixels, each a unit square.

    1 for a disc or a square, about length / width for a bar, at any angle.
    """
    ys, xs = np.nonzero(mask)
    covariance = np.cov(np.stack([xs, ys]).astype(np.float64)) if len(xs) > 1 else np.zeros((2, 2))
    low, high = np.linalg.eigvalsh(covariance) + 1 / 12
    return float(np.sqrt(high / low))


def record_fidelity(bank: Path, record: dict) -> tuple[float, float, float, float] | None:
    """Aspect error, colour shift (ΔE), tint (chroma shift) and out-of-range share of one paste record.

    ``None`` when nothing was pasted.
    """
    source = Path(record["source"])
    normal = _rgb(source if source.is_absolute() else bank / source)
    image = _rgb(bank / "images" / record["defect"] / f"{record['id']}.png")
    box = np.asarray(Image.open(bank / "masks" / record["defect"] / f"{record['id']}_mask.png").convert("L")) > 0
    pasted = _pasted(change_map(image, normal), box)
    if pasted.sum() < 2:
        return None
    support_file = Path(record["support_image"])
    support = _rgb(support_file)
    support_mask = np.asarray(Image.open(support_file.with_name(f"{support_file.stem}_mask.png")).convert("L")) > 127
    if support_mask.shape != support.shape[:2]:
        support_mask = cv2.resize(support_mask.astype(np.uint8), support.shape[1::-1], interpolation=0) > 0
    # the support anomaly measured the same way: its change against itself inpainted, at the bank's resolution
    scale = image.shape[1] / support.shape[1]
    size = (image.shape[1], max(1, round(support.shape[0] * scale)))
    support = cv2.resize(support, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    support_mask = cv2.resize(support_mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    support_change_map, ring = support_change(support, support_mask)
    core = _pasted(support_change_map, ring)
    aspect_error = abs(np.log(_elongation(pasted) / _elongation(core)))
    ours, theirs = lab(image)[pasted], lab(support)[core]
    shift = float(np.linalg.norm(ours.mean(axis=0) - theirs.mean(axis=0)))
    tint = float(np.linalg.norm(ours.mean(axis=0)[1:] - theirs.mean(axis=0)[1:]))
    low, high = np.percentile(theirs, 1, axis=0) - TOLERANCE, np.percentile(theirs, 99, axis=0) + TOLERANCE
    outside = float(((ours < low) | (ours > high)).any(axis=1).mean())
    return float(aspect_error), shift, tint, outside


def bank_fidelity(bank: Path) -> dict[str, dict[str, float]]:
    """Per defect type: median and 90th percentile of the aspect error, mean colour shift, mean out-of-range."""
    records = [json.loads(line) for line in (bank / "manifest.jsonl").read_text().splitlines() if line.strip()]
    found: dict[str, list[tuple[float, float, float, float]]] = {}
    for record in records:
        measured = record_fidelity(bank, record)
        if measured is not None:
            found.setdefault(record["defect"], []).append(measured)
    table = {}
    for defect, values in sorted(found.items()):
        array = np.asarray(values)
        table[defect] = {
            "records": len(values),
            "aspect_error_median": round(float(np.median(array[:, 0])), 3),
            "aspect_error_p90": round(float(np.quantile(array[:, 0], 0.9)), 3),
            "sides_off_by_1.5x": round(float((array[:, 0] > np.log(1.5)).mean()), 3),
            "colour_shift_de": round(float(array[:, 1].mean()), 2),
            "tint_ab": round(float(array[:, 2].mean()), 2),
            "out_of_range": round(float(array[:, 3].mean()), 3),
        }
    return table


def _generate(normal: Path, support: Path, output: Path, images: int, priors: str | None) -> Path:
    from anomalib_anogen.generate.command import generate
    from anomalib_anogen.generate.options import GenerateOptions

    return generate(
        GenerateOptions(
            normal=str(normal),
            backend="paste",
            support=str(support),
            priors=priors,
            output=str(output),
            max_images=images,
            progress=False,
        )
    )


def main() -> None:
    """Print the aspect and colour table of the bottle and dark-product paste banks (or of ``--bank``)."""
    args_parser = parser(__doc__)
    args_parser.add_argument("--images", type=int, default=20, help="normal images per bank")
    args_parser.add_argument("--bank", type=Path, action="append", help="measure this paste bank instead")
    args = args_parser.parse_args()
    images = 2 if args.smoke else args.images
    from anomalib_anogen.data.toy import make_dark_product

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_paste_") as folder:
        banks = {str(bank): bank for bank in args.bank or []}
        if not banks:
            dark = make_dark_product(Path(folder) / "dark", n_normal=images)
            banks = {
                "bottle (paper priors)": _generate(NORMAL, SUPPORT, Path(folder) / "bottle", images, None),
                "dark product (--priors auto)": _generate(
                    dark / "normal", dark / "support", Path(folder) / "dark_bank", images, "auto"
                ),
            }
        for name, bank in banks.items():
            results[name] = bank_fidelity(bank)
    rows = [
        f"| {name} | {defect} | {v['records']} | {v['aspect_error_median']} / {v['aspect_error_p90']} | "
        f"{v['sides_off_by_1.5x']:.0%} | {v['colour_shift_de']} | {v['tint_ab']} | {v['out_of_range']:.1%} |"
        for name, table in results.items()
        for defect, v in table.items()
    ]
    header = (
        "| bank | defect | records | aspect error median / p90 | elongation off by > 1.5x | colour shift (ΔE) | "
        "tint (Δab) | pasted pixels out of the support's range |\n|---|---|---|---|---|---|---|---|"
    )
    print("\n".join([header, *rows]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
