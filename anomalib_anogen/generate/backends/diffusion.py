"""Box-guided sampling on a frozen latent diffusion model: DDIM (eta 0), classifier-free guidance, blended latents.

As the paper: the prompt is the defect's learned token, the sampler is DDIM with eta 0, and at every step the
latent outside the box is replaced by the normal image's latent noised to that step (blended latent
diffusion), so only the box is generated and it fits its surroundings. After the last step the latent
outside the box *is* the normal image's latent.

For speed, every call denoises a whole batch of boxes (of any images and defects) in one UNet call per step
(conditional and unconditional halves together), normal latents are encoded once per image by the caller,
and on a GPU the models run in fp16 (``--precision auto``, see ``devices.py``) with PyTorch's
scaled-dot-product attention (diffusers' default attention processor on torch 2); the scheduler, the
guidance sum and the blending stay in fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_anogen.core.backbones import Backbone
from anomalib_anogen.core.devices import dtype_of, resolve_precision
from anomalib_anogen.generate.boxes import PlacedBox, box_mask, composite, derived_seed, feather_alpha
from anomalib_anogen.generate.settings import GenerateSettings
from anomalib_anogen.generate.work import NormalImage, SourceCache, WorkItem

if TYPE_CHECKING:
    from anomalib_anogen.learn.embeddings import Embedding


@dataclass
class BoxBatch:
    """What one sampler call needs per item: normal latent, box mask on the latent grid, prompt, noise seed."""

    normal_latents: torch.Tensor  # [B, C, h, w], float32
    latent_masks: torch.Tensor  # [B, 1, h, w], bool, True inside the box
    prompt_embeds: torch.Tensor  # [B, L, D]
    seeds: list[int]
    masked_latents: torch.Tensor | None = (
        None  # inpainting UNets only: latents of the normal image with the box blanked
    )


class BlendedSampler:
    """DDIM + CFG + blended latent diffusion over batches of boxes on one backbone."""

    def __init__(self, backbone: Backbone, steps: int, guidance: float, precision: str = "auto") -> None:
        from diffusers import DDIMScheduler

        self.backbone = backbone
        self.device = backbone.device
        self.precision = resolve_precision(precision, self.device)
        self.dtype = dtype_of(self.precision)
        if self.dtype != torch.float32:
            for module in (backbone.unet, backbone.vae, backbone.text_encoder):
                module.to(self.dtype)
        self.steps = steps
        self.guidance = guidance
        self.scheduler = DDIMScheduler.from_config(backbone.noise_scheduler.config)
        self.scheduler.set_timesteps(steps)
        self._uncond: torch.Tensor | None = None

    @torch.inference_mode()
    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder states of ``prompts`` ``[n, L, D]``; each defect's prompt is embedded once by the caller."""
        return self.backbone.encode_text(self.backbone.tokenize(prompts)).to(self.dtype)

    def _unconditional(self) -> torch.Tensor:
        if self._uncond is None:
            self._uncond = self.embed_prompts([""])
        return self._uncond

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB ``[B, H, W, 3]`` -> scaled latents ``[B, C, h, w]`` (posterior mean: no randomness), float32."""
        pixels = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        posterior = self.backbone.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return posterior.mean.float() * self.backbone.scaling_factor

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents -> uint8 RGB ``[B, H, W, 3]``."""
        pixels = self.backbone.vae.decode((latents / self.backbone.scaling_factor).to(self.dtype)).sample
        pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()

    def latent_mask(self, masks: np.ndarray) -> torch.Tensor:
        """Pixel box masks ``[B, H, W]`` -> latent cells that the box touches ``[B, 1, h, w]`` (bool).

        A cell partly covered by the box is generated (max pooling), so a thin box still gets latent room;
        pixel compositing (``keep_outside``) then restricts the change to the box itself.
        """
        factor = self.backbone.vae_scale_factor
        tensor = torch.from_numpy(np.ascontiguousarray(masks > 0)).float().unsqueeze(1)
        return (F.max_pool2d(tensor, factor) > 0).to(self.device)

    @torch.inference_mode()
    def sample(self, batch: BoxBatch) -> torch.Tensor:
        """Final latents ``[B, C, h, w]`` (float32): generated inside the box, the normal latent outside.

        Adapted from diffusers' ``StableDiffusionInpaintPipeline.__call__``: its denoising loop (classifier-free
        guidance on a doubled batch, one scheduler step per timestep) and, for a UNet with 4 input channels, its
        blending of the known region (``init_latents_proper``: the normal latent noised to the next timestep
        outside the mask); the noise comes from ``randn_tensor`` with one generator per item, as diffusers does.
        """
        from diffusers.utils.torch_utils import randn_tensor

        count = len(batch.seeds)
        z0 = batch.normal_latents.to(self.device, torch.float32)
        inside = batch.latent_masks.to(self.device)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in batch.seeds]

        def noise() -> torch.Tensor:  # per item, from its own generator: independent of the batch it runs in
            return randn_tensor(tuple(z0.shape), generator=generators, device=self.device, dtype=torch.float32)

        timesteps = self.scheduler.timesteps
        guided = self.guidance != 1.0
        context = batch.prompt_embeds.to(self.device, self.dtype)
        if guided:
            context = torch.cat([self._unconditional().expand(count, -1, -1), context])
        extra = None
        if self.backbone.inpainting:
            masked = batch.masked_latents.to(self.device, torch.float32) if batch.masked_latents is not None else z0
            extra = torch.cat([inside.float(), masked], dim=1)
        latents = torch.where(inside, noise(), self._noised(z0, noise(), timesteps[0]))
        for index, t in enumerate(timesteps):
            model_input = latents if extra is None else torch.cat([latents, extra], dim=1)
            if guided:
                model_input = torch.cat([model_input, model_input])
            prediction = self.backbone.unet(
                model_input.to(self.dtype), t.to(self.device), encoder_hidden_states=context
            ).sample.float()
            if guided:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + self.guidance * (conditional - unconditional)
            latents = self.scheduler.step(prediction, t, latents, eta=0.0).prev_sample
            known = self._noised(z0, noise(), timesteps[index + 1]) if index + 1 < len(timesteps) else z0
            latents = torch.where(inside, latents, known)
        return latents

    def _noised(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The normal latent noised to timestep ``t`` (the forward process q(z_t | z_0))."""
        return self.scheduler.add_noise(z0, noise, t.reshape(1).repeat(len(z0)).to(z0.device))


def defect_tokens(embeddings: dict[str, Embedding]) -> dict[str, str]:
    """One distinct token per defect (released embeddings all use ``*``; those are renamed per defect)."""
    counts: dict[str, int] = {}
    for embedding in embeddings.values():
        counts[embedding.token] = counts.get(embedding.token, 0) + 1
    return {name: e.token if counts[e.token] == 1 else f"<anogen-{name}>" for name, e in embeddings.items()}


class DiffusionMaker:
    """Diffusion backend: one blended-DDIM call per chunk, normal latents encoded once per image."""

    def __init__(
        self, model: Backbone, embeddings: dict[str, Embedding], settings: GenerateSettings, device: Any
    ) -> None:
        from anomalib_anogen.learn.embeddings import apply_embedding

        model.to(device)
        tokens = defect_tokens({name: embeddings[name] for name in settings.defects})
        for name in settings.defects:
            apply_embedding(model, embeddings[name], token=tokens[name])
        self.model = model
        self.settings = settings
        self.sampler = BlendedSampler(model, settings.steps, settings.guidance, settings.precision)
        # One prompt per defect, embedded alone so that its states never depend on a batch.
        self.prompts = {name: self.sampler.embed_prompts([tokens[name]]) for name in settings.defects}

    def box_shape(self, item: WorkItem) -> None:
        """The paper's boxes: width and height drawn independently from the priors."""
        return None

    def _latent(self, source: NormalImage, cache: SourceCache) -> Any:
        if source.index not in cache.latents:
            cache.latents[source.index] = self.sampler.encode(cache.image(source)[None])
        return cache.latents[source.index]

    def make(
        self, chunk: list[WorkItem], boxes: list[PlacedBox], cache: SourceCache
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:

        resolution = self.settings.resolution
        masks = np.stack([box_mask(placed.box, resolution) for placed in boxes])
        masked = None
        if self.model.inpainting:  # the normal image with the box blanked, encoded per record
            blanked = [
                np.where(m[..., None] > 0, 127, cache.image(i.source)) for i, m in zip(chunk, masks, strict=True)
            ]
            masked = torch.cat([self.sampler.encode(b[None].astype(np.uint8)) for b in blanked])
        batch = BoxBatch(
            normal_latents=torch.cat([self._latent(item.source, cache) for item in chunk]),
            latent_masks=self.sampler.latent_mask(masks),
            prompt_embeds=torch.cat([self.prompts[item.defect] for item in chunk]),
            seeds=[derived_seed(self.settings.seed, item.record_id) for item in chunk],
            masked_latents=masked,
        )
        decoded = self.sampler.decode(self.sampler.sample(batch))
        for item, mask, image in zip(chunk, masks, decoded, strict=True):
            if self.settings.keep_outside:
                image = composite(cache.image(item.source), image, feather_alpha(mask, self.settings.feather))
            yield image, mask, {}
