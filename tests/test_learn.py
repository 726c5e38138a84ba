"""``anogen learn`` / ``import-embedding``: masked textual inversion on the tiny backbone, outputs, bad input."""

import json
import os
import pickle
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_anogen.core.backbones import build_tiny, build_tiny_ldm
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.files import sha256_file
from anomalib_anogen.data.support import discover_support, load_support
from anomalib_anogen.learn import textual_inversion
from anomalib_anogen.learn.command import import_embedding, learn
from anomalib_anogen.learn.embeddings import (
    EMBEDDING_FILE,
    METADATA_FILE,
    apply_embedding,
    load_embedding,
    load_released,
)
from anomalib_anogen.learn.options import ImportEmbeddingOptions, LearnOptions
from anomalib_anogen.learn.textual_inversion import (
    TEMPLATES,
    LearnConfig,
    evaluate_loss,
    learn_embedding,
    templates_sha256,
)

from .helpers.cli import run_cli
from .helpers.data import RELEASED_EMBEDDINGS, REPO, SUPPORT_BOTTLE, needs_released_embeddings, needs_shared_support

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"backbone": "tiny", "steps": 3, "batch_size": 2, "progress": False}


def _pair(folder: Path, name: str, size: int = 64, mask_size: int | None = None, mode: str = "RGB") -> None:
    """Write ``name.png`` and ``name_mask.png`` (a square defect) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # not hash(): it changes with PYTHONHASHSEED
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
        learn(LearnOptions(output=str(output), **{**FAST, **kwargs}))
    assert not output.is_dir() or not any(output.iterdir()), "something was left in --output"


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


@pytest.mark.parametrize(("plugin_precision", "recorded"), [("bf16-mixed", "bf16"), ("16-mixed", "fp16")])
def test_mixed_precision_is_fabrics_and_keeps_the_vector_fp32(
    tiny, support: Path, plugin_precision: str, recorded: str
) -> None:
    """The GPU path on a CPU: Fabric's precision plugin autocasts (and scales fp16 gradients); the vector stays fp32."""
    from lightning.fabric import Fabric
    from lightning.fabric.plugins.precision import MixedPrecision

    plugin = MixedPrecision(plugin_precision, "cpu")
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[plugin])
    pairs = load_support(discover_support(support))["crack"]
    config = LearnConfig(steps=4, batch_size=2)
    result = learn_embedding(tiny, pairs, "<anogen-crack>", config, progress=False, fabric=fabric)
    fp32 = learn_embedding(tiny, pairs, "<anogen-crack>", config, progress=False)
    assert result.precision == recorded
    assert fp32.precision == "32"
    assert result.vector.dtype == torch.float32
    assert torch.isfinite(result.vector).all()
    # Half-precision compute changes the numbers a little, not the direction of learning.
    assert not torch.equal(result.vector, fp32.vector)
    assert torch.allclose(result.vector, fp32.vector, atol=0.05)
    if plugin_precision == "16-mixed":
        assert plugin.scaler is not None
        assert plugin.scaler.get_scale() > 0


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
    written = learn(LearnOptions(support=str(support), output=str(output), seed=3, **FAST))
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
    learn(LearnOptions(support=str(root), output=str(tmp_path / "out"), shots=2, seed=5, **FAST))
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
    written = import_embedding(
        ImportEmbeddingOptions(input=[str(RELEASED_EMBEDDINGS)], output=str(tmp_path / "out"), category="bottle")
    )
    assert sorted(p.name for p in written) == ["broken_large", "broken_small", "contamination"]
    embedding = load_embedding(tmp_path / "out" / "broken_large")
    assert embedding.token == "*" and embedding.vector.shape == (1, 1280)
    token, vector, token_id = load_released(RELEASED_EMBEDDINGS / "bottle_broken_large.pt")
    assert (token, token_id) == ("*", 1008) and torch.equal(vector, embedding.vector)
    assert embedding.metadata["imported_from"]["sha256"] == sha256_file(RELEASED_EMBEDDINGS / "bottle_broken_large.pt")
    named = import_embedding(
        ImportEmbeddingOptions(
            input=[str(RELEASED_EMBEDDINGS / "bottle_contamination.pt")],
            output=str(tmp_path / "named"),
            token="<bottle-contamination>",
            defect="contamination",
        )
    )
    assert load_embedding(named[0]).token == "<bottle-contamination>"
    assert load_embedding(named[0]).vector.shape == (1, 1280)


class Payload:
    """Any class outside the allow-list: unpickling it could run code, so it must be refused."""


def _released(path: Path, vector: torch.Tensor | None = None, **extra: object) -> Path:
    """A file in the released format: ``{"string_to_token": {"*": 1008}, "string_to_param": {"*": [1, 1280]}}``."""
    vector = torch.randn(1, 1280) if vector is None else vector
    param = torch.nn.ParameterDict({"*": torch.nn.Parameter(vector)})
    torch.save({"string_to_token": {"*": torch.tensor(1008)}, "string_to_param": param, **extra}, path)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_import_refuses_anything_beyond_the_allow_list(tmp_path: Path) -> None:
    _released(tmp_path / "a.pt", x=Payload())
    with pytest.raises(
        AnogenInputError,
        match=r"a\.pt: refused, a torch file holding an object of class .*Payload "
        r"outside the allow-list",
    ) as refused:
        load_released(tmp_path / "a.pt")
    _released(tmp_path / "b.pt", extra=1)
    with pytest.raises(AnogenInputError, match=r"b\.pt: refused, a torch file holding a dict with keys \['extra'"):
        load_released(tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes(pickle.dumps(os.system))
    with pytest.raises(AnogenInputError, match=r"c\.pt: not a torch file \(it is a plain Python pickle"):
        load_released(tmp_path / "c.pt")
    with pytest.raises(AnogenInputError, match=r"a\.pt"):
        import_embedding(ImportEmbeddingOptions(input=[str(tmp_path / "a.pt")], output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    assert "weights_only" not in str(refused.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"string_to_token": {}}', r"not a torch file \(it looks like JSON\)"),
        (b"hello", r"not a torch file \(it looks like text\)"),
        (b"", r"not a torch file \(it is empty\)"),
        (b"\x89PNG\r\n\x1a\n0000", r"not a torch file \(it looks like a PNG image\)"),
        ("tensor", r"refused, a torch file holding a tensor of shape \[3\]; expected a released AnoGen embedding"),
        ("truncated", r"not a torch file \(it is a truncated or damaged zip archive"),
        ("no version record", r"a torch file that cannot be read, damaged or truncated \(Expected hasRecord"),
    ],
)
def test_import_says_what_a_non_embedding_file_is(tmp_path: Path, content: bytes | str, expected: str) -> None:
    path = tmp_path / "file.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "truncated":
        _released(path)
        path.write_bytes(path.read_bytes()[:-100])
    elif content == "no version record":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", b"garbage")
    else:
        path.write_bytes(content)
    with pytest.raises(AnogenInputError, match=r"file\.pt: " + expected) as refused:
        load_released(path)
    assert "weights_only" not in str(refused.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_import_refuses_non_finite_released_embeddings(tmp_path: Path) -> None:
    vector = torch.randn(1, 1280)
    vector[0, 7] = float("inf")
    _released(tmp_path / "bottle_inf.pt", vector)
    _released(tmp_path / "bottle_ok.pt")
    with pytest.raises(AnogenInputError, match=r"bottle_inf\.pt: the embedding holds 1 NaN/Inf value\(s\) of 1280"):
        import_embedding(ImportEmbeddingOptions(input=str(tmp_path), output=str(tmp_path / "out"), category="bottle"))
    assert not (tmp_path / "out").exists(), "nothing is written when one input is refused"
    with pytest.raises(AnogenInputError, match=r"--defect '\.\./x' must be a folder name"):
        import_embedding(
            ImportEmbeddingOptions(input=str(tmp_path / "bottle_ok.pt"), output=str(tmp_path / "out"), defect="../x")
        )


def test_load_refuses_a_changed_or_non_finite_embedding(tmp_path: Path) -> None:
    from anomalib_anogen.learn.embeddings import write_embedding_dir

    folder = write_embedding_dir(tmp_path, "crack", "<t>", torch.ones(1, 32), {"format": "anogen-embedding/1"}, False)
    assert torch.equal(load_embedding(folder).vector, torch.ones(1, 32))
    file = folder / EMBEDDING_FILE
    recorded = json.loads((folder / METADATA_FILE).read_text())["embedding_sha256"]
    file.write_bytes(file.read_bytes().replace(b"\x00\x00\x80\x3f", b"\x00\x00\x00\x40", 1))  # a 1.0 -> 2.0
    with pytest.raises(AnogenInputError) as changed:
        load_embedding(folder)
    message = str(changed.value)
    assert message.startswith(str(file)) and recorded in message and sha256_file(file) in message
    nan = torch.ones(1, 32)
    nan[0, 3] = float("nan")
    folder = write_embedding_dir(tmp_path, "stain", "<t>", nan, {"format": "anogen-embedding/1"}, False)
    with pytest.raises(AnogenInputError, match=r"stain/learned_embeds\.safetensors: the embedding holds 1 NaN/Inf"):
        load_embedding(folder)
    (folder / METADATA_FILE).unlink()  # a foreign file without metadata: still checked for NaN
    with pytest.raises(AnogenInputError, match=r"NaN/Inf"):
        load_embedding(folder / EMBEDDING_FILE)


def test_released_style_embedding_applies_to_an_ldm_backbone() -> None:
    """The released ``*`` overwrites the existing row of an LDM vocabulary, as in the authors' code."""
    from anomalib_anogen.learn.embeddings import Embedding

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


def test_rerun_keeps_finished_defects_and_learns_the_rest(
    tmp_path: Path, support: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run killed after its first defect, rerun: the finished defect is kept as it is, the others learned."""
    _pair(support / "hole", "000")
    output = tmp_path / "out"
    learn(LearnOptions(support=str(support), output=str(output), defects=["crack"], **FAST))  # the state a kill leaves
    crack = output / "crack" / EMBEDDING_FILE
    first, first_inode = crack.read_bytes(), crack.stat().st_ino
    with caplog.at_level("INFO", logger="anomalib_anogen.learn.command"):
        written = learn(LearnOptions(support=str(support), output=str(output), **FAST))
    assert [p.name for p in written] == ["hole", "stain"]
    assert crack.read_bytes() == first and crack.stat().st_ino == first_inode
    assert sorted(p.name for p in output.iterdir()) == ["crack", "hole", "stain"]
    assert "crack: kept" in caplog.text and "learning hole, stain" in caplog.text
    inodes = {d: (output / d / EMBEDDING_FILE).stat().st_ino for d in ("crack", "hole", "stain")}

    caplog.clear()
    with caplog.at_level("INFO", logger="anomalib_anogen.learn.command"):
        assert learn(LearnOptions(support=str(support), output=str(output), **FAST)) == []
    assert "every defect is already learned" in caplog.text

    # Other settings, other support content, other backbone weights: refused, naming what differs.
    with pytest.raises(AnogenInputError, match=r"crack: learned with other settings.*seed 0, now 1.*--overwrite"):
        learn(LearnOptions(support=str(support), output=str(output), **{**FAST, "seed": 1}))
    with pytest.raises(AnogenInputError, match=r"steps 3, now 4"):
        learn(LearnOptions(support=str(support), output=str(output), **{**FAST, "steps": 4}))
    stain_meta = output / "stain" / METADATA_FILE
    original = stain_meta.read_text()
    meta = json.loads(original)
    meta["backbone"]["weights_sha256"] = "0" * 64
    stain_meta.write_text(json.dumps(meta))
    with pytest.raises(AnogenInputError, match=r"stain: learned with other settings.*backbone weights"):
        learn(LearnOptions(support=str(support), output=str(output), **FAST))
    stain_meta.write_text(original)
    _pair(support / "hole", "001")  # a support image added since
    with pytest.raises(AnogenInputError, match=r"hole: learned with other settings .*support files: added hole/001"):
        learn(LearnOptions(support=str(support), output=str(output), **FAST))
    (support / "hole" / "001.png").unlink()
    (support / "hole" / "001_mask.png").unlink()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(support / "hole" / "000.png")  # the same name, edited
    with pytest.raises(AnogenInputError, match=r"support files: changed hole/000\.png"):
        learn(LearnOptions(support=str(support), output=str(output), **FAST))
    assert {d: (output / d / EMBEDDING_FILE).stat().st_ino for d in inodes} == inodes, "a refused run changed files"

    # --overwrite relearns every defect.
    written = learn(LearnOptions(support=str(support), output=str(output), overwrite=True, seed=1, **FAST))
    assert [p.name for p in written] == ["crack", "hole", "stain"]
    assert all((output / d / EMBEDDING_FILE).stat().st_ino != inodes[d] for d in inodes)
    assert crack.read_bytes() != first
    assert sorted(p.name for p in output.iterdir()) == ["crack", "hole", "stain"]


def test_prompt_templates_are_the_authors_81_in_their_order() -> None:
    """gaobb/AnoGen ``DIFFUSION/ldm/data/personalized.py`` ``imagenet_templates_small``, pinned by its sha256."""
    assert len(TEMPLATES) == 81 and len(set(TEMPLATES)) == 57
    assert all(template.count("{}") == 1 for template in TEMPLATES)
    assert TEMPLATES[0] == "a photo of a {}" and TEMPLATES[27] == "an illustration of a {}"
    assert TEMPLATES[54] == "a depiction of a {}" and TEMPLATES[-1] == "a depiction of a small {}"
    assert templates_sha256() == "9492b607526eaaaefe38c5f4dabd0f5ca492456e6e8437ff1870590754628d7a"


def test_rerun_refuses_embeddings_learned_with_other_prompt_templates(
    tmp_path: Path, support: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    learn(LearnOptions(support=str(support), output=str(output), defects=["crack"], **FAST))
    meta_file = output / "crack" / METADATA_FILE
    recorded = json.loads(meta_file.read_text())["prompt_templates"]
    assert (recorded["count"], recorded["distinct"], recorded["sha256"]) == (81, 57, templates_sha256())
    assert (
        learn(LearnOptions(support=str(support), output=str(output), defects=["crack"], **FAST)) == []
    )  # the same: kept

    with monkeypatch.context() as patch:  # the original textual-inversion code's 27
        patch.setattr(textual_inversion, "TEMPLATES", TEMPLATES[:27])
        with pytest.raises(
            AnogenInputError,
            match=r"crack: learned with other settings than this run \(prompt templates \(learned with 81 templates, "
            r"sha256 9492b607526e\.\.\.; now 27 templates, sha256 [0-9a-f]{12}\.\.\.\)\).*--overwrite",
        ):
            learn(LearnOptions(support=str(support), output=str(output), defects=["crack"], **FAST))

    written = learn(LearnOptions(support=str(support), output=str(output), defects=["crack"], overwrite=True, **FAST))
    assert json.loads((written[0] / METADATA_FILE).read_text())["prompt_templates"]["sha256"] == templates_sha256()


def test_rerun_refuses_a_damaged_or_foreign_finished_embedding(tmp_path: Path, support: Path) -> None:
    output = tmp_path / "out"
    learn(LearnOptions(support=str(support), output=str(output), defects=["crack"], **FAST))
    file = output / "crack" / EMBEDDING_FILE
    file.write_bytes(file.read_bytes()[:-1] + b"x")
    with pytest.raises(AnogenInputError, match=r"crack/learned_embeds\.safetensors: sha256 [0-9a-f]{64} differs"):
        learn(LearnOptions(support=str(support), output=str(output), **FAST))
    (output / "crack" / METADATA_FILE).unlink()
    with pytest.raises(AnogenInputError, match=r"crack: holds an embedding that anogen learn did not write"):
        learn(LearnOptions(support=str(support), output=str(output), **FAST))
    (output / "crack").rename(output / "moved")
    (output / "crack").mkdir()
    with pytest.raises(AnogenInputError, match=r"crack: exists and is not an anogen embedding"):
        learn(LearnOptions(support=str(support), output=str(output), **FAST))
    assert sorted(p.name for p in output.iterdir()) == ["crack", "moved"]


def test_mask_of_another_size_is_resized_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "support"
    _pair(root / "crack", "000", size=64, mask_size=32)
    with pytest.warns(UserWarning, match=r"000_mask\.png: mask is 32x32 but its image is 64x64"):
        learn(LearnOptions(support=str(root), output=str(tmp_path / "out"), **FAST))
    meta = json.loads((tmp_path / "out" / "crack" / METADATA_FILE).read_text())
    assert meta["support"]["files"][0]["mask_resized"] is True


def test_whole_image_mask_is_learned_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "support"
    _pair(root / "crack", "000")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "crack" / "000_mask.png")
    with pytest.warns(UserWarning, match=r"000_mask\.png: mask covers 100\.0% of the image.*inverted"):
        learn(LearnOptions(support=str(root), output=str(tmp_path / "out"), **FAST))
    meta = json.loads((tmp_path / "out" / "crack" / METADATA_FILE).read_text())
    assert meta["support"]["files"][0]["mask_fraction"] == 1.0


def _training_must_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        msg = "the backbone was loaded / training started before the input was refused"
        raise AssertionError(msg)

    monkeypatch.setattr("anomalib_anogen.learn.command._learn_on_rank", fail)


def _write_probe_fails(folder: Path) -> bool:
    """True when this process (root included) cannot create a file in ``folder``."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(handle)
    os.unlink(probe)
    return False


def test_unwritable_output_is_refused_before_training(
    tmp_path: Path, support: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _training_must_not_start(monkeypatch)
    (tmp_path / "afile").write_text("x")
    _learn_fails(
        r"afile/out: --output cannot be created, .*afile is a file", tmp_path / "afile" / "out", support=str(support)
    )
    _learn_fails(r"afile: --output exists and is not a folder", tmp_path / "afile", support=str(support))
    assert (tmp_path / "afile").read_text() == "x"
    with pytest.raises(AnogenInputError, match=r"afile is a file"):
        import_embedding(
            ImportEmbeddingOptions(input=str(_released(tmp_path / "r.pt")), output=str(tmp_path / "afile" / "out"))
        )
    # A folder that refuses writes even to root: sysfs (Linux) is read-only for everyone.
    if Path("/sys").is_dir() and _write_probe_fails(Path("/sys")):
        _learn_fails(
            r"/sys/anogen-out: --output cannot be written .*/sys", Path("/sys/anogen-out"), support=str(support)
        )
    # A read-only folder stops everyone but root (whom chmod does not stop; CI may run as either).
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            _learn_fails(r"locked/out: --output cannot be written", locked / "out", support=str(support))
        finally:
            locked.chmod(0o755)


def test_a_bad_token_of_a_later_defect_is_refused_before_the_first_defect_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "support"
    _pair(root / "aaa", "000")  # learned first; "aaa</w>" is a new token
    _pair(root / "stain", "000")  # "stain</w>" is already a word of the tiny tokenizer

    def fail(*args: object, **kwargs: object) -> None:
        msg = "a defect was trained before every token was checked"
        raise AssertionError(msg)

    monkeypatch.setattr("anomalib_anogen.learn.textual_inversion.learn_embedding", fail)
    _learn_fails(r"token 'stain</w>' already exists", tmp_path / "out", support=str(root), token="{defect}</w>")


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("steps", 0, "[1, 1000000]"),
        ("steps", 1_000_001, "[1, 1000000]"),
        ("lr", 0.0, "(0, 1]"),
        ("lr", float("nan"), "(0, 1]"),
        ("lr", float("inf"), "(0, 1]"),
        ("lr", 2.0, "(0, 1]"),
        ("batch_size", 0, "[1, 1024]"),
        ("batch_size", 1025, "[1, 1024]"),
        ("resolution", 12, "multiple of 8 in [8, 2048]"),
        ("resolution", 4096, "multiple of 8 in [8, 2048]"),
        ("seed", -1, "[0, 4294967295]"),
        ("seed", 2**32, "[0, 4294967295]"),
        ("hflip_p", 1.5, "[0, 1]"),
        ("hflip_p", float("nan"), "[0, 1]"),
        ("shots", 0, "at least 1"),
        ("threads", 0, f"[1, {os.cpu_count()}]"),
        ("threads", (os.cpu_count() or 1) + 1, f"[1, {os.cpu_count()}]"),
        ("devices", 0, "an integer >= 1 (or auto for every GPU"),
        ("devices", "two", "an integer >= 1 (or auto for every GPU"),
        ("num_nodes", 0, "an integer >= 1 (machines, each started by torchrun or SLURM"),
        ("accelerator", "tpu", "auto, cpu, gpu, cuda"),
        ("precision", "16", "auto, 32, bf16 or fp16"),
    ],
)
def test_options_out_of_range_are_refused_with_the_range(
    tmp_path: Path, support: Path, monkeypatch: pytest.MonkeyPatch, option: str, value: object, allowed: str
) -> None:
    _training_must_not_start(monkeypatch)
    with pytest.raises(AnogenInputError, match=f"--{option} ") as refused:
        learn(LearnOptions(support=str(support), output=str(tmp_path / "out"), **{**FAST, option: value}))
    assert allowed in str(refused.value) and f"got {value!r})".replace("'", "") in str(refused.value).replace("'", "")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_grayscale_and_16_bit_images_are_converted(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "support"
    _pair(root / "crack", "000", mode=mode)
    loaded = load_support(discover_support(root))["crack"][0]
    assert loaded.image.mode == "RGB"
    expected = np.asarray(Image.open(root / "crack" / "000.png"), dtype=np.float64)
    expected = np.round(expected / 257) if mode == "I;16" else expected
    assert np.array_equal(np.asarray(loaded.image)[:, :, 1], expected.astype(np.uint8))
    learn(LearnOptions(support=str(root), output=str(tmp_path / "out"), **FAST))
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

    from anomalib_anogen.core.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_cli_defects_as_the_docs_show_it(tmp_path: Path) -> None:
    """docs/learn.md's --defects example, run as written (shell-split), learns exactly those defect types."""
    import re
    import shlex

    documented = re.search(r"`(--defects '[^`]*')`", (REPO / "docs" / "learn.md").read_text())
    assert documented, "docs/learn.md shows no --defects '[...]' example"
    argv = shlex.split(documented.group(1))
    wanted = argv[1].strip("[]").split(",")
    root = tmp_path / "support"
    for defect in [*wanted, "other"]:
        _pair(root / defect, "000")
    output = tmp_path / "out"
    args = ["--support", str(root), "--output", str(output), "--backbone", "tiny", "--steps", "2"]
    result = run_cli(["anogen", "learn", *args, "--batch_size", "1", "--progress", "false", *argv], tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in output.iterdir()) == sorted(wanted)


def test_cli_refuses_unwritable_output_and_bad_numbers_in_one_line(tmp_path: Path, support: Path) -> None:
    (tmp_path / "afile").write_text("x")
    args = ["--support", str(support), "--backbone", "tiny"]
    result = run_cli(["anogen", "learn", *args, "--output", str(tmp_path / "afile" / "out")], tmp_path)
    _assert_one_error_line(result, "afile/out: --output cannot be created", "is a file, not a folder")
    result = run_cli(["anogen", "learn", *args, "--output", str(tmp_path / "out"), "--threads", "0"], tmp_path)
    _assert_one_error_line(result, "--threads must be an integer in [1, ", "got 0)")
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_cli_import_says_what_it_wrote_and_what_a_bad_file_is(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"a": 1}')
    result = run_cli(["anogen", "import-embedding", "--input", "x.json", "--output", "out"], tmp_path)
    _assert_one_error_line(result, "x.json: not a torch file (it looks like JSON)")
    assert "weights_only" not in result.stderr and not (tmp_path / "out").exists()
    _released(tmp_path / "bottle_crack.pt")
    args = ["--input", "bottle_crack.pt", "--output", "out", "--category", "bottle"]
    result = run_cli(["anogen", "import-embedding", *args], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {Path('out') / 'crack' / EMBEDDING_FILE} and {METADATA_FILE}" in result.stderr
