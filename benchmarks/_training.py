"""One training step in the benchmarks, and anomalib's ``Draem`` at other widths.

- ``AnomalibDraem``: anomalib's ``Draem`` with the DRAEM widths and the Adam learning rate as arguments
  (bench_train, and the ``Draem`` row of bench_accuracy).
- ``Trainee``: one model's training step without a Trainer, as Lightning takes it (bench_train times it;
  _runs.py probes it to fit a schedule to ``--max_minutes``), on ``load_batch``'s real images.
"""

from __future__ import annotations

from typing import Any

from _common import DRAEM_WIDTHS, normal_images
from anomalib.models import Draem

DRAEM_LR = 1e-4  # DRAEM's Adam learning rate, fixed in anomalib's Draem


class AnomalibDraem(Draem):
    """anomalib's ``Draem`` (its Perlin augmenter, loss, steps and scoring) at other widths and learning rate.

    anomalib fixes DRAEM's widths (128/64) and Adam's learning rate (1e-4). At other widths the network is
    ``DraemWeakModel``, anomalib's ``DraemModel`` sub-networks at those widths. Its image score is its default,
    the maximum of the 21 x 21 average-pooled map (DRAEM's paper score), not ``DraemModel``'s raw maximum: at
    reduced widths bench_accuracy's ``Draem`` row has been scored so since 2026-12-07, at DRAEM's widths as
    anomalib scores. The optimiser is anomalib's, Adam with its milestones at steps 400 and 600, at ``learning_rate``.
    """

    def __init__(
        self,
        reconstructive_width: int = DRAEM_WIDTHS[0],
        discriminative_width: int = DRAEM_WIDTHS[1],
        learning_rate: float = DRAEM_LR,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (reconstructive_width, discriminative_width) != DRAEM_WIDTHS:
            from anomalib_anogen.models.image.draem_weak.torch_model import DraemWeakModel

            self.model = DraemWeakModel(reconstructive_width, discriminative_width)
        self.learning_rate = learning_rate

    def configure_optimizers(self) -> Any:
        """The optimiser of anomalib's ``Draem.configure_optimizers``, at ``learning_rate``."""
        import torch

        optimizer = torch.optim.Adam(params=self.model.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[400, 600], gamma=0.1)
        return [optimizer], [scheduler]


def load_batch(size: int, batch_size: int, device: str) -> Any:
    """An anomalib ``ImageBatch`` of the first ``batch_size`` bottle training images at ``size``, in [0, 1]."""
    import torch
    from anomalib.data import ImageBatch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as tvf

    paths = normal_images(batch_size)
    if len(paths) < batch_size:
        msg = f"--batch_size {batch_size}: only {len(paths)} bottle training images."
        raise ValueError(msg)
    images = [
        tvf.resize(decode_image(str(path), mode=ImageReadMode.RGB), [size, size], antialias=True) for path in paths
    ]
    return ImageBatch(image=(torch.stack(images).float() / 255).to(device))


class Trainee:
    """One model and the optimisers of its ``configure_optimizers``, stepped as Lightning would.

    Automatic optimisation (Draem, DraemWeak): ``training_step``, then zero_grad, backward and step. Manual
    (DestsegWeak, two phases with one optimiser each): the module gets its optimisers and a plain backward, and
    ``phase`` (``student`` or ``segmentation``) picks the phase through ``de_st_steps`` (without a Trainer
    ``global_step`` is 0).
    """

    def __init__(self, module: Any, phase: str | None = None) -> None:
        self.module = module
        self.phase = phase
        module.train()
        configured = module.configure_optimizers()
        if module.automatic_optimization:
            optimizers = (
                configured[0]
                if isinstance(configured, tuple | list) and isinstance(configured[0], list)
                else configured
            )
            self.optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        else:
            # No Trainer: give the module its optimisers and a plain backward, as Lightning's manual optimisation would.
            module.optimizers = lambda use_pl_optimizer=True: configured
            module.manual_backward = lambda loss, *args, **kwargs: loss.backward(*args, **kwargs)
            self.optimizer = None

    def step(self, batch: Any) -> None:
        """One training step: ``training_step``; then zero_grad, backward and step unless the model does them."""
        module = self.module
        if self.phase is not None:
            module.de_st_steps = module.steps if self.phase == "student" else 0
        output = module.training_step(batch, 0)
        if self.optimizer is not None:
            self.optimizer.zero_grad()
            output["loss"].backward()
            self.optimizer.step()
