"""What every model of this plugin shares, as a mixin placed before ``AnomalibModule``.

The models subclass ``AnomalibModule`` directly (anomalib resolves ``--model NAME`` among its
direct subclasses only), so shared behaviour comes from a mixin rather than a base model.
"""

from anomalib import LearningType
from anomalib.metrics import Evaluator

from anomalib_anogen.metrics import anogen_evaluator


class SyntheticAnomalyModel:
    """One-class training on synthetic anomalies, evaluated with the metrics AnoGen reports."""

    @property
    def learning_type(self) -> LearningType:
        """One-class: trains on normal images only, anomalies are synthesized."""
        return LearningType.ONE_CLASS

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image and pixel AUROC, AP and F1, plus pixel AUPRO: the metrics AnoGen reports."""
        return anogen_evaluator()
