"""DraemWeak: DRAEM trained with AnoGen's weakly-supervised segmentation loss.

Gui, Gao et al., "Few-Shot Anomaly-Driven Generation for Anomaly Classification and
Segmentation", ECCV 2024. DRAEM (Zavrtanik et al., ICCV 2021) learns from synthetic anomalies
with exact masks; AnoGen adds generated anomalies whose mask is only a box. ``DraemWeak`` keeps
anomalib's DRAEM network, optimiser, pre-processing and inference, and swaps the loss for
``DraemWeakLoss``, which handles both kinds of mask in the same batch.
"""

import logging
from pathlib import Path
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.models.image.draem import Draem
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_anogen.arguments import ModelArgumentError, check_argument
from anomalib_anogen.core.checks import POSITIVE
from anomalib_anogen.data.generators import generate_batch
from anomalib_anogen.data.synthetic import SyntheticBatch
from anomalib_anogen.models.components import SyntheticAnomalyModel, WeakScope, checked_generator

from .loss import DraemWeakLoss
from .torch_model import DEFAULT_DISCRIMINATIVE_WIDTH, DEFAULT_RECONSTRUCTIVE_WIDTH, DEFAULT_SCORE_POOL, DraemWeakModel

__all__ = ["DraemWeak"]

logger = logging.getLogger(__name__)

WIDTHS = ("reconstructive_width", "discriminative_width")


class DraemWeak(SyntheticAnomalyModel, AnomalibModule):
    """DRAEM with AnoGen's weak (box-level) supervision.

    The anomaly source (``dtd_dir``, ``bank_dir``) is read when training starts, not when the model is
    built: a trained model is tested, exported or loaded from its checkpoint without it.

    Args:
        dtd_dir: Folder of texture images used as Perlin anomaly source (e.g.
            ``../shared/data/dtd/images``). ``None`` (default): Perlin noise alone. A missing
            folder is an error when training starts; nothing is ever downloaded.
        p_cutoff: In-box pixels of a box-masked sample whose predicted anomaly probability
            (detached) is below this get no segmentation loss. In [0, 1).
        weak_scope: ``"box"`` applies the rule to box-masked samples only; ``"all"`` to every
            sample, as the authors' released code does.
        beta: Blend factor of Perlin anomalies (the texture's share), a number in [0, 1] or a ``(low, high)``
            range within it. DRAEM's ``(0.2, 1.0)`` is the default (anomalib's ``Draem``: ``(0.1, 1.0)``).
        anomaly_probability: Share of Perlin-sourced training images that get an anomaly, in [0, 1].
        generator: Synthetic-anomaly source: ``perlin`` (Perlin/DTD, exact masks) or ``anogen`` (generated
            anomalies from ``bank_dir`` with box masks, mixed with Perlin/DTD), or a ``class_path`` dict.
        bank_dir: Anomaly bank made by ``anogen generate`` (generator ``anogen`` only).
        bank_probability: Share of samples drawn from the bank, in [0, 1] (paper: 0.5).
        exclude_defects: Bank defect types to leave out.
        allow_incomplete_bank: Train on the finished records of a bank whose ``anogen generate`` run did
            not finish, with a warning. Default: refuse it.
        reconstructive_width: Base width of the reconstructive sub-network, a positive integer (DRAEM: 128).
        discriminative_width: Base width of the discriminative sub-network, a positive integer (DRAEM: 64).
        score_pool: Image score = maximum of the anomaly map average-pooled over ``score_pool`` x ``score_pool``
            pixels, as DRAEM's and AnoGen's evaluation (21, the default); 1: anomalib's single-pixel maximum.
        learning_rate: Adam learning rate, positive (DRAEM: 1e-4).
        pre_processor: Pre-processor instance or flag to use the default (resize to 256, no normalisation).
        post_processor: Post-processor instance or flag to use the default.
        evaluator: Evaluator instance or flag to use the default.
        visualizer: Visualizer instance or flag to use the default.
    """

    def __init__(
        self,
        dtd_dir: Path | str | None = None,
        p_cutoff: float = 0.1,
        weak_scope: WeakScope = "box",
        beta: float | tuple[float, float] = (0.2, 1.0),
        anomaly_probability: float = 0.5,
        generator: str | dict[str, Any] = "perlin",
        bank_dir: Path | str | None = None,
        bank_probability: float = 0.5,
        exclude_defects: list[str] | None = None,
        allow_incomplete_bank: bool = False,
        reconstructive_width: int = DEFAULT_RECONSTRUCTIVE_WIDTH,
        discriminative_width: int = DEFAULT_DISCRIMINATIVE_WIDTH,
        score_pool: int = DEFAULT_SCORE_POOL,
        learning_rate: float = 1e-4,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # Validate before the (large) networks are built, so bad input fails fast; files are read at fit start.
        weak_loss = DraemWeakLoss(p_cutoff=p_cutoff, weak_scope=weak_scope)
        learning_rate = check_argument("learning_rate", learning_rate, POSITIVE, "DRAEM uses 1e-4.")
        generator_spec = checked_generator(
            generator,
            dtd_dir=dtd_dir,
            anomaly_probability=anomaly_probability,
            beta=beta,
            bank_dir=bank_dir,
            bank_probability=bank_probability,
            exclude_defects=exclude_defects,
            allow_incomplete_bank=allow_incomplete_bank,
        )
        model = DraemWeakModel(
            reconstructive_width=reconstructive_width, discriminative_width=discriminative_width, score_pool=score_pool
        )
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.generator_spec = generator_spec
        self.model = model
        self.loss = weak_loss
        self.learning_rate = learning_rate

    def synthesize(self, images: torch.Tensor) -> SyntheticBatch:
        """Put synthetic anomalies into a batch of normal images, with mask kinds and reconstruction targets."""
        height, width = images.shape[-2:]
        if height % 32 or width % 32:
            msg = (
                f"DraemWeak needs an input size that is a multiple of 32 (its U-Nets halve it 5 times), got "
                f"{height}x{width}. Set the pre-processor's size, e.g. DraemWeak.configure_pre_processor((256, 256))."
            )
            raise ModelArgumentError(msg)
        return generate_batch(self.augmenter, images)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Synthesize anomalies, reconstruct and segment, and apply the weak loss."""
        del args, kwargs
        synthetic = self.synthesize(batch.image)
        reconstruction, prediction = self.model(synthetic.image)
        loss = self.loss(synthetic.target, reconstruction, synthetic.mask, prediction, synthetic.is_box)
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True, batch_size=len(synthetic.image))
        return {"loss": loss}

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        """Adam with DRAEM's step schedule (x0.1 at epochs 400 and 600, as anomalib's ``Draem``)."""
        optimizer = torch.optim.Adam(params=self.model.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[400, 600], gamma=0.1)
        return [optimizer], [scheduler]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the network with the checkpoint's widths, before Lightning loads its weights.

        ``anomalib test|predict --ckpt_path`` build the model from the command line's arguments, so without
        this a checkpoint of a width-reduced network could only be loaded by repeating its widths.
        """
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("hyper_parameters") or {}
        current = {name: self.hparams.get(name) for name in WIDTHS}
        widths = {name: saved.get(name, current[name]) for name in WIDTHS}
        if widths == current or None in widths.values():
            return
        logger.warning(
            "DraemWeak: the checkpoint's network has %s; this model was built with %s. Using the checkpoint's.",
            ", ".join(f"{name}={value}" for name, value in widths.items()),
            ", ".join(f"{name}={value}" for name, value in current.items()),
        )
        device = next(self.model.parameters()).device
        self.model = DraemWeakModel(**widths, score_pool=self.model.score_pool).to(device)
        self.hparams.update(widths)

    # Inference, pre-processing and trainer settings are DRAEM's own.
    validation_step = Draem.validation_step
    on_train_start = Draem.on_train_start
    trainer_arguments = Draem.trainer_arguments

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """DRAEM's pre-processor: resize (default 256x256), no ImageNet normalisation."""
        return Draem.configure_pre_processor(image_size)
