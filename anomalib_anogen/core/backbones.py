"""Frozen latent-diffusion backbones for AnoGen: registry, builders with random weights, and loading.

A :class:`Backbone` holds the five parts that learning and generation need (tokenizer, text encoder,
UNet, VAE, noise scheduler) behind one small interface, whatever the checkpoint's format:

* ``tiny``: the Stable Diffusion architecture at toy size with random weights and a tokenizer whose
  vocabulary is generated in code, so tests and demos run with no download (64 px, 8x8 latents);
* ``tiny-ldm``: the same in the paper's LDM format (LDMBert text encoder, BERT word-piece tokenizer);
* a local folder or hub id of a diffusers Stable Diffusion 1.x/2.x pipeline (text-to-image or inpainting);
* a local folder or hub id of a diffusers ``LDMTextToImagePipeline``, the paper's "txt2img-f8-large"
  (``CompVis/ldm-text2im-large-256``: LDMBert, hidden size 1280, 256 px).

Hub ids resolve through diffusers' downloader, which honours ``HF_HUB_OFFLINE`` and the local cache;
a model that cannot be found raises :class:`BackboneNotFoundError` with what to download and where.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomalib_anogen.core.errors import AnogenInputError, BackboneNotFoundError

# The noise schedule of Stable Diffusion 1.x/2.x and of the LDM txt2img model.
SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "steps_offset": 1,
}

# Words the tiny tokenizers know as single tokens (prompt templates, defect names, init words).
_TINY_WORDS_TEXT = (
    "a an the of in on with and for photo picture image rendering cropped close up bright dark clean "
    "dirty good nice small large big weird cool one my it this that object bottle cable capsule carpet "
    "grid hazelnut leather metal nut pill screw tile toothbrush transistor wood zipper defect anomaly "
    "damage broken crack scratch hole cut contamination color fold glue poke thread bent flip print stain "
    "missing wire"
)
TINY_WORDS: tuple[str, ...] = tuple(_TINY_WORDS_TEXT.split())


@dataclass
class Backbone:
    """A frozen text-to-image latent diffusion model, in the parts that AnoGen uses."""

    spec: str
    kind: str  # "sd" (CLIP text encoder) or "ldm" (LDMBert text encoder)
    tokenizer: Any
    text_encoder: nn.Module
    unet: nn.Module
    vae: nn.Module
    noise_scheduler: Any  # a DDPMScheduler with the checkpoint's training schedule
    source: str  # "builtin", "folder" or "hub"
    path: str | None = None
    revision: str | None = None
    seed: int | None = None  # for built-in random-weight models
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for every SD/LDM f8 model)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The native training resolution in pixels (512 for SD 1.5, 256 for the LDM model)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        """Latent scaling of the VAE (0.18215 for SD 1.x/2.x and LDM)."""
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @property
    def inpainting(self) -> bool:
        """True for inpainting UNets (9 input channels: latents, mask, masked-image latents)."""
        return int(self.unet.config.in_channels) == 9

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: ``epsilon`` (noise) or ``v_prediction`` (SD 2.x 768)."""
        return str(self.noise_scheduler.config.prediction_type)

    @property
    def max_length(self) -> int:
        """Prompt length in tokens (77 for CLIP and LDMBert)."""
        return int(min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings))

    @property
    def device(self) -> torch.device:
        """Device of the UNet (all parts move together)."""
        return next(self.unet.parameters()).device

    def token_embedding(self) -> nn.Module:
        """The text encoder's token table (``nn.Embedding`` or a placeholder wrapper while learning)."""
        return self.text_encoder.get_input_embeddings()

    def set_token_embedding(self, module: nn.Module) -> None:
        """Swap the text encoder's token table (used to add trainable rows without touching the frozen one)."""
        self.text_encoder.set_input_embeddings(module)

    def to(self, device: torch.device | str) -> Backbone:
        """Move every part to ``device`` (in place) and return self."""
        for module in (self.text_encoder, self.unet, self.vae):
            module.to(device)
        return self

    def freeze(self) -> Backbone:
        """No gradient and eval mode (no dropout) for every weight: AnoGen never trains the backbone."""
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)
            module.eval()
        return self

    def tokenize(self, prompts: list[str], tokenizer: Any = None) -> torch.Tensor:
        """Token ids ``[len(prompts), max_length]``, padded as the pipelines pad them."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        return tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text-encoder hidden states that condition the UNet ``[batch, max_length, dim]``."""
        return self.text_encoder(input_ids.to(self.device))[0]

    @property
    def embedding_dim(self) -> int:
        """Width of one token embedding (768 for SD 1.x, 1024 for SD 2.x, 1280 for LDM)."""
        return int(self.token_embedding().weight.shape[1])

    def fingerprint(self) -> str:
        """sha256 of every weight and of the vocabulary, so an embedding names the exact model it belongs to."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, module in (("text_encoder", self.text_encoder), ("unet", self.unet), ("vae", self.vae)):
                for key, tensor in sorted(module.state_dict().items()):
                    tensor = tensor.detach().to("cpu").contiguous()
                    digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
            digest.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """What the metadata json records about the backbone."""
        return {
            "id": self.spec,
            "kind": self.kind,
            "source": self.source,
            "path": self.path,
            "revision": self.revision,
            "seed": self.seed,
            "weights_sha256": self.fingerprint(),
            "resolution": self.resolution,
            "inpainting": self.inpainting,
            "prediction_type": self.prediction_type,
            "embedding_dim": self.embedding_dim,
            "text_encoder": type(self.text_encoder).__name__,
        }

    def to_pipeline(self, scheduler: Any = None) -> Any:
        """A plain diffusers pipeline sharing these parts (DDIM scheduler unless one is given)."""
        from diffusers import (
            DDIMScheduler,
            LDMTextToImagePipeline,
            StableDiffusionInpaintPipeline,
            StableDiffusionPipeline,
        )

        scheduler = scheduler if scheduler is not None else DDIMScheduler.from_config(self.noise_scheduler.config)
        if self.kind == "ldm":
            return LDMTextToImagePipeline(
                vqvae=self.vae, bert=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet, scheduler=scheduler
            )
        pipeline_class = StableDiffusionInpaintPipeline if self.inpainting else StableDiffusionPipeline
        return pipeline_class(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the backbone as a diffusers pipeline folder that :func:`load_backbone` reads back."""
        folder = Path(folder)
        self.to_pipeline().save_pretrained(folder)
        return folder


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers generated in code (transformers' tokenizer classes over a vocabulary made here)


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    """A ``CLIPTokenizer`` read from a ``vocab.json`` and a ``merges.txt`` written for it, as from a checkpoint."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="anogen-tokenizer-") as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
        (Path(folder) / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def build_tiny_clip_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> Any:
    """A CLIP byte-level BPE tokenizer (transformers' ``CLIPTokenizer``) whose merges make every word one token.

    The vocabulary starts with the byte-level alphabet of the ``tokenizers`` library in code-point order (CLIP's
    own order), each character also with CLIP's end-of-word mark ``</w>``. Merges are added longest word first,
    each word's characters joined left to right; a word that the tokenizer then still splits (another word's
    merges come first) gets extra merges that join its pieces, until the tokenizer keeps every word whole.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: dict[tuple[str, str], None] = {}  # in rank order

    def join(pieces: list[str]) -> None:
        left = pieces[0]
        for right in pieces[1:]:
            merges.setdefault((left, right), None)
            left = left + right
            vocab.setdefault(left, len(vocab))

    todo = [w for w in sorted(set(words), key=lambda w: (-len(w), w)) if len(w) > 1]
    for word in todo:
        join([*word[:-1], word[-1] + "</w>"])
    for _ in range(10):
        tokenizer = _clip_tokenizer(vocab, list(merges))
        broken = [pieces for word in todo if len(pieces := tokenizer.tokenize(word)) > 1]
        if not broken:
            break
        for pieces in broken:
            join(pieces)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return _clip_tokenizer(vocab, list(merges))


def build_tiny_bert_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> Any:
    """A BERT word-piece tokenizer (as LDM's) with ``words``, ``*`` and single characters in its vocabulary."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "*", *"!\"#$%&'()+,-./:;<=>?@[]^_`{|}~"]
    tokens += [*"abcdefghijklmnopqrstuvwxyz0123456789"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokens += [w for w in dict.fromkeys(words) if len(w) > 1]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=77)


# ----------------------------------------------------------------------------------------------------------------
# Built-in random-weight models


# A random UNet nearly ignores its prompt (GroupNorm and uniform attention wash the text out), so textual
# inversion on it has almost nothing to learn. Scaling the cross-attention output projections makes the
# prompt steer the output the way it does in a trained model; the architecture is unchanged.
TINY_CROSS_ATTENTION_GAIN = 10.0


def _tiny_unet(cross_attention_dim: int) -> nn.Module:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.mul_(TINY_CROSS_ATTENTION_GAIN)
                module.to_out[0].bias.mul_(TINY_CROSS_ATTENTION_GAIN)
    return unet


def _tiny_vae() -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _ddpm() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD_SCHEDULE)


def _seeded(seed: int, build: Callable[[], Backbone]) -> Backbone:
    """Build with torch's global RNG seeded, without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_tiny(seed: int = 0) -> Backbone:
    """Stable Diffusion's architecture at toy size (64 px), random weights, deterministic from ``seed``."""

    def build() -> Backbone:
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = build_tiny_clip_tokenizer()
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return Backbone(
            spec="tiny",
            kind="sd",
            tokenizer=tokenizer,
            text_encoder=CLIPTextModel(text_config),
            unet=_tiny_unet(32),
            vae=_tiny_vae(),
            noise_scheduler=_ddpm(),
            source="builtin",
            seed=seed,
        )

    return _seeded(seed, build)


def build_tiny_ldm(seed: int = 0) -> Backbone:
    """The paper's LDM format (LDMBert + BERT tokenizer) at toy size, random weights."""

    def build() -> Backbone:
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

        tokenizer = build_tiny_bert_tokenizer()
        config = LDMBertConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            encoder_layers=2,
            encoder_ffn_dim=64,
            encoder_attention_heads=2,
            head_dim=16,
            d_model=32,
        )
        return Backbone(
            spec="tiny-ldm",
            kind="ldm",
            tokenizer=tokenizer,
            text_encoder=LDMBertModel(config),
            unet=_tiny_unet(32),
            vae=_tiny_vae(),
            noise_scheduler=_ddpm(),
            source="builtin",
            seed=seed,
        )

    return _seeded(seed, build)


# What --backbone accepts by name. The speed benchmarks add their own (sd15-random, benchmarks/_backbones.py).
BUILTIN_BACKBONES: dict[str, Callable[[int], Backbone]] = {
    "tiny": build_tiny,
    "tiny-ldm": build_tiny_ldm,
}


# ----------------------------------------------------------------------------------------------------------------
# Loading real checkpoints


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or os.sep in spec.replace("/", "") or Path(spec).exists()


def _offline() -> bool:
    """Hugging Face's own reading of ``HF_HUB_OFFLINE`` (and ``TRANSFORMERS_OFFLINE``), as the downloader sees it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _missing_message(spec: str, detail: str) -> str:
    from huggingface_hub import constants

    offline = _offline()
    cache = constants.HF_HUB_CACHE  # honours HF_HUB_CACHE, HF_HOME and XDG_CACHE_HOME
    return (
        f"backbone {spec!r} is not a built-in ({', '.join(BUILTIN_BACKBONES)}), not a local folder, and not in the "
        f"Hugging Face cache{' (HF_HUB_OFFLINE is set)' if offline else ''}: {detail}. On a machine with internet run "
        f"`hf download {spec} --local-dir models/{spec.split('/')[-1]}` and pass --backbone models/"
        f"{spec.split('/')[-1]}, or copy the hub cache into {cache}"
    )


def resolve_backbone_folder(spec: str, revision: str | None = None) -> tuple[Path, str, str | None]:
    """A local pipeline folder for ``spec``: ``(folder, source, revision)``; hub ids go through the cache."""
    candidate = Path(spec).expanduser()
    if candidate.is_dir():
        if not (candidate / "model_index.json").is_file():
            msg = f"{candidate}: not a diffusers pipeline folder (no model_index.json)"
            raise AnogenInputError(msg)
        return candidate, "folder", revision
    if _looks_like_path(spec) or spec.count("/") != 1:
        if _looks_like_path(spec):
            msg = f"{candidate}: backbone folder not found"
            raise BackboneNotFoundError(msg)
        raise BackboneNotFoundError(_missing_message(spec, "not a hub id of the form org/name"))
    from diffusers import DiffusionPipeline

    try:
        # Passing the optional components as None keeps the downloader from fetching them; offline, asking
        # only the cache skips a doomed hub call and its warning.
        folder = DiffusionPipeline.download(
            spec,
            revision=revision,
            local_files_only=_offline() or None,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
        )
    except Exception as error:  # the hub client raises many types (OSError, HfHubHTTPError, ValueError, ...)
        detail = (" ".join(str(error).split()) or type(error).__name__).split(". ")[0].rstrip(".")
        raise BackboneNotFoundError(_missing_message(spec, detail)) from error
    folder = Path(folder)
    commit = folder.name if folder.parent.name == "snapshots" else revision
    return folder, "hub", commit


def _load_from_folder(spec: str, folder: Path, source: str, revision: str | None) -> Backbone:
    """Read an SD 1.x/2.x or LDM text-to-image pipeline folder with ``DiffusionPipeline.from_pretrained``.

    diffusers picks the pipeline class from ``model_index.json``; the optional parts (safety checker, feature
    extractor, image encoder) are not loaded. Any other pipeline (SDXL, SD3, ...) is refused.
    """
    from diffusers import DDPMScheduler, DiffusionPipeline

    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        msg = f"{folder / 'model_index.json'}: unreadable ({error})"
        raise AnogenInputError(msg) from error
    class_name = str(index.get("_class_name", ""))
    ldm = class_name == "LDMTextToImagePipeline" or "bert" in index
    sd = "text_encoder" in index and "text_encoder_2" not in index and "unet" in index
    if not (ldm or sd):
        msg = (
            f"{folder}: {class_name or 'this pipeline'} is not a Stable Diffusion 1.x/2.x or LDM text-to-image "
            "pipeline (SDXL, SD3 and others are not supported)"
        )
        raise AnogenInputError(msg)
    if ldm and index.get("vqvae", [None, None])[1] != "AutoencoderKL":
        msg = f"{folder}: only KL first stages are supported (vqvae is {index.get('vqvae')})"
        raise AnogenInputError(msg)
    optional = {name: None for name in ("safety_checker", "feature_extractor", "image_encoder") if name in index}
    from diffusers.utils import logging as diffusers_logging

    shown = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar for a few local files
    try:
        pipeline = DiffusionPipeline.from_pretrained(folder, local_files_only=True, **optional)
        scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        msg = f"{folder}: cannot load the backbone ({error})"
        raise AnogenInputError(msg) from error
    finally:
        if shown:
            diffusers_logging.enable_progress_bar()
    kind = "ldm" if ldm else "sd"
    unet = pipeline.unet
    vae = pipeline.vqvae if ldm else pipeline.vae
    text_encoder = pipeline.bert if ldm else pipeline.text_encoder
    tokenizer = pipeline.tokenizer
    return Backbone(
        spec=spec,
        kind=kind,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        noise_scheduler=scheduler,
        source=source,
        path=str(folder.resolve()),
        revision=revision,
    )


def load_backbone(spec: str, revision: str | None = None, seed: int = 0) -> Backbone:
    """A frozen backbone by name (see module docstring); ``seed`` only matters for the random built-ins."""
    if spec in BUILTIN_BACKBONES:
        return BUILTIN_BACKBONES[spec](seed).freeze()
    folder, source, resolved = resolve_backbone_folder(spec, revision)
    return _load_from_folder(spec, folder, source, resolved).freeze()
