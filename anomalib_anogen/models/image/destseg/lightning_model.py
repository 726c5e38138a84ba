"""DeSTSeg as an anomalib model.

Zhang et al., "DeSTSeg: Segmentation Guided Denoising Student-Teacher for Anomaly Detection",
CVPR 2023. Training has two phases on synthetic (Perlin/DTD) anomalies: for ``de_st_steps``
steps only the denoising student learns (cosine distance to the frozen teacher's features of
the clean image); then, until ``steps``, only the segmentation network learns (focal + L1).
Each phase has its own SGD optimiser, stepped by hand on Lightning's ``global_step``.

``DestsegWeak`` subclasses ``Destseg`` and changes only the segmentation loss and the anomaly
source (anomalib's CLI resolves ``--model DestsegWeak`` by its short name: jsonargparse looks for
subclasses of ``AnomalibModule`` at any depth).
"""

import logging
from pathlib import Path
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_anogen.arguments import ModelArgumentError, check_argument, check_blend, check_choice
from anomalib_anogen.core.checks import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, UNIT_INTERVAL
from anomalib_anogen.data.generators import (
    ROTATION_RULES,
    destseg_rotation,
    generate_batch,
    resolve_generator,
    resolve_rotation_rule,
)
from anomalib_anogen.data.generators.rotation import RotationRule
from anomalib_anogen.data.synthetic import SyntheticBatch
from anomalib_anogen.models.components import SyntheticAnomalyModel

from .loss import DestsegLoss
from .torch_model import WEIGHTS_HINT, DestsegModel

__all__ = ["Destseg"]

logger = logging.getLogger(__name__)

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


def validate_schedule(steps: int, de_st_steps: int, top_k: int) -> None:
    """Check ``steps``, ``de_st_steps`` and ``T`` before any network is built."""
    check_argument("steps", steps, POSITIVE_INT, "DeSTSeg: 5000.")
    check_argument("de_st_steps", de_st_steps, NON_NEGATIVE_INT, "DeSTSeg: 1000.")
    check_argument("T", top_k, POSITIVE_INT, "DeSTSeg: 100.")
    if de_st_steps >= steps:
        msg = (
            f"de_st_steps ({de_st_steps}) must be smaller than steps ({steps}): the student trains for de_st_steps "
            "steps, the segmentation network for the remaining steps - de_st_steps (DeSTSeg: 1000 of 5000)."
        )
        raise ModelArgumentError(msg)


PUBLISHED_RATES = {"student_lr": 0.4, "residual_lr": 0.1, "head_lr": 0.01}


def validate_probability_and_rates(anomaly_probability: float, rates: dict[str, float]) -> dict[str, float]:
    """Check the anomaly share and the learning rates; return the rates as floats."""
    check_argument("anomaly_probability", anomaly_probability, UNIT_INTERVAL, "DeSTSeg: 1.0.")
    return {
        name: check_argument(name, value, POSITIVE, f"DeSTSeg: {PUBLISHED_RATES[name]}.")
        for name, value in rates.items()
    }


class Destseg(SyntheticAnomalyModel, AnomalibModule):
    """DeSTSeg: denoising student-teacher with a segmentation network (Zhang et al., CVPR 2023).

    Args:
        pretrained_weights: Local file of ImageNet resnet18 weights for the frozen teacher (a timm or
            torchvision state dict, ``.pth``/``.pt`` or ``.safetensors``). ``"random"``: random teacher,
            for tests only. ``None`` (default): no teacher weights; fit/test/predict refuse to start unless
            a checkpoint supplies them (e.g. ``anomalib export --ckpt_path``). Nothing is downloaded.
        dtd_dir: Folder of texture images for Perlin anomalies (e.g. ``../shared/data/dtd/images``).
            ``None``: Perlin noise alone. A missing folder is an error when training starts (a trained
            model is tested, exported or loaded without it); nothing is downloaded.
        beta: anomalib's blend factor (share of the texture in the anomaly), a number in [0, 1] or a range
            within it. DeSTSeg's ``(0.2, 1.0)`` is the default.
        anomaly_probability: Share of training images that get an anomaly, in [0, 1] (DeSTSeg: 1.0).
        steps: Total training steps, a positive integer (DeSTSeg: 5000); sets the trainer's ``max_steps``.
        de_st_steps: Steps of the student phase, before the segmentation phase; 0 <= de_st_steps < steps
            (DeSTSeg: 1000).
        T: Image score = mean of the ``T`` largest anomaly-map values, a positive integer (DeSTSeg: 100).
        student_lr: SGD learning rate of the student, positive (DeSTSeg: 0.4).
        residual_lr: SGD learning rate of the segmentation network's residual blocks, positive (DeSTSeg: 0.1).
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

    model: DestsegModel
    loss: DestsegLoss

    def __init__(
        self,
        pretrained_weights: str | Path | None = None,
        dtd_dir: Path | str | None = None,
        beta: float | tuple[float, float] = (0.2, 1.0),
        anomaly_probability: float = 1.0,
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
        # Validate before the networks are built, so bad input fails fast; dtd_dir is read at fit start.
        validate_schedule(steps, de_st_steps, T)
        rotation = check_choice("rotation", rotation, ROTATION_RULES)
        rates = {"student_lr": student_lr, "residual_lr": residual_lr, "head_lr": head_lr}
        rates = validate_probability_and_rates(anomaly_probability, rates)
        loss = DestsegLoss(gamma=gamma)
        generator_spec = resolve_generator(
            "perlin", dtd_dir=dtd_dir, probability=float(anomaly_probability), blend_factor=check_blend("beta", beta)
        )
        model = DestsegModel(pretrained_weights=pretrained_weights, top_k=T)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.loss = loss
        self.generator_spec = generator_spec
        self.model = model
        self.steps = steps
        self.de_st_steps = de_st_steps
        self.learning_rates = rates
        self.rotation = rotation
        self.automatic_optimization = False  # two optimisers, one per phase, stepped by hand

    def setup(self, stage: str) -> None:
        """At fit start, give the generator DeSTSeg's rotation for this category, built yet or not.

        The rule is resolved here, where the datamodule's category is known, and set in one place for both: on
        the spec that builds the generator, and on a generator already built (or assigned) before fitting.
        """
        if stage == "fit":
            rotation = destseg_rotation(self._rotation_rule())
            self.generator_spec = self.generator_spec.with_options(**rotation.options())
            built = self._modules.get("augmenter")
            if built is not None and hasattr(built, "rotation"):
                built.rotation = rotation
        super().setup(stage)

    def _rotation_rule(self) -> str:
        """``none``, ``slight`` or ``full``: the ``rotation`` argument, ``auto`` resolved for the fit's category."""
        datamodule = getattr(self._trainer, "datamodule", None)  # None when setup is called without a trainer
        category = getattr(datamodule, "category", None)
        rule = resolve_rotation_rule(self.rotation, category)
        if self.rotation == "auto":
            logger.info(
                "%s: rotation 'auto' for category %r: %s (%s)",
                type(self).__name__,
                category,
                rule,
                ROTATION_RULES[rule],
            )
        return rule

    def synthesize(self, images: torch.Tensor) -> SyntheticBatch:
        """Put synthetic anomalies into a batch of normal images, with mask kinds and reconstruction targets."""
        return generate_batch(self.augmenter, images)

    @property
    def in_student_phase(self) -> bool:
        """True while the denoising student trains (the first ``de_st_steps`` optimiser steps)."""
        return self.global_step < self.de_st_steps

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One step of the current phase: student (cosine distance) or segmentation (focal + L1)."""
        del args, kwargs
        student_optimizer, segmentation_optimizer = self.optimizers()
        synthetic = self.synthesize(batch.image)
        model = self.model
        if self.in_student_phase:
            model.student.train()
            model.segmentation.eval()
            teacher = model.teacher_features(synthetic.target)  # the clean image: the student must denoise
            student = model.student_features(synthetic.image, [feature.shape[-2:] for feature in teacher])
            loss = self.loss.cosine_distance(teacher, student)
            optimizer = student_optimizer
        else:
            model.student.eval()
            model.segmentation.train()
            with torch.no_grad():  # the student is fixed now; no need to keep its graph
                teacher = model.teacher_features(synthetic.image)
                student = model.student_features(synthetic.image, [feature.shape[-2:] for feature in teacher])
            logits = model.segment(teacher, student)
            loss = self.loss.segmentation(logits, synthetic.mask, synthetic.is_box)
            optimizer = segmentation_optimizer
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        phase = "student" if optimizer is student_optimizer else "segmentation"
        self.log(f"train_{phase}_loss", loss.item(), on_step=True, logger=True)
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss.detach()}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """SGD per phase: student; residual blocks and ASPP head with their own rates (DeSTSeg's)."""
        rates = self.learning_rates
        student = torch.optim.SGD(
            self.model.student.parameters(),
            lr=rates["student_lr"],
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
        )
        segmentation = torch.optim.SGD(
            [
                {"params": self.model.segmentation.res.parameters(), "lr": rates["residual_lr"]},
                {"params": self.model.segmentation.head.parameters(), "lr": rates["head_lr"]},
            ],
            lr=rates["head_lr"],
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
        )
        return [student, segmentation]

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Anomaly maps and image scores of the inference network."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> "Destseg":
        """Restore a trained model; its teacher comes from the checkpoint, not from ``pretrained_weights``.

        The checkpoint holds the teacher's weights (and ``teacher_ready``), so the weights file it was trained
        with is not read again: ``anomalib export --ckpt_path ...`` works where that file is not (a line PC).
        Pass ``pretrained_weights`` to load a file anyway.
        """
        kwargs.setdefault("pretrained_weights", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def require_teacher(self) -> None:
        """Refuse to run with a teacher that was never given weights (no file, not ``random``, no checkpoint)."""
        if not bool(self.model.teacher_ready):
            msg = (
                f"{type(self).__name__} has no teacher weights: pretrained_weights is None and no checkpoint was "
                f"loaded. The teacher is an ImageNet ResNet-18 and timm's hub is not used (offline). {WEIGHTS_HINT}"
            )
            raise ModelArgumentError(msg)

    def on_fit_start(self) -> None:
        """Check the teacher (after any checkpoint was restored)."""
        self.require_teacher()

    def on_validation_start(self) -> None:
        """Check the teacher."""
        self.require_teacher()

    def on_test_start(self) -> None:
        """Check the teacher."""
        self.require_teacher()

    def on_predict_start(self) -> None:
        """Check the teacher."""
        self.require_teacher()

    def on_train_start(self) -> None:
        """Reject a pre-processor that normalises: the network normalises itself, after synthesis in [0, 1]."""
        if self.pre_processor and extract_transforms_by_type(self.pre_processor.transform, Normalize):
            msg = (
                f"{type(self).__name__}'s pre-processor must not contain Normalize: anomalies are blended into [0, 1] "
                "images and the network applies ImageNet normalisation itself."
            )
            raise ModelArgumentError(msg)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Train for ``steps`` optimiser steps in all; no sanity validation."""
        return {"max_steps": self.steps, "num_sanity_val_steps": 0}

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only (default 256x256, DeSTSeg's); ImageNet normalisation is inside the network."""
        return PreProcessor(transform=Compose([Resize(image_size or (256, 256), antialias=True)]))
