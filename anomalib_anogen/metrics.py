"""The metrics AnoGen reports, as one anomalib ``Evaluator`` shared by this package's models.

anomalib's default evaluator reports AUROC and F1 only; AnoGen's headline numbers are pixel AP
(and AUPRO), so the plugin's models add AUPR and AUPRO at image and pixel level.
"""

from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Score


def anogen_evaluator() -> Evaluator:
    """Image AUROC/AP/F1 and pixel AUROC/AP/PRO/F1 on the test set."""
    test_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
    ]
    return Evaluator(test_metrics=test_metrics)
