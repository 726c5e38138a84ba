"""Benchmark-only backbones: ``sd15-random``, Stable Diffusion 1.5's exact shapes with random weights.

Not part of the package (``anogen --backbone`` does not know it): a benchmark that measures speed at SD 1.5's
size calls :func:`register`, which adds it to ``anomalib_anogen.core.backbones.BUILTIN_BACKBONES`` in that
process. A benchmark that times ``anogen`` in a fresh process runs it through this file, which registers the
backbone and then hands its arguments to the ``anogen`` command line::

    python benchmarks/_backbones.py generate --backbone sd15-random ...
"""

from __future__ import annotations

import sys
from typing import Any

SD15_RANDOM = "sd15-random"


def sd15_configs() -> dict[str, dict[str, Any]]:
    """Stable Diffusion 1.5's UNet, VAE and CLIP text encoder configs (as in runwayml/stable-diffusion-v1-5)."""
    return {
        "unet": {
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "center_input_sample": False,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "downsample_padding": 1,
            "mid_block_scale_factor": 1,
            "act_fn": "silu",
            "norm_num_groups": 32,
            "norm_eps": 1e-5,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2,
            "act_fn": "silu",
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 512,
        },
        "text_encoder": {
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": 768,
        },
    }


def build_sd15_random(seed: int = 0) -> Any:
    """Stable Diffusion 1.5's exact shapes (860M UNet, 123M text encoder, 84M VAE) with random weights.

    Deterministic from ``seed``, without disturbing the caller's RNG; the tokenizer is the ``tiny`` backbone's
    (its ids fit inside SD 1.5's 49408-row table).
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anomalib_anogen.core.backbones import SD_SCHEDULE, Backbone, build_tiny_clip_tokenizer

    configs = sd15_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_clip_tokenizer()
        text_config = CLIPTextConfig(
            **configs["text_encoder"],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return Backbone(
            spec=SD15_RANDOM,
            kind="sd",
            tokenizer=tokenizer,
            text_encoder=CLIPTextModel(text_config),
            unet=UNet2DConditionModel(**configs["unet"]),
            vae=AutoencoderKL(**configs["vae"]),
            noise_scheduler=DDPMScheduler(**SD_SCHEDULE),
            source="builtin",
            seed=seed,
        )


def register() -> None:
    """Make ``--backbone sd15-random`` (and ``load_backbone("sd15-random")``) work in this process."""
    from anomalib_anogen.core.backbones import BUILTIN_BACKBONES

    BUILTIN_BACKBONES.setdefault(SD15_RANDOM, build_sd15_random)


if __name__ == "__main__":
    from anomalib_anogen.cli import main

    register()
    sys.exit(main(sys.argv[1:]))
