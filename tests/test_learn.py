"""``anogen learn`` / ``import-embedding``: masked textual inversion on the tiny backbone, outputs, bad input."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_anogen.generation.backbones import build_tiny, build_tiny_ldm
from anomalib_anogen.generation.embeddings import (
    EMBEDDING_FILE,
    METADATA_FILE,
    apply_embedding,
    load_embedding,
    load_released,
)
from anomalib_anogen.generation.errors import AnogenInputError
from anomalib_anogen.generation.learn import import_embedding, learn
from anomalib_anogen.generation.support import discover_support, load_support, sha256_file
from anomalib_anogen.generation.textual_inversion import LearnConfig, evaluate_loss, learn_embedding

from .conftest import (
    RELEASED_EMBEDDINGS,
    REPO,
    SUPPORT_BOTTLE,
    needs_released_embeddings,
    needs_shared_support,
    run_cli,
)

torch.set_num_threads(1)  # the tiny models' ops are too small to gain from threads on 2 cores

FAST = {"backbone": "tiny", "steps": 3, "batch_size": 2, "progress": False}


def _pair(folder: Path, name: str, size: int = 64, mask_size: int | None = None, mode: str = "RGB") -> None:
    """Write ``name.png`` and ``name_mask.png`` (a square defect) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if mode == "I;16":
        Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257).save(folder / f"{name}.png")
    elif mode == "L":
        Image.fromarray(pixels[:, :, 0]).save(folder / f"{name}.png")
    else:
        Image.fromarray(pixels).save(folder / f"{name}.png")
    side = mask_size or size
    mask = np.zeros((side, side), dtype=np.uint8)
    mask[side // 4 : side // 2, side // 4 : side // 2] = 255
    Image.fromarray(mask).save(folder / f"{name}_mask.png")


@pytest.fixture
def support(tmp_path: Path) -> Path:
    """Support layout with two defects of two pairs each."""
    root = tmp_path / "support"
    for defect in ("crack", "stain"):
        for name in ("000", "001"):
            _pair(root / defect, name)
    return root


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(0)


def _learn_fails(match: str, output: Path, **kwargs: object) -> None:
    with pytest.raises(AnogenInputError, match=match):
        learn(output=str(output), **{**FAST, **kwargs})
    assert not output.exists() or not any(output.iterdir()), "something was left in --output"


# ---------------------------------------------------------------------------------------------------------------
# Training


@needs_shared_support()
def test_loss_drops_on_real_bottle_support(tiny) -> None:
    found = discover_support(SUPPORT_BOTTLE, defects=["broken_large"])
    pairs = load_support(found)["broken_large"]
    config = LearnConfig(steps=200, resolution=64, seed=0)
    result = learn_embedding(tiny, pairs, "<anogen-broken_large>", config, progress=False)
    assert result.loss_end < 0.9 * result.loss_start, (result.loss_start, result.loss_end)
    assert result.train_loss_last < result.train_loss_first
    again = evaluate_loss(tiny, pairs, "<anogen-broken_large>", result.vector, config)
    assert again == pytest.approx(result.loss_end)


def test_only_the_placeholder_changes_every_weight_stays_bit_identical(tiny, support: Path) -> None:
    before = {
        f"{name}.{key}": tensor.clone()
        for name, module in (("text", tiny.text_encoder), ("unet", tiny.unet), ("vae", tiny.vae))
        for key, tensor in module.state_dict().items()
    }
    table = tiny.token_embedding()
    vocab = dict(tiny.tokenizer.get_vocab())
    pairs = load_support(discover_support(support))["crack"]
    init_id = tiny.tokenizer.encode("defect", add_special_tokens=False)[0]
    result = learn_embedding(tiny, pairs, "<anogen-crack>", LearnConfig(steps=5, batch_size=2), progress=False)
    after = {
        f"{name}.{key}": tensor
        for name, module in (("text", tiny.text_encoder), ("unet", tiny.unet), ("vae", tiny.vae))
        for key, tensor in module.state_dict().items()
    }
    assert before.keys() == after.keys()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed == []
    assert tiny.token_embedding() is table and tiny.tokenizer.get_vocab() == vocab
    assert result.vector.shape == (1, 32)
    assert not torch.equal(result.vector[0], table.weight[init_id]), "the placeholder row did not move"


def test_learn_writes_diffusers_textual_inversion_and_metadata(tmp_path: Path, support: Path) -> None:
    output = tmp_path / "embeddings"
    written = learn(support=str(support), output=str(output), seed=3, **FAST)
    assert [p.name for p in written] == ["crack", "stain"]
    assert sorted(p.name for p in output.iterdir()) == ["crack", "stain"]  # no temporary folder left
    meta = json.loads((output / "crack" / METADATA_FILE).read_text())
    assert meta["token"] == "<anogen-crack>" and meta["init_word"] == "defect" and meta["seed"] == 3
    assert meta["backbone"]["id"] == "tiny" and len(meta["backbone"]["weights_sha256"]) == 64
    hyper = meta["hyperparameters"]
    assert (hyper["steps"], hyper["batch_size"], hyper["resolution"], hyper["hflip_p"]) == (3, 2, 64, 0.5)
    assert hyper["lr_effective"] == pytest.approx(5e-3 * 2)
    assert set(meta["loss"]) >= {"start", "end"}
    files = meta["support"]["files"]
    assert [f["image"] for f in files] == ["crack/000.png", "crack/001.png"]
    assert files[0]["image_sha256"] == sha256_file(support / "crack" / "000.png")
    assert files[0]["mask_sha256"] == sha256_file(support / "crack" / "000_mask.png")
    assert meta["embedding_sha256"] == sha256_file(output / "crack" / EMBEDDING_FILE)

    # A plain diffusers pipeline accepts the file, and the token changes the text encoder's output.
    pipeline = build_tiny(0).to_pipeline()
    pipeline.load_textual_inversion(str(output / "crack" / EMBEDDING_FILE), token="<anogen-crack>")
    token_id = pipeline.tokenizer.convert_tokens_to_ids("<anogen-crack>")
    stored = load_embedding(output / "crack").vector
    assert torch.equal(pipeline.text_encoder.get_input_embeddings().weight[token_id], stored[0])

    def encode(prompt: str) -> torch.Tensor:
        ids = pipeline.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return pipeline.text_encoder(ids)[0]

    with_token, with_init_word = encode("a photo of a <anogen-crack>"), encode("a photo of a defect")
    assert not torch.allclose(with_token, with_init_word)


def test_mvtec_layout_records_the_images_used(tmp_path: Path) -> None:
    root = tmp_path / "category"
    for name in ("000", "001", "002", "003"):
        _pair(root / "test" / "crack", name)
        (root / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
        (root / "test" / "crack" / f"{name}_mask.png").rename(root / "ground_truth" / "crack" / f"{name}_mask.png")
    _pair(root / "test" / "good", "000")  # skipped: normal images have no masks
    (root / "test" / "good" / "000_mask.png").unlink()
    first = discover_support(root, shots=2, seed=5)
    assert first.layout == "mvtec" and first.defects == ["crack"]
    assert first.pairs == discover_support(root, shots=2, seed=5).pairs
    learn(support=str(root), output=str(tmp_path / "out"), shots=2, seed=5, **FAST)
    meta = json.loads((tmp_path / "out" / "crack" / METADATA_FILE).read_text())["support"]
    assert meta["layout"] == "mvtec" and meta["shots"] == 2 and meta["selection_seed"] == 5
    assert meta["selected"] == [str(p.image.relative_to(root)) for p in first.pairs["crack"]]
    assert meta["available"] == 4


def test_inpainting_and_ldm_backbones_train(tiny, support: Path) -> None:
    from diffusers import UNet2DConditionModel

    pairs = load_support(discover_support(support))["crack"]
    inpainting = build_tiny(0)
    inpainting.unet = UNet2DConditionModel.from_config({**dict(inpainting.unet.config), "in_channels": 9})
    inpainting.freeze()
    assert inpainting.inpainting
    config = LearnConfig(steps=2, batch_size=2)
    assert learn_embedding(inpainting, pairs, "<x>", config, progress=False).vector.shape == (1, 32)
    ldm = build_tiny_ldm(0).freeze()
    result = learn_embedding(ldm, pairs, "<anogen-crack>", config, progress=False)
    assert result.vector.shape == (1, 32)


# ---------------------------------------------------------------------------------------------------------------
# import-embedding


@needs_released_embeddings()
def test_import_released_embedding(tmp_path: Path) -> None:
    written = import_embedding(input=[str(RELEASED_EMBEDDINGS)], output=str(tmp_path / "out"), category="bottle")
    assert sorted(p.name for p in written) == ["broken_large", "broken_small", "contamination"]
    embedding = load_embedding(tmp_path / "out" / "broken_large")
    assert embedding.token == "*" and embedding.vector.shape == (1, 1280)
    token, vector, token_id = load_released(RELEASED_EMBEDDINGS / "bottle_broken_large.pt")
    assert (token, token_id) == ("*", 1008) and torch.equal(vector, embedding.vector)
    assert embedding.metadata["imported_from"]["sha256"] == sha256_file(RELEASED_EMBEDDINGS / "bottle_broken_large.pt")
    named = import_embedding(
        input=[str(RELEASED_EMBEDDINGS / "bottle_contamination.pt")],
        output=str(tmp_path / "named"),
        token="<bottle-contamination>",
        defect="contamination",
    )
    assert load_embedding(named[0]).token == "<bottle-contamination>"
    assert load_embedding(named[0]).vector.shape == (1, 1280)


class Payload:
    """Any class outside the allow-list: unpickling it could run code, so it must be refused."""


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_import_refuses_anything_beyond_the_allow_list(tmp_path: Path) -> None:
    param = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(1, 1280))})
    torch.save({"string_to_token": {"*": torch.tensor(1)}, "string_to_param": param, "x": Payload()}, tmp_path / "a.pt")
    with pytest.raises(AnogenInputError, match="allow-list"):
        load_released(tmp_path / "a.pt")
    torch.save({"string_to_token": {"*": torch.tensor(1)}, "string_to_param": param, "extra": 1}, tmp_path / "b.pt")
    with pytest.raises(AnogenInputError, match="refused"):
        load_released(tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes(pickle.dumps(os.system))
    with pytest.raises(AnogenInputError, match=r"c\.pt"):
        load_released(tmp_path / "c.pt")
    with pytest.raises(AnogenInputError, match=r"a\.pt"):
        import_embedding(input=[str(tmp_path / "a.pt")], output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_released_style_embedding_applies_to_an_ldm_backbone() -> None:
    """The released ``*`` overwrites the existing row of an LDM vocabulary, as in the authors' code."""
    from anomalib_anogen.generation.embeddings import Embedding

    ldm = build_tiny_ldm(0)
    before = len(ldm.tokenizer)
    vector = torch.randn(1, ldm.embedding_dim)
    ids = apply_embedding(ldm, Embedding("*", vector, {}, Path("x")))
    assert len(ldm.tokenizer) == before and torch.equal(ldm.token_embedding().weight[ids[0]], vector[0])
    ids = apply_embedding(ldm, Embedding("<new>", vector, {}, Path("x")))
    assert ids == [before] and ldm.token_embedding().num_embeddings == before + 1


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the file, nothing left in --output


def test_image_without_mask(tmp_path: Path, support: Path) -> None:
    (support / "crack" / "001_mask.png").unlink()
    _learn_fails(r"001\.png: no mask", tmp_path / "out", support=str(support))


def test_empty_mask(tmp_path: Path, support: Path) -> None:
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(support / "stain" / "000_mask.png")
    _learn_fails(r"000_mask\.png: mask is empty", tmp_path / "out", support=str(support))


def test_folder_with_no_images(tmp_path: Path, support: Path) -> None:
    (support / "hole").mkdir()
    _learn_fails(r"hole: no images", tmp_path / "out", support=str(support))
    _learn_fails(r"not found", tmp_path / "out", support=str(tmp_path / "nothing"))


def test_non_image_and_unreadable_files(tmp_path: Path, support: Path) -> None:
    (support / "crack" / "notes.txt").write_text("hello")
    _learn_fails(r"notes\.txt: not an image", tmp_path / "out", support=str(support))
    (support / "crack" / "notes.txt").unlink()
    (support / "crack" / "001.png").write_bytes(b"not a png")
    _learn_fails(r"001\.png: not a readable image", tmp_path / "out", support=str(support))


def test_unknown_backbone(tmp_path: Path, support: Path) -> None:
    _learn_fails(r"backbone folder not found", tmp_path / "out", support=str(support), backbone="./models/nothing")


def test_existing_embedding_is_refused_unless_overwrite(tmp_path: Path, support: Path) -> None:
    output = tmp_path / "out"
    learn(support=str(support), output=str(output), defects=["crack"], **FAST)
    first = (output / "crack" / EMBEDDING_FILE).read_bytes()
    with pytest.raises(AnogenInputError, match=r"crack/learned_embeds\.safetensors: a finished embedding"):
        learn(support=str(support), output=str(output), **FAST)
    assert sorted(p.name for p in output.iterdir()) == ["crack"]
    assert (output / "crack" / EMBEDDING_FILE).read_bytes() == first
    learn(support=str(support), output=str(output), defects=["crack"], overwrite=True, seed=1, **FAST)
    assert (output / "crack" / EMBEDDING_FILE).read_bytes() != first
    assert sorted(p.name for p in output.iterdir()) == ["crack"]


def test_mask_of_another_size_is_resized_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "support"
    _pair(root / "crack", "000", size=64, mask_size=32)
    with pytest.warns(UserWarning, match=r"000_mask\.png: mask is 32x32 but its image is 64x64"):
        learn(support=str(root), output=str(tmp_path / "out"), **FAST)
    meta = json.loads((tmp_path / "out" / "crack" / METADATA_FILE).read_text())
    assert meta["support"]["files"][0]["mask_resized"] is True


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_grayscale_and_16_bit_images_are_converted(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "support"
    _pair(root / "crack", "000", mode=mode)
    loaded = load_support(discover_support(root))["crack"][0]
    assert loaded.image.mode == "RGB"
    expected = np.asarray(Image.open(root / "crack" / "000.png"), dtype=np.float64)
    expected = np.round(expected / 257) if mode == "I;16" else expected
    assert np.array_equal(np.asarray(loaded.image)[:, :, 1], expected.astype(np.uint8))
    learn(support=str(root), output=str(tmp_path / "out"), **FAST)
    assert (tmp_path / "out" / "crack" / EMBEDDING_FILE).is_file()


# ---------------------------------------------------------------------------------------------------------------
# The console script


@pytest.mark.parametrize("command", ["learn", "import-embedding"])
def test_cli_help(tmp_path: Path, command: str) -> None:
    result = run_cli(["anogen", command, "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--output" in result.stdout and "--print_config" in result.stdout and "--config" in result.stdout


def test_cli_print_config_from_the_bottle_config(tmp_path: Path) -> None:
    config = REPO / "configs" / "anogen" / "learn_bottle.yaml"
    result = run_cli(["anogen", "learn", "--config", str(config), "--steps", "10", "--print_config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "steps: 10" in result.stdout and "backbone: CompVis/ldm-text2im-large-256" in result.stdout
    assert "lr: 0.005" in result.stdout and "batch_size: 4" in result.stdout


def _assert_one_error_line(result: object, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("anogen "), result.stderr
    for needle in needles:
        assert needle in last, last


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, support: Path) -> None:
    (support / "crack" / "001_mask.png").unlink()
    output = tmp_path / "out"
    result = run_cli(
        ["anogen", "learn", "--support", str(support), "--output", str(output), "--backbone", "tiny"], tmp_path
    )
    _assert_one_error_line(result, "001.png: no mask")
    assert not output.exists()


def test_cli_unknown_hub_backbone_offline_exits_2(
    tmp_path: Path, support: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    output = tmp_path / "out"
    args = ["--support", str(support), "--output", str(output), "--backbone", "nobody/no-such-model"]
    result = run_cli(["anogen", "learn", *args], tmp_path)
    _assert_one_error_line(result, "nobody/no-such-model", "hf download", "HF_HUB_OFFLINE")
    assert not output.exists()


def test_thread_setting_is_restored_after_the_block() -> None:
    import torch

    from anomalib_anogen.generation.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
