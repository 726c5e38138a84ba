"""Backbones: the built-in random models, and loading saved pipelines back by path (SD and LDM formats)."""

from pathlib import Path

import pytest
import torch

from anomalib_anogen.core.backbones import TINY_WORDS, build_tiny, build_tiny_ldm, load_backbone, sd15_configs
from anomalib_anogen.core.errors import BackboneNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_is_deterministic_and_tokenises_words_as_single_tokens() -> None:
    first, again, other = build_tiny(0), build_tiny(0), build_tiny(1)
    assert first.fingerprint() == again.fingerprint()
    assert first.fingerprint() != other.fingerprint()
    tokenizer = first.tokenizer
    assert [w for w in TINY_WORDS if len(tokenizer.tokenize(w)) != 1] == []
    assert tokenizer.tokenize("a photo of a bottle defect") == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "bottle</w>",
        "defect</w>",
    ]
    assert first.resolution == 64 and first.vae_scale_factor == 8 and not first.inpainting


def test_tiny_saved_as_sd_pipeline_loads_back_by_path(tmp_path: Path) -> None:
    tiny = build_tiny(0)
    folder = tiny.save_pretrained(tmp_path / "tiny-sd")
    loaded = load_backbone(str(folder))
    assert (loaded.kind, loaded.source, type(loaded.text_encoder).__name__) == ("sd", "folder", "CLIPTextModel")
    assert loaded.fingerprint() == tiny.fingerprint()
    assert loaded.describe()["path"] == str(folder.resolve())
    assert not any(p.requires_grad for p in loaded.unet.parameters())


def test_tiny_ldm_saved_as_ldm_pipeline_loads_back_by_path(tmp_path: Path) -> None:
    tiny = build_tiny_ldm(0)
    folder = tiny.save_pretrained(tmp_path / "tiny-ldm")
    assert '"LDMTextToImagePipeline"' in (folder / "model_index.json").read_text()
    loaded = load_backbone(str(folder))
    assert (loaded.kind, type(loaded.text_encoder).__name__) == ("ldm", "LDMBertModel")
    assert loaded.fingerprint() == tiny.fingerprint()
    ids = loaded.tokenize(["a photo of a * defect"])
    assert loaded.encode_text(ids).shape == (1, 77, loaded.embedding_dim)


def test_missing_local_backbone_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneNotFoundError, match="not found"):
        load_backbone(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"model_index\.json"):
        load_backbone(str(tmp_path / "empty"))


def test_sd15_random_has_stable_diffusion_15_shapes() -> None:
    """Built on the meta device: the exact parameter counts of SD 1.5 without allocating 4 GB."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd15_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480
