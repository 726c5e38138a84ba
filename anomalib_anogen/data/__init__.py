"""Data helpers of anomalib-anogen: synthetic-anomaly sources and the demo dataset."""
