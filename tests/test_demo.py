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
