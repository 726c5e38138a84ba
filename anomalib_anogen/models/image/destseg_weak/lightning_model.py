"""DestsegWeak: DeSTSeg trained with AnoGen's weakly-supervised segmentation loss.

Gui, Gao et al., "Few-Shot Anomaly-Driven Generation for Anomaly Classification and
Segmentation", ECCV 2024, whose strongest configuration is DeSTSeg with box-supervised
generated anomalies. ``DestsegWeak`` is ``Destseg`` (same network, phases, optimisers and
inference) with ``DestsegWeakLoss`` in the segmentation phase: the weak rule of ``DraemWeak``
on the focal term. The student phase has no segmentation target and is unchanged.

The training mix is the authors' DeSTSeg-AnoGen one (``MVTecDataset_new``): with ``generator:
anogen``, half the samples are generated anomalies from the bank (none of its clean source images,
unlike DRAEM's mix) and half Perlin/DTD anomalies, every one anomalous (``anomaly_probability`` 1.0);
rotation follows DeSTSeg's per-category rule (``rotation``), for bank samples too.
"""

from pathlib import Path
from typing import Any

from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from anomalib_anogen.data.generators.rotation import RotationRule
from anomalib_anogen.models.components import WeakScope, checked_generator
from anomalib_anogen.models.image.destseg.lightning_model import Destseg

from .loss import DestsegWeakLoss

__all__ = ["DestsegWeak"]


class DestsegWeak(Destseg):
    """DeSTSeg with AnoGen's weak (box-level) supervision on the segmentation network's focal loss.

    Args:
        pretrained_weights: Local file of ImageNet resnet18 weights for the frozen teacher (a timm or
            torchvision state dict, ``.pth``/``.pt`` or ``.safetensors``). ``"random"``: random teacher,
            for tests only. ``None`` (default): no teacher weights; fit/test/predict refuse to start unless
            a checkpoint supplies them. Nothing is downloaded.
        dtd_dir: Folder of texture images for Perlin anomalies; ``None``: Perlin noise alone. A missing
            folder is an error when training starts (like ``bank_dir``, it is not needed to test, export or
            load a trained model); nothing is downloaded.
        p_cutoff: In-box pixels of a box-masked sample whose predicted anomaly probability (detached) is
            below this get no focal loss. In [0, 1).
        weak_scope: ``"box"`` applies the rule to box-masked samples only; ``"all"`` to every sample, as
            the authors' released code does.
        beta: anomalib's blend factor (share of the texture in the anomaly), a number in [0, 1] or a range
            within it.
        anomaly_probability: Share of Perlin-sourced training images that get an anomaly, in [0, 1]
            (DeSTSeg: 1.0).
        generator: Synthetic-anomaly source: ``perlin`` (Perlin/DTD, exact masks) or ``anogen`` (generated
            anomalies from ``bank_dir`` with box masks, mixed with Perlin/DTD), or a ``class_path`` dict.
        bank_dir: Anomaly bank made by ``anogen generate`` (generator ``anogen`` only).
        bank_probability: Share of samples drawn from the bank, in [0, 1] (paper: 0.5).
        exclude_defects: Bank defect types to leave out.
        allow_incomplete_bank: Train on the finished records of a bank whose ``anogen generate`` run did
            not finish, with a warning. Default: refuse it.
        steps: Total training steps, a positive integer (DeSTSeg: 5000); sets the trainer's ``max_steps``.
        de_st_steps: Steps of the student phase; 0 <= de_st_steps < steps (DeSTSeg: 1000).
        T: Image score = mean of the ``T`` largest anomaly-map values, a positive integer (DeSTSeg: 100).
        student_lr: SGD learning rate of the student, positive (DeSTSeg: 0.4).
        residual_lr: SGD learning rate of the residual blocks, positive (DeSTSeg: 0.1).
        head_lr: SGD learning rate of the ASPP head, positive (DeSTSeg: 0.01).
        gamma: Focal-loss focusing parameter, non-negative (DeSTSeg: 4).
        rotation: Rotation of training images (and generated anomalies with their masks): ``auto``
            (default) applies DeSTSeg's rule for the datamodule's MVTec AD category (a quarter turn and
            ±5° for bottle, carpet, grid, hazelnut, leather, screw, tile; ±5° for cable, wood, zipper;
            none for the others) and none for any other category (your own product: a turned part may
            be a defect); or ``none``, ``slight`` (±5°), ``full`` (quarter turn and ±5°).
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
        allow_incomplete_bank: bool = False,
        steps: int = 5000,
        de_st_steps: int = 1000,
        T: int = 100,  # noqa: N803 - the paper's name
        student_lr: float = 0.4,
        residual_lr: float = 0.1,
        head_lr: float = 0.01,
        gamma: float = 4.0,
        rotation: RotationRule = "auto",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # Validate the weak loss and the generator choice first; Destseg checks the rest before any network.
        loss = DestsegWeakLoss(p_cutoff=p_cutoff, weak_scope=weak_scope, gamma=gamma)
        generator_spec = checked_generator(
            generator,
            dtd_dir=dtd_dir,
            anomaly_probability=anomaly_probability,
            beta=beta,
            bank_dir=bank_dir,
            bank_probability=bank_probability,
            exclude_defects=exclude_defects,
            allow_incomplete_bank=allow_incomplete_bank,
            clean_share=0.0,  # the authors' DeSTSeg-AnoGen: every bank draw is a generated anomaly
        )
        super().__init__(
            pretrained_weights=pretrained_weights,
            dtd_dir=dtd_dir,
            beta=beta,
            anomaly_probability=anomaly_probability,
            steps=steps,
            de_st_steps=de_st_steps,
            T=T,
            student_lr=student_lr,
            residual_lr=residual_lr,
            head_lr=head_lr,
            gamma=gamma,
            rotation=rotation,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.loss = loss
        self.generator_spec = generator_spec
