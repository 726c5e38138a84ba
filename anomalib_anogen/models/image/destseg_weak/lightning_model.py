"""DestsegWeak: DeSTSeg trained with AnoGen's weakly-supervised segmentation loss.

Gui, Gao et al., "Few-Shot Anomaly-Driven Generation for Anomaly Classification and
Segmentation", ECCV 2024, whose strongest configuration is DeSTSeg with box-supervised
generated anomalies. ``DestsegWeak`` is ``Destseg`` (same network, phases, optimisers and
inference) with ``DestsegWeakLoss`` in the segmentation phase: the weak rule of ``DraemWeak``
on the focal term. The student phase has no segmentation target and is unchanged.
"""

from pathlib import Path
from typing import Any

from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from anomalib_anogen.data.generators import build_generator
from anomalib_anogen.models.image.destseg.lightning_model import (
    DestsegTraining,
    validate_probability_and_rates,
    validate_schedule,
)
from anomalib_anogen.models.image.draem_weak.loss import WeakScope

from .loss import DestsegWeakLoss

__all__ = ["DestsegWeak"]


class DestsegWeak(DestsegTraining, AnomalibModule):
    """DeSTSeg with AnoGen's weak (box-level) supervision on the segmentation network's focal loss.

    Args:
        pretrained_weights: Local file of ImageNet resnet18 weights for the frozen teacher (a timm or
            torchvision state dict, ``.pth``/``.pt`` or ``.safetensors``). ``"random"``: random teacher,
            for tests only. ``None`` (default): no teacher weights; fit/test/predict refuse to start unless
            a checkpoint supplies them. Nothing is downloaded.
        dtd_dir: Folder of texture images for Perlin anomalies; ``None``: Perlin noise alone. A missing
            folder is an error; nothing is downloaded.
        p_cutoff: In-box pixels of a box-masked sample whose predicted anomaly probability (detached) is
            below this get no focal loss. Must lie in [0, 1).
        weak_scope: ``"box"`` applies the rule to box-masked samples only; ``"all"`` to every sample, as
            the authors' released code does.
        beta: anomalib's blend factor (share of the texture in the anomaly), a number or a range.
        anomaly_probability: Share of Perlin-sourced training images that get an anomaly (DeSTSeg: 1.0).
        generator: Synthetic-anomaly source: ``perlin`` (Perlin/DTD, exact masks) or ``anogen`` (generated
            anomalies from ``bank_dir`` with box masks, mixed with Perlin/DTD), or a ``class_path`` dict.
        bank_dir: Anomaly bank made by ``anogen generate`` (generator ``anogen`` only).
        bank_probability: Share of samples drawn from the bank (paper: 0.5).
        exclude_defects: Bank defect types to leave out.
        steps: Total training steps (DeSTSeg: 5000); sets the trainer's ``max_steps``.
        de_st_steps: Steps of the student phase (DeSTSeg: 1000).
        T: Image score = mean of the ``T`` largest anomaly-map values (DeSTSeg: 100).
        student_lr: SGD learning rate of the student (DeSTSeg: 0.4).
        residual_lr: SGD learning rate of the residual blocks (DeSTSeg: 0.1).
        head_lr: SGD learning rate of the ASPP head (DeSTSeg: 0.01).
        gamma: Focal-loss focusing parameter (DeSTSeg: 4).
        pre_processor: Pre-processor instance or flag to use the default (resize to 256, no normalisation).
        post_processor: Post-processor instance or flag to use the default.
        evaluator: Evaluator instance or flag to use the default.
        visualizer: Visualizer instance or flag to use the default.
    """

    def __init__(
        self,
        pretrained_weights: str | Path | None = None,
        dtd_dir: Path | str | None = None,
        p_cutoff: float = 0.1,
        weak_scope: WeakScope = "box",
        beta: float | tuple[float, float] = (0.2, 1.0),
        anomaly_probability: float = 1.0,
        generator: str | dict[str, Any] = "perlin",
        bank_dir: Path | str | None = None,
        bank_probability: float = 0.5,
        exclude_defects: list[str] | None = None,
        steps: int = 5000,
        de_st_steps: int = 1000,
        T: int = 100,  # noqa: N803 - the paper's name
        student_lr: float = 0.4,
        residual_lr: float = 0.1,
        head_lr: float = 0.01,
        gamma: float = 4.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # Validate before the networks are built, so bad input fails fast.
        validate_schedule(steps, de_st_steps, T)
        rates = {"student_lr": student_lr, "residual_lr": residual_lr, "head_lr": head_lr}
        validate_probability_and_rates(anomaly_probability, rates)
        loss = DestsegWeakLoss(p_cutoff=p_cutoff, weak_scope=weak_scope, gamma=gamma)
        augmenter = build_generator(
            generator,
            dtd_dir=dtd_dir,
            probability=anomaly_probability,
            blend_factor=beta,
            bank_dir=bank_dir,
            bank_probability=bank_probability,
            exclude_defects=exclude_defects or [],
        )
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.loss = loss
        self._build(pretrained_weights, augmenter, steps, de_st_steps, T, rates)
