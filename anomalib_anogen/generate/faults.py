"""Faulty copies of a bank, to measure what the quality gate catches (docs/quality.md, the benchmark of issue #21).

:func:`inject_faults` copies a bank and spoils a given share of its records in one of three ways, the failures
that users of anomaly generators report most:

* ``invisible``: the defect blended at ``opacity`` (5%) into its normal source, ``N + opacity * (G - N)``: a
  "hole" image without a hole;
* ``off_object``: the box's content (the generated defect with its surroundings) moved, with its box, onto the
  background, shrunk where it does not fit there: a mask on the background;
* ``leak``: Gaussian noise (``noise`` grey levels) over the whole frame: an image changed outside its box.

Records are chosen by a seeded permutation, each faulted at most once. The copy's manifest holds the new
hashes (and the moved box) of every faulted record, with ``fault: {kind, ...}`` and without the ``quality`` the
generation recorded for the unspoilt image; ``faults.json`` lists which record got which fault. Nothing of the
source bank is changed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import png_bytes, sha256_bytes, write_atomic
from anomalib_anogen.data.bank import MANIFEST_NAME, QUALITY_NAME, SUMMARY_NAME, image_path, mask_path

FAULTS = ("invisible", "off_object", "leak")
FAULTS_NAME = "faults.json"
OPACITY = 0.05  # invisible: the defect's share in the faulty image
NOISE = 8.0  # leak: the noise's standard deviation in grey levels
BACKGROUND_SHARE = 0.9  # off_object: share of the moved box that must lie on the background
SHRINK = (1.0, 0.75, 0.5, 0.35, 0.25)  # off_object: scales tried, largest first, until the box fits there


@dataclass(frozen=True)
class Injected:
    """What :func:`inject_faults` did: the copy, and which record got which fault (id -> kind)."""

    bank: Path
    faults: dict[str, str]

    def of_kind(self, kind: str) -> set[str]:
        """The ids of the records spoilt with ``kind``."""
        return {key for key, value in self.faults.items() if value == kind}


def _read_manifest(bank: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (bank / MANIFEST_NAME).read_text().splitlines() if line.strip()]


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _source(bank: Path, record: dict[str, Any]) -> Path:
    source = Path(record["source"])
    return source if source.is_absolute() else bank / source


def invisible(image: np.ndarray, normal: np.ndarray, opacity: float = OPACITY) -> np.ndarray:
    """``normal + opacity * (image - normal)``: the change at ``opacity``."""
    blended = normal.astype(np.float32) + opacity * (image.astype(np.float32) - normal.astype(np.float32))
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def leak(image: np.ndarray, rng: np.random.Generator, noise: float = NOISE) -> np.ndarray:
    """``image`` with Gaussian noise of ``noise`` grey levels on every pixel and channel."""
    return np.clip(np.rint(image.astype(np.float32) + rng.normal(0.0, noise, image.shape)), 0, 255).astype(np.uint8)


def off_object(
    image: np.ndarray, normal: np.ndarray, mask: np.ndarray, background: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The box's content of ``image`` moved (and shrunk if needed) onto ``background`` of ``normal``.

    Returns the faulty image, its new mask and how it was moved (``scale``, ``background_share``). The place is
    the one with the largest share of background among random tries, at the largest scale of :data:`SHRINK`
    where that share reaches :data:`BACKGROUND_SHARE`.
    """
    ys, xs = np.nonzero(mask > 0)
    top, left = ys.min(), xs.min()
    patch = image[top : ys.max() + 1, left : xs.max() + 1]
    inside = (mask[top : ys.max() + 1, left : xs.max() + 1] > 0).astype(np.uint8)
    rows, cols = mask.shape
    best: tuple[float, float, int, int] | None = None  # (share, scale, y, x)
    for scale in SHRINK:
        height, width = max(1, round(patch.shape[0] * scale)), max(1, round(patch.shape[1] * scale))
        if height > rows or width > cols:
            continue
        small = cv2.resize(inside, (width, height), interpolation=cv2.INTER_NEAREST) > 0
        if not small.any():
            continue
        for _ in range(200):
            y, x = int(rng.integers(0, rows - height + 1)), int(rng.integers(0, cols - width + 1))
            share = float(background[y : y + height, x : x + width][small].mean())
            if best is None or share > best[0]:
                best = (share, scale, y, x)
        if best is not None and best[0] >= BACKGROUND_SHARE:
            break
    if best is None:
        msg = "no place for the box in the image"
        raise ValueError(msg)
    share, scale, y, x = best
    height, width = max(1, round(patch.shape[0] * scale)), max(1, round(patch.shape[1] * scale))
    moved = cv2.resize(np.ascontiguousarray(patch), (width, height), interpolation=cv2.INTER_AREA)
    small = cv2.resize(inside, (width, height), interpolation=cv2.INTER_NEAREST) > 0
    faulty, new_mask = normal.copy(), np.zeros_like(mask)
    window = faulty[y : y + height, x : x + width]
    window[small] = moved[small]
    new_mask[y : y + height, x : x + width][small] = 255
    return faulty, new_mask, {"scale": scale, "background_share": round(share, 4), "x": x, "y": y}


def inject_faults(
    bank: str | Path,
    output: str | Path,
    shares: dict[str, float] | None = None,
    seed: int = 0,
    opacity: float = OPACITY,
    noise: float = NOISE,
) -> Injected:
    """Copy ``bank`` to ``output`` and spoil ``shares`` of its records; return which record got which fault.

    Default shares: 30% invisible, 10% off the object, 10% leaking. The faults are also written to
    ``output/faults.json``.

    ``off_object`` needs the bank's foreground rule (``bank.json`` settings) to find the background.
    """
    from anomalib_anogen.generate.foreground import foreground_mask

    source, target = Path(bank).expanduser(), Path(output).expanduser()
    shares = {"invisible": 0.3, "off_object": 0.1, "leak": 0.1} if shares is None else dict(shares)
    unknown = sorted(set(shares) - set(FAULTS))
    if unknown or sum(shares.values()) > 1 or min(shares.values(), default=0) < 0:
        msg = f"fault shares {shares}: kinds must be {', '.join(FAULTS)}, each >= 0, together at most 1"
        raise AnogenInputError(msg)
    if not (source / MANIFEST_NAME).is_file():
        msg = f"{source}: not an anomaly bank (no {MANIFEST_NAME})"
        raise AnogenInputError(msg)
    if target.exists():
        msg = f"{target}: exists; inject faults into a new folder"
        raise AnogenInputError(msg)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(QUALITY_NAME, FAULTS_NAME, "bank.lock"))
    records = _read_manifest(target)
    summary = json.loads((target / SUMMARY_NAME).read_text()) if (target / SUMMARY_NAME).is_file() else {}
    rule = str((summary.get("settings") or {}).get("foreground", "border"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    chosen: dict[int, str] = {}
    start = 0
    for kind in FAULTS:
        count = round(shares.get(kind, 0.0) * len(records))
        chosen.update({int(index): kind for index in order[start : start + count]})
        start += count
    backgrounds: dict[str, np.ndarray] = {}
    for index, kind in sorted(chosen.items()):
        record = records[index]
        record_rng = np.random.default_rng([seed, index])
        image_file = image_path(target, record["defect"], record["id"])
        mask_file = mask_path(target, record["defect"], record["id"])
        image, normal = _rgb(image_file), _rgb(_source(target, record))
        detail: dict[str, Any] = {"kind": kind}
        if kind == "invisible":
            image, detail["opacity"] = invisible(image, normal, opacity), opacity
        elif kind == "leak":
            image, detail["noise"] = leak(image, record_rng, noise), noise
        else:
            key = str(_source(target, record))
            if key not in backgrounds:
                backgrounds[key] = ~foreground_mask(normal, rule)
            mask = np.asarray(Image.open(mask_file).convert("L"))
            image, mask, moved = off_object(image, normal, mask, backgrounds[key], record_rng)
            detail.update(moved)
            data = png_bytes(mask)
            write_atomic(mask_file, data)
            record["mask_sha256"] = sha256_bytes(data)
            record["box"] = None  # the moved box is the mask file
        data = png_bytes(image)
        write_atomic(image_file, data)
        record["image_sha256"] = sha256_bytes(data)
        for key in ("quality", "rejected", "rejected_for"):
            record.pop(key, None)
        record["fault"] = detail
    write_atomic(target / MANIFEST_NAME, "".join(json.dumps(r) + "\n" for r in records).encode())
    if summary:
        for entry in ((summary.get("quality") or {}).get("defects") or {}).values():
            for key in [k for k in entry if k not in ("reference", "limits")]:
                entry.pop(key)  # the counts and spreads described the unspoilt records; references and limits hold
        summary["faults"] = {kind: sum(1 for k in chosen.values() if k == kind) for kind in FAULTS}
        write_atomic(target / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode())
    faults = {records[index]["id"]: kind for index, kind in sorted(chosen.items())}
    write_atomic(target / FAULTS_NAME, (json.dumps({"seed": seed, "faults": faults}, indent=2) + "\n").encode())
    return Injected(target, faults)


def gate_scores(faults: dict[str, str], rejected: set[str], records: set[str]) -> dict[str, float]:
    """How well a gate's rejections (``rejected`` of ``records``) match the injected ``faults`` (id -> kind).

    ``recall``: share of faulted records rejected (and ``recall_<kind>`` per kind); ``false_rejection``: share of
    clean records rejected.
    """
    clean = records - set(faults)
    scores = {
        "recall": len(rejected & set(faults)) / max(1, len(faults)),
        "false_rejection": len(rejected & clean) / max(1, len(clean)),
    }
    for kind in FAULTS:
        chosen = {key for key, value in faults.items() if value == kind}
        if chosen:
            scores[f"recall_{kind}"] = len(rejected & chosen) / len(chosen)
    return {key: round(value, 4) for key, value in scores.items()}


def main(argv: list[str] | None = None) -> Injected:
    """``python -m anomalib_anogen.generate.faults BANK OUTPUT``: a copy of BANK with injected faults."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m anomalib_anogen.generate.faults", description=inject_faults.__doc__
    )
    parser.add_argument("bank", help="the bank to copy (left unchanged)")
    parser.add_argument("output", help="the faulty copy to write (a new folder)")
    for kind, share in (("invisible", 0.3), ("off_object", 0.1), ("leak", 0.1)):
        parser.add_argument(f"--{kind}", type=float, default=share, help=f"share of {kind} records ({share})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shares = {kind: getattr(args, kind) for kind in FAULTS}
    try:
        injected = inject_faults(args.bank, args.output, shares, args.seed)
    except AnogenInputError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    counts = ", ".join(f"{kind} {len(injected.of_kind(kind))}" for kind in FAULTS)
    print(f"{injected.bank}: {len(injected.faults)} faulty records ({counts}); listed in {FAULTS_NAME}")
    return injected


if __name__ == "__main__":
    main()
