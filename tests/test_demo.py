"""The demo's prediction sheet: image | anomaly map over the image | ground truth, one row per test image."""

from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_anogen.demo import write_prediction_sheet


def test_prediction_sheet_rows_show_image_overlay_and_truth(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    truth = np.zeros((64, 64), bool)
    truth[20:40, 10:30] = True
    anomaly_map = np.zeros((32, 32), np.float32)  # half the image's size: scaled up to it
    anomaly_map[10:20, 5:15] = 1.0
    rows = [(image, anomaly_map, truth, "blob 0.93"), (image, anomaly_map, None, "good 0.12")]
    write_prediction_sheet(rows, tmp_path / "sheet" / "predictions.png")
    sheet = np.asarray(Image.open(tmp_path / "sheet" / "predictions.png").convert("RGB"))
    assert sheet.shape == (2 * 64, 3 * 64, 3)
    first, overlay, gt = sheet[:64, :64], sheet[:64, 64:128], sheet[:64, 128:]
    assert np.array_equal(first[32:], image[32:])  # the title sits in the top left corner only
    assert not np.array_equal(first[:12, :40], image[:12, :40])
    assert not np.array_equal(overlay, image)
    shift = overlay.astype(int) - image.astype(int) // 2  # what the colour map adds over the half-faded image
    hot, cold = shift[22:38, 12:28], shift[48:, 48:]
    assert (hot[..., 0] - hot[..., 2]).mean() > 50 > (cold[..., 0] - cold[..., 2]).mean()  # red where the map is high
    assert (gt[truth] == 255).all() and (gt[~truth] == 0).all()
    assert (sheet[64:, 128:] == 0).all()  # no ground truth: an empty mask


def test_score_separation_and_the_rows_the_sheet_shows() -> None:
    from anomalib_anogen.demo import score_separation, sheet_rows

    root = Path("test")
    scores = {
        root / "good" / "000.png": 0.2,
        root / "good" / "001.png": 0.6,
        root / "crack" / "000.png": 0.7,
        root / "crack" / "001.png": 0.4,
        root / "crack" / "002.png": 0.9,
        root / "hole" / "000.png": 0.8,
    }
    separation = score_separation(scores)
    assert separation.good == (0.2, 0.6) and separation.defective == (0.4, 0.9)
    assert separation.image_auroc == 7 / 8  # of the 8 (defective, good) pairs only (0.4, 0.6) is in the wrong order
    assert (separation.flagged, separation.passed) == (0.75, 0.5)
    assert "image AUROC 0.875" in separation.describe()
    rows = sheet_rows(scores)  # good first, then per type its lowest- and highest-scored image
    assert rows == [
        root / "good" / "000.png",
        root / "good" / "001.png",
        root / "crack" / "001.png",
        root / "crack" / "002.png",
        root / "hole" / "000.png",
    ]
