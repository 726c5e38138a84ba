"""Parts that the plugin's models share: the synthetic-anomaly training mixin and AnoGen's weak rule."""

from .synthetic import SyntheticAnomalyModel, checked_generator, degenerate_normalisation
from .weak import (
    WEAK_SCOPES,
    WeakScope,
    validate_p_cutoff,
    validate_weak_scope,
    weak_pixel_weights,
    weak_weights_from_probability,
)

__all__ = [
    "WEAK_SCOPES",
    "SyntheticAnomalyModel",
    "WeakScope",
    "checked_generator",
    "degenerate_normalisation",
    "validate_p_cutoff",
    "validate_weak_scope",
    "weak_pixel_weights",
    "weak_weights_from_probability",
]
