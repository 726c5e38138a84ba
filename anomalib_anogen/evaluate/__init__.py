"""``anogen evaluate``: judge an anomaly bank by what a plain segmentation network learns from it.

The protocol of the generation papers (AnomalyDiffusion, DualAnoDiff, SeaS): a U-Net trained only on the
bank's images and masks, tested on real anomalies with their masks. See docs/evaluate.md.
"""
