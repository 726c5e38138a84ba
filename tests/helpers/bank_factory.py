"""Small anomaly banks in ``anogen generate``'s format, made by the tests themselves."""

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_anogen.data.bank import MANIFEST_NAME, SUMMARY_NAME, image_path, mask_path


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixels_sha256(array: np.ndarray) -> str:
    """Hex sha256 of a uint8 pixel array (to compare decoded images)."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).hexdigest()


def make_bank(
    bank_dir: Path,
    sources: list[Path],
    defects: tuple[str, ...] = ("scratch", "dent"),
    size: int = 64,
    seed: int = 0,
) -> list[dict]:
    """Write a bank: for each source and defect, one image with a bright box painted in, and its box mask.

    Source images are copied into ``bank_dir/normal`` at ``size`` so pixel comparisons are exact;
    records name them relative to the bank, as a portable bank does.
    """
    rng = np.random.default_rng(seed)
    (bank_dir / "normal").mkdir(parents=True, exist_ok=True)
    records = []
    for source_index, source in enumerate(sources):
        normal = np.asarray(Image.open(source).convert("RGB").resize((size, size), Image.BILINEAR))
        normal_path = bank_dir / "normal" / f"{source_index:03d}.png"
        Image.fromarray(normal).save(normal_path)
        for defect in defects:
            record_id = f"{defect}_{source_index:03d}"
            width, height = rng.integers(size // 8, size // 3, 2)
            left, top = (
                rng.integers(size // 8, size - width - size // 8),
                rng.integers(size // 8, size - height - size // 8),
            )
            mask = np.zeros((size, size), np.uint8)
            mask[top : top + height, left : left + width] = 255
            anomalous = normal.copy()
            anomalous[mask > 0] = (anomalous[mask > 0] // 4 + np.array([190, 190, 40])).clip(0, 255).astype(np.uint8)
            for path, array in (
                (image_path(bank_dir, defect, record_id), anomalous),
                (mask_path(bank_dir, defect, record_id), mask),
            ):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
            records.append(
                {
                    "id": record_id,
                    "defect": defect,
                    "source": str(normal_path.relative_to(bank_dir)),
                    "source_sha256": sha256_of(normal_path),
                    "box": {
                        "cx": float(left + width / 2),
                        "cy": float(top + height / 2),
                        "w": int(width),
                        "h": int(height),
                        "angle": 0.0,
                    },
                    "seed": seed,
                    "backend": "test",
                    "image_sha256": sha256_of(image_path(bank_dir, defect, record_id)),
                    "mask_sha256": sha256_of(mask_path(bank_dir, defect, record_id)),
                },
            )
    (bank_dir / MANIFEST_NAME).write_text("".join(json.dumps(record) + "\n" for record in records))
    (bank_dir / SUMMARY_NAME).write_text(json.dumps({"records": len(records), "defects": list(defects), "size": size}))
    return records
