"""Backbones: the built-in random models, and loading saved pipelines back by path (SD and LDM formats)."""

from pathlib import Path

import pytest
import torch

from anomalib_anogen.core import backbones
from anomalib_anogen.core.backbones import (
    BUILTIN_BACKBONES,
    TINY_WORDS,
    build_tiny,
    build_tiny_clip_tokenizer,
    build_tiny_ldm,
    load_backbone,
)
from anomalib_anogen.core.errors import BackboneNotFoundError

from .helpers.data import benchmark_module

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


def test_tiny_clip_tokenizer_keeps_its_vocabulary_merges_and_ids() -> None:
    """Banks made with ``tiny`` stay byte-identical only with these exact ids (pinned to the ones they were made with).

    764 tokens and 256 merges: the byte-level alphabet first in CLIP's order, the special tokens last.
    """
    import hashlib
    import json

    tokenizer = build_tiny_clip_tokenizer()
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert (len(vocab), len(merges)) == (764, 256)
    assert [token for token, _ in vocab[:3]] == ["!", '"', "#"]
    assert vocab[-2:] == [("<|startoftext|>", 762), ("<|endoftext|>", 763)]
    digest = hashlib.sha256(json.dumps([vocab, merges]).encode()).hexdigest()
    assert digest == "cd87fe1546a8218ec3a1fdc46da6f2d698672d59841b3b6f8399398928dcf3d9"
    assert tokenizer("a photo of a defect").input_ids == [762, 320, 677, 759, 320, 626, 763]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.model_max_length) == (
        762, 763, 763, 77,
    )  # fmt: skip


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
    """The benchmarks' sd15-random, built on the meta device: SD 1.5's exact parameter counts without 4 GB."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = benchmark_module("_backbones").sd15_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480


def test_sd15_random_is_not_a_product_backbone_until_a_benchmark_registers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "sd15-random" not in BUILTIN_BACKBONES
    with pytest.raises(BackboneNotFoundError, match=r"not a built-in \(tiny, tiny-ldm\)"):
        load_backbone("sd15-random")
    monkeypatch.setattr(backbones, "BUILTIN_BACKBONES", dict(BUILTIN_BACKBONES))  # registered in this test only
    module = benchmark_module("_backbones")
    module.register()
    assert backbones.BUILTIN_BACKBONES["sd15-random"] is module.build_sd15_random
