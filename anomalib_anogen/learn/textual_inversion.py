"""Masked textual inversion: learn one token embedding per defect type on a frozen backbone (AnoGen stage 1).

As the paper (and the LDM textual-inversion code it builds on): a new placeholder token, initialised from
the embedding of an init word, is the only trainable tensor; the loss is the MSE between the true and the
predicted noise, multiplied by the defect mask resized to the latent grid, so the token learns the defect
and not the object around it.

The frozen token table is never written: the text encoder's embedding module is wrapped for the duration of
training by :class:`PlaceholderEmbedding`, which looks up every id in the frozen table and substitutes the
trainable vector where the placeholder id occurs. Every other row and every model weight therefore stays
bit-identical by construction (and the tests check it).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import nn

from anomalib_anogen.core.backbones import Backbone
from anomalib_anogen.core.devices import precision_of, training_fabric
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import sha256_bytes
from anomalib_anogen.data.support import LoadedPair
from anomalib_anogen.learn.options import LearnConfig

if TYPE_CHECKING:
    from lightning.fabric import Fabric

logger = logging.getLogger(__name__)

# The prompt templates AnoGen learns with: the authors' ``imagenet_templates_small``
# (gaobb/AnoGen ``DIFFUSION/ldm/data/personalized.py``, which ``txt2img-1p4B-finetune.yaml`` trains with), all 81
# entries in their order, duplicates included: three blocks of 27, "a photo of ...", then the same with
# "an illustration of ..." and "a depiction of ..." in place of "a photo of" (every other template repeats
# in each block, so those are drawn three times as often; 57 distinct). A training step draws one uniformly,
# as the authors' ``random.choice`` does. The original textual-inversion code's list is the first block.
TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
    "an illustration of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "an illustration of a clean {}",
    "an illustration of a dirty {}",
    "a dark photo of the {}",
    "an illustration of my {}",
    "an illustration of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "an illustration of the {}",
    "a good photo of the {}",
    "an illustration of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "an illustration of the clean {}",
    "a rendition of a {}",
    "an illustration of a nice {}",
    "a good photo of a {}",
    "an illustration of the nice {}",
    "an illustration of the small {}",
    "an illustration of the weird {}",
    "an illustration of the large {}",
    "an illustration of a cool {}",
    "an illustration of a small {}",
    "a depiction of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a depiction of a clean {}",
    "a depiction of a dirty {}",
    "a dark photo of the {}",
    "a depiction of my {}",
    "a depiction of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a depiction of the {}",
    "a good photo of the {}",
    "a depiction of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a depiction of the clean {}",
    "a rendition of a {}",
    "a depiction of a nice {}",
    "a good photo of a {}",
    "a depiction of the nice {}",
    "a depiction of the small {}",
    "a depiction of the weird {}",
    "a depiction of the large {}",
    "a depiction of a cool {}",
    "a depiction of a small {}",
)


@dataclass
class LearnResult:
    """The learned embedding of one defect and how it got there."""

    token: str
    init_word: str
    vector: torch.Tensor  # [1, dim], fp32, cpu
    loss_start: float  # fixed-draw evaluation (evaluate_loss) of the initial vector
    loss_end: float  # the same draws, learned vector
    losses: list[float] = field(repr=False, default_factory=list)
    train_loss_first: float = math.nan  # mean training loss over the first window of steps
    train_loss_last: float = math.nan  # ... and over the last window
    loss_window: int = 1
    lr: float = 0.0
    resolution: int = 0
    precision: str = "32"
    device: str = "cpu"
    seconds: float = 0.0

    @property
    def steps_per_second(self) -> float:
        """Training throughput (excluding the one-off latent encoding)."""
        return len(self.losses) / self.seconds if self.seconds > 0 else math.nan


class PlaceholderEmbedding(nn.Module):
    """A frozen token table plus trainable vectors for new token ids; the table itself is never written."""

    def __init__(self, base: nn.Embedding, token_ids: list[int], init: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)
        self.vectors = nn.Parameter(init.detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:
        """The frozen table (for code that reads ``embedding.weight``)."""
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Frozen lookup, with the placeholder ids replaced by the trainable vectors."""
        out = self.base(input_ids.clamp(max=self.base.num_embeddings - 1))
        for index in range(len(self.token_ids)):
            hit = (input_ids == self.token_ids[index]).unsqueeze(-1)
            out = torch.where(hit, self.vectors[index].to(out.dtype), out)
        return out


def templates_sha256(templates: tuple[str, ...] | None = None) -> str:
    """sha256 of the prompt templates (one per line, in order): learn's metadata records it, and a resume checks it."""
    listed = TEMPLATES if templates is None else templates
    return sha256_bytes("\n".join(listed).encode("utf-8"))


def _pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB image -> [3, r, r] in [-1, 1] (squashed to a square, as the paper's data loader does)."""
    resized = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _mask_pixels(mask: np.ndarray, resolution: int) -> torch.Tensor:
    """Bool mask -> [1, r, r] float {0, 1} (nearest, so it stays binary)."""
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((resolution, resolution), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(image) > 127).float().unsqueeze(0)


class SupportCache:
    """Support latents encoded once (plain and flipped), so training never runs the VAE encoder again.

    Stores the VAE posterior's mean and std; each step draws a fresh latent sample from them, as the paper's
    code does when it encodes every step, at a fraction of the cost.
    """

    def __init__(self, backbone: Backbone, pairs: list[LoadedPair], resolution: int, device: torch.device) -> None:
        pixels = torch.stack([_pixels(p.image, resolution) for p in pairs]).to(device)
        masks = torch.stack([_mask_pixels(p.mask, resolution) for p in pairs]).to(device)
        pixels = torch.cat([pixels, pixels.flip(-1)])  # [2n]: plain then flipped
        masks = torch.cat([masks, masks.flip(-1)])
        with torch.no_grad():
            posterior = backbone.vae.encode(pixels.to(backbone.vae.dtype)).latent_dist
            self.mean = posterior.mean.float()
            self.std = posterior.std.float()
            latent_size = self.mean.shape[-2:]
            # Area resize keeps a small defect's weight instead of losing it between latent cells.
            self.loss_mask = F.interpolate(masks, size=latent_size, mode="area")
            self.masked_latents = None
            self.inpaint_mask = None
            if backbone.inpainting:
                masked = pixels * (masks < 0.5)
                masked_posterior = backbone.vae.encode(masked.to(backbone.vae.dtype)).latent_dist
                self.masked_latents = masked_posterior.mean.float() * backbone.scaling_factor
                self.inpaint_mask = F.interpolate(masks, size=latent_size, mode="nearest")
        self.count = len(pairs)
        self.scaling_factor = backbone.scaling_factor

    def batch(self, indices: torch.Tensor, flips: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latent sample, loss mask (and inpainting inputs) for support ``indices``, flipped where ``flips``."""
        rows = indices + flips.long() * self.count
        rows = rows.to(self.mean.device)
        out = {
            "latents": (self.mean[rows] + self.std[rows] * eps.to(self.mean.device)) * self.scaling_factor,
            "loss_mask": self.loss_mask[rows],
        }
        if self.masked_latents is not None and self.inpaint_mask is not None:
            out["masked_latents"] = self.masked_latents[rows]
            out["inpaint_mask"] = self.inpaint_mask[rows]
        return out


def _placeholder_tokens(backbone: Backbone, token: str, init_word: str) -> tuple[Any, int, int, torch.Tensor]:
    """A private tokenizer copy with ``token`` added, its id, the init word's id and the prompts' ids.

    The backbone's own tokenizer stays untouched for the next defect.
    """
    tokenizer = copy.deepcopy(backbone.tokenizer)
    known = tokenizer.encode(token, add_special_tokens=False)
    if token in tokenizer.get_vocab() or len(known) == 1:
        # CLIP's vocabulary holds a word with its end-of-word mark ("defect</w>"), so "defect" itself is not a key
        # of it, yet the tokenizer reads it as that one known token: learning it would change what the word means.
        as_read = tokenizer.convert_ids_to_tokens(known)[0] if len(known) == 1 else token
        read = f" (read as {as_read!r})" if as_read != token else ""
        msg = (
            f"--token {token!r} already exists in the backbone's vocabulary{read}; pick a new word, such as the "
            "default <anogen-{defect}>"
        )
        raise AnogenInputError(msg)
    init_ids = tokenizer.encode(init_word, add_special_tokens=False)
    if len(init_ids) != 1:
        msg = f"--init_word {init_word!r} is {len(init_ids)} tokens for this backbone; it must be one token"
        raise AnogenInputError(msg)
    tokenizer.add_tokens([token])
    token_id = int(tokenizer.convert_tokens_to_ids(token))
    prompt_ids = backbone.tokenize([t.format(token) for t in TEMPLATES], tokenizer=tokenizer)
    if not (prompt_ids == token_id).any(dim=1).all():
        msg = f"token {token!r} is cut off by the tokenizer's maximum length"
        raise AnogenInputError(msg)
    return tokenizer, token_id, int(init_ids[0]), prompt_ids


def check_token(backbone: Backbone, token: str, init_word: str) -> None:
    """Refuse a token or init word that cannot be learned on ``backbone`` (before any defect is trained)."""
    _placeholder_tokens(backbone, token, init_word)


class MaskedTextualInversion(nn.Module):
    """One defect's placeholder token on a frozen backbone: the trainable part and its loss."""

    def __init__(
        self,
        backbone: Backbone,
        pairs: list[LoadedPair],
        token: str,
        config: LearnConfig,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.device_ = device if device is not None else backbone.device
        self.resolution = config.resolution or backbone.resolution
        self.tokenizer, self.token_id, self.init_id, self.prompt_ids = _placeholder_tokens(
            backbone, token, config.init_word
        )
        self.token = token
        self.base_embedding = backbone.token_embedding()
        init = self.base_embedding.weight[self.init_id].detach().float().unsqueeze(0)
        self.placeholder = PlaceholderEmbedding(self.base_embedding, [self.token_id], init)
        self.cache = SupportCache(backbone, pairs, self.resolution, self.device_)

    def install(self) -> None:
        """Put the placeholder wrapper into the text encoder (for training)."""
        self.backbone.set_token_embedding(self.placeholder)

    def uninstall(self) -> None:
        """Put the frozen table back, leaving the text encoder exactly as it was."""
        self.backbone.set_token_embedding(self.base_embedding)

    def loss(self, generator: torch.Generator, batch_size: int, step_order: torch.Tensor) -> torch.Tensor:
        """The masked noise-prediction loss of one batch; all randomness comes from ``generator`` (cpu)."""
        backbone = self.backbone
        device = self.device_
        shape = self.cache.mean.shape[1:]
        flips = torch.rand(batch_size, generator=generator) < self.config.hflip_p
        eps = torch.randn((batch_size, *shape), generator=generator)
        noise = torch.randn((batch_size, *shape), generator=generator).to(device)
        timesteps = torch.randint(
            0, backbone.noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator
        ).to(device)
        prompts = torch.randint(0, len(self.prompt_ids), (batch_size,), generator=generator)
        batch = self.cache.batch(step_order, flips, eps)
        latents = batch["latents"]
        noisy = backbone.noise_scheduler.add_noise(latents, noise, timesteps)
        if backbone.inpainting:
            noisy = torch.cat([noisy, batch["inpaint_mask"], batch["masked_latents"]], dim=1)
        hidden = backbone.encode_text(self.prompt_ids[prompts].to(device))
        prediction = backbone.unet(noisy.to(backbone.unet.dtype), timesteps, encoder_hidden_states=hidden).sample
        if backbone.prediction_type == "v_prediction":
            target = backbone.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        error = F.mse_loss(prediction.float(), target.float(), reduction="none")
        return (error * batch["loss_mask"]).mean()

    def learned_vector(self) -> torch.Tensor:
        """The learned embedding ``[1, dim]`` on cpu, fp32."""
        return self.placeholder.vectors.detach().float().cpu().clone()


def _order(count: int, steps: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Support indices for every step: epochs of shuffled support images, as a shuffling data loader gives."""
    needed = steps * batch_size
    epochs = math.ceil(needed / count)
    order = torch.cat([torch.randperm(count, generator=generator) for _ in range(epochs)])
    return order[:needed].view(steps, batch_size)


def learn_embedding(
    backbone: Backbone,
    pairs: list[LoadedPair],
    token: str,
    config: LearnConfig,
    device: torch.device | None = None,
    progress: bool = True,
    description: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
    fabric: Fabric | None = None,
) -> LearnResult:
    """Learn one defect's token on ``backbone`` (already on ``device``) from its support ``pairs``.

    Mixed precision (autocast, and a gradient scaler for fp16) is Lightning Fabric's: ``fabric`` is the
    run's (``anogen learn`` builds it with ``config.precision`` resolved for its devices); without one, a
    one-device Fabric is made for ``device``.
    """
    device = device if device is not None else backbone.device
    fabric = fabric if fabric is not None else training_fabric(config.precision, device)
    module = MaskedTextualInversion(backbone, pairs, token, config, device)
    initial = module.learned_vector()
    lr = config.effective_lr()
    optimizer = fabric.setup_optimizers(
        torch.optim.AdamW([module.placeholder.vectors], lr=lr, weight_decay=config.weight_decay)
    )
    generator = torch.Generator().manual_seed(config.seed)
    order = _order(module.cache.count, config.steps, config.batch_size, generator)
    losses: list[float] = []
    bar = _progress(config.steps, description or token, progress)
    module.install()
    start = time.perf_counter()
    try:
        for step in range(config.steps):
            with fabric.autocast():
                loss = module.loss(generator, config.batch_size, order[step])
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                msg = f"{token}: loss became {value} at step {step}; try --precision 32 or a lower --lr"
                raise RuntimeError(msg)
            losses.append(value)
            if on_step is not None:
                on_step(step, value)
            bar.update(value)
    finally:
        module.uninstall()
        bar.close()
    seconds = time.perf_counter() - start
    window = max(1, min(config.loss_window, len(losses) // 10))
    learned = module.learned_vector()
    return LearnResult(
        token=token,
        init_word=config.init_word,
        vector=learned,
        loss_start=evaluate_loss(backbone, pairs, token, initial, config, device=device, fabric=fabric),
        loss_end=evaluate_loss(backbone, pairs, token, learned, config, device=device, fabric=fabric),
        losses=losses,
        train_loss_first=float(np.mean(losses[:window])),
        train_loss_last=float(np.mean(losses[-window:])),
        loss_window=window,
        lr=lr,
        resolution=module.resolution,
        precision=precision_of(fabric),
        device=str(device),
        seconds=seconds,
    )


@torch.no_grad()
def evaluate_loss(
    backbone: Backbone,
    pairs: list[LoadedPair],
    token: str,
    vector: torch.Tensor,
    config: LearnConfig,
    draws: int = 64,
    seed: int = 1234,
    device: torch.device | None = None,
    fabric: Fabric | None = None,
) -> float:
    """Masked loss of ``vector`` for ``token`` over fixed noise draws, no flips: a low-variance comparison.

    The per-step training loss is dominated by the random timestep, so start and end are compared here,
    with the same draws for the initial and the learned vector, in ``fabric``'s precision (see
    :func:`learn_embedding`).
    """
    evaluation = copy.copy(config)
    evaluation.hflip_p = 0.0
    module = MaskedTextualInversion(backbone, pairs, token, evaluation, device)
    module.placeholder.vectors.copy_(vector.to(module.placeholder.vectors.device))
    generator = torch.Generator().manual_seed(seed)
    chunk = min(8, draws)
    batches = math.ceil(draws / chunk)
    order = _order(module.cache.count, batches, chunk, generator)
    fabric = fabric if fabric is not None else training_fabric(config.precision, module.device_)
    module.install()
    try:
        values = []
        for index in range(batches):
            with fabric.autocast():
                values.append(float(module.loss(generator, chunk, order[index])))
    finally:
        module.uninstall()
    return float(np.mean(values))


class _Progress:
    """A tqdm bar with the running loss, or nothing when disabled."""

    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.bar: Any = None
        self.smoothed: float | None = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, unit="step", dynamic_ncols=True, leave=True)

    def update(self, loss: float) -> None:
        self.smoothed = loss if self.smoothed is None else 0.95 * self.smoothed + 0.05 * loss
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.smoothed:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(total: int, description: str, enabled: bool) -> _Progress:
    return _Progress(total, description, enabled)


def config_dict(config: LearnConfig) -> dict[str, Any]:
    """The hyper-parameters as recorded in the metadata json."""
    return asdict(config)
