"""The ``anogen`` synthetic-anomaly generator and DraemWeak trained on an anomaly bank."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

if TYPE_CHECKING:
    from anomalib.engine import Engine
    from anomalib.models import AnomalibModule

from anomalib_anogen.data.bank import MANIFEST_NAME, SUMMARY_NAME, BankError, load_bank
from anomalib_anogen.data.generators import AnoGenAnomalyGenerator, PerlinGenerator, build_generator
from anomalib_anogen.models import DraemWeak

from .helpers.bank_factory import make_bank, pixels_sha256
from .helpers.cli import run_cli
from .helpers.data import REPO


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A 64 px bank of 2 defects x 6 sources made from toy normal images."""
    from anomalib_anogen.data.toy import make_toy_category

    root = tmp_path_factory.mktemp("bank_sources")
    category = make_toy_category(root, size=64, n_train=6, n_test_good=1, n_test_per_defect=1)
    sources = sorted((category / "train" / "good").glob("*.png"))
    bank_dir = tmp_path_factory.mktemp("bank")
    return bank_dir, make_bank(bank_dir, sources)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def only_bank(bank_dir: Path, **options: object) -> AnoGenAnomalyGenerator:
    defaults = {"bank_probability": 1.0, "rotation_probability": 0.0, "num_workers": 0}
    return AnoGenAnomalyGenerator(bank_dir, **{**defaults, **options})  # type: ignore[arg-type]


def test_bank_sample_target_is_its_manifest_source(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, records = bank
    torch.manual_seed(0)
    generator = only_bank(bank_dir, clean_share=0.0)
    normals = torch.rand(8, 3, 64, 64)
    synthetic = generator.generate(normals)
    anomalous_by_hash = {
        pixels_sha256(np.asarray(Image.open(bank_dir / "images" / r["defect"] / f"{r['id']}.png"))): r for r in records
    }
    source_pixels = {
        r["source"]: pixels_sha256(np.asarray(Image.open(bank_dir / r["source"]).convert("RGB"))) for r in records
    }
    assert synthetic.is_box.all()
    for index in range(8):
        record = anomalous_by_hash[pixels_sha256(to_uint8(synthetic.image[index]))]
        assert pixels_sha256(to_uint8(synthetic.target[index])) == source_pixels[record["source"]]
        assert not torch.equal(synthetic.target[index], normals[index])  # not the batch image
        box = synthetic.mask[index, 0]
        assert box.sum() == record["box"]["w"] * record["box"]["h"]


def test_half_of_bank_draws_are_clean_sources_with_empty_masks(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, _ = bank
    torch.manual_seed(1)
    synthetic = only_bank(bank_dir).generate(torch.rand(200, 3, 64, 64))
    clean = synthetic.mask.flatten(1).sum(1) == 0
    assert 70 < int(clean.sum()) < 130
    assert torch.equal(synthetic.image[clean], synthetic.target[clean])
    assert not synthetic.is_box[clean].any() and synthetic.is_box[~clean].all()


def test_bank_probability_mixes_with_perlin(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, _ = bank
    torch.manual_seed(2)
    normals = torch.rand(200, 3, 64, 64)
    synthetic = only_bank(bank_dir, bank_probability=0.5).generate(normals)
    from_batch = (synthetic.target == normals).flatten(1).all(1)  # Perlin samples keep the batch image as target
    assert 70 < int(from_batch.sum()) < 130
    assert not synthetic.is_box[from_batch].any()


def test_rotation_turns_image_target_and_mask_together(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, _ = bank
    torch.manual_seed(3)
    synthetic = only_bank(bank_dir, clean_share=0.0, rotation_probability=1.0).generate(torch.rand(16, 3, 64, 64))
    unrotated = only_bank(bank_dir, clean_share=0.0)
    torch.manual_seed(3)
    straight = unrotated.generate(torch.rand(16, 3, 64, 64))
    assert not torch.equal(synthetic.mask, straight.mask)  # something was rotated
    changed = (synthetic.image - synthetic.target).abs().amax(dim=1) > 0.05
    near_box = torch.nn.functional.max_pool2d(synthetic.mask, kernel_size=5, stride=1, padding=2)[:, 0] > 0
    assert changed.any()
    assert not (changed & ~near_box).any()  # the defect stays inside its (rotated) box
    assert set(torch.unique(synthetic.mask).tolist()) <= {0.0, 1.0}


def test_bank_at_another_resolution_is_resized_with_its_masks(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, _ = bank
    synthetic = only_bank(bank_dir, clean_share=0.0).generate(torch.rand(4, 3, 32, 32))
    assert synthetic.image.shape == synthetic.target.shape == (4, 3, 32, 32)
    assert synthetic.mask.shape == (4, 1, 32, 32)
    assert set(torch.unique(synthetic.mask).tolist()) == {0.0, 1.0}


def test_workers_read_the_bank(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, _ = bank
    generator = only_bank(bank_dir, num_workers=2, clean_share=0.0)
    synthetic = generator.generate(torch.rand(8, 3, 64, 64))
    assert synthetic.is_box.all()
    assert generator._stream is not None and len(generator._pending) == 0
    workers = [worker for worker in generator._stream._workers]
    assert len(workers) == 2 and all(worker.is_alive() for worker in workers)
    generator.close()  # what the models do at the end of training
    assert generator._stream is None
    assert not any(worker.is_alive() for worker in workers)
    assert generator.generate(torch.rand(2, 3, 64, 64)).is_box.all()  # a later draw starts new workers
    generator.close()


def test_exclude_defects(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, records = bank
    assert {r.defect for r in load_bank(bank_dir, exclude_defects=["dent"])} == {"scratch"}
    assert len(load_bank(bank_dir)) == len(records)
    with pytest.raises(BankError, match="holds no anomalies after excluding"):
        load_bank(bank_dir, exclude_defects=["dent", "scratch"])


def test_perlin_contract_holds(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, _ = bank
    generator = only_bank(bank_dir)
    augmented, mask = generator(torch.rand(3, 64, 64))
    assert augmented.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    augmented, mask = generator(torch.rand(2, 3, 64, 64))
    assert augmented.shape == (2, 3, 64, 64) and mask.shape == (2, 1, 64, 64)


def fit_on_bank_normals(model: "AnomalibModule", bank_dir: Path, tmp_path: Path, steps: int) -> "Engine":
    """Train ``steps`` steps on the bank's own normal images (anomalib's Folder datamodule)."""
    from anomalib.data import Folder
    from anomalib.engine import Engine

    datamodule = Folder(
        name="bank_normals",
        root=bank_dir,
        normal_dir="normal",
        train_batch_size=4,
        num_workers=0,
        test_split_mode="none",
        val_split_mode="none",
    )
    engine = Engine(
        default_root_dir=tmp_path,
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    engine.fit(model=model, datamodule=datamodule)
    return engine


def test_stock_draem_trains_with_the_generator_swapped_in(bank: tuple[Path, list[dict]], tmp_path: Path) -> None:
    from anomalib.models import Draem

    bank_dir, _ = bank
    textures = bank_dir / "normal"  # an existing folder, so anomalib's Draem does not try to download DTD
    model = Draem(dtd_dir=textures, pre_processor=Draem.configure_pre_processor((32, 32)), visualizer=False)
    model.augmenter = only_bank(bank_dir)
    assert fit_on_bank_normals(model, bank_dir, tmp_path, steps=1).trainer.global_step == 1


def test_draem_weak_trains_on_a_bank(bank: tuple[Path, list[dict]], tmp_path: Path) -> None:
    bank_dir, _ = bank
    model = DraemWeak(
        generator="anogen",
        bank_dir=bank_dir,
        reconstructive_width=8,
        discriminative_width=4,
        pre_processor=DraemWeak.configure_pre_processor((32, 32)),
        visualizer=False,
    )
    assert isinstance(model.augmenter, AnoGenAnomalyGenerator)
    model.augmenter.num_workers = 0
    engine = fit_on_bank_normals(model, bank_dir, tmp_path, steps=3)
    assert engine.trainer.global_step == 3
    assert torch.isfinite(engine.trainer.callback_metrics["train_loss_step"])


def test_destseg_weak_trains_on_a_bank(bank: tuple[Path, list[dict]], tmp_path: Path) -> None:
    from anomalib_anogen.models import DestsegWeak

    bank_dir, _ = bank
    model = DestsegWeak(
        pretrained_weights="random",
        generator="anogen",
        bank_dir=bank_dir,
        steps=2,
        de_st_steps=1,
        T=10,
        pre_processor=DestsegWeak.configure_pre_processor((64, 64)),
        visualizer=False,
    )
    model.augmenter.num_workers = 0
    synthetic = model.synthesize(torch.rand(8, 3, 64, 64))
    assert synthetic.is_box.any()
    assert fit_on_bank_normals(model, bank_dir, tmp_path, steps=2).trainer.global_step == 2


@pytest.mark.parametrize("name", ["draem_weak", "destseg_weak"])
def test_the_anogen_overlay_config_turns_a_models_config_to_the_bank(name: str, tmp_path: Path) -> None:
    args = ["--config", str(REPO / "configs" / f"{name}.yaml"), "--config", str(REPO / "configs" / "anogen_bank.yaml")]
    result = run_cli(["anomalib", "train", *args, "--print_config"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    model = yaml.safe_load(result.stdout)["model"]
    assert model["class_path"].endswith("DraemWeak" if name == "draem_weak" else "DestsegWeak")
    assert model["init_args"]["generator"] == "anogen" and model["init_args"]["bank_dir"] == "runs/bottle/bank"


def test_missing_bank_says_how_to_make_one(tmp_path: Path) -> None:
    model = DraemWeak(generator="anogen", bank_dir=tmp_path / "nowhere")  # read when training starts
    with pytest.raises(BankError, match=r"does not exist.*anogen generate"):
        model.augmenter  # noqa: B018
    with pytest.raises(BankError, match=r"no manifest\.jsonl.*anogen generate"):
        build_generator("anogen", bank_dir=tmp_path)


def test_missing_bank_stops_training_before_the_first_step(bank: tuple[Path, list[dict]], tmp_path: Path) -> None:
    import shutil

    bank_dir, _ = bank
    moved = tmp_path / "bank"
    shutil.copytree(bank_dir, moved)
    model = DraemWeak(generator="anogen", bank_dir=moved, reconstructive_width=8, discriminative_width=4)
    shutil.rmtree(moved)
    with pytest.raises(BankError, match=r"bank_dir: anomaly bank .* does not exist"):
        fit_on_bank_normals(model, bank_dir, tmp_path, steps=1)
    assert model.trainer.global_step == 0


def test_bank_naming_missing_files_is_refused(bank: tuple[Path, list[dict]], tmp_path: Path) -> None:
    import shutil

    bank_dir, records = bank
    broken = tmp_path / "broken"
    shutil.copytree(bank_dir, broken)
    moved = {**records[0], "source": str(tmp_path / "moved_away.png")}
    (broken / MANIFEST_NAME).write_text(json.dumps(moved) + "\n")
    with pytest.raises(BankError, match=r"id scratch_000\) names a source image that does not exist"):
        build_generator("anogen", bank_dir=broken)
    (broken / MANIFEST_NAME).write_text(json.dumps(records[1]) + "\n")
    (broken / "images" / records[1]["defect"] / f"{records[1]['id']}.png").unlink()
    with pytest.raises(BankError, match=r"names an image that does not exist"):
        load_bank(broken)


def unfinished_copy(bank: tuple[Path, list[dict]], tmp_path: Path, done: int) -> Path:
    """A copy of the bank as an interrupted ``anogen generate`` leaves it: ``done`` records of 96 planned."""
    import shutil

    bank_dir, records = bank
    copy = tmp_path / "unfinished"
    shutil.copytree(bank_dir, copy)
    (copy / MANIFEST_NAME).write_text("".join(json.dumps(record) + "\n" for record in records[:done]))
    settings = {"sources": 6, "defects": ["scratch", "dent"], "per_image": 8}  # 6 x 2 x 8 = 96 planned
    (copy / SUMMARY_NAME).write_text(json.dumps({"complete": False, "records": 0, "settings": settings}))
    return copy


def test_unfinished_bank_is_refused_for_training(bank: tuple[Path, list[dict]], tmp_path: Path) -> None:
    unfinished = unfinished_copy(bank, tmp_path, done=10)
    model = DraemWeak(generator="anogen", bank_dir=unfinished, reconstructive_width=8, discriminative_width=4)
    with pytest.raises(
        BankError,
        match=r"anomaly bank '.*unfinished' is unfinished \(bank\.json says complete: false\): 10 of 96 records "
        r"were generated\. .*`anogen generate` .*`--resume true`.*allow_incomplete_bank: true",
    ):
        fit_on_bank_normals(model, bank[0], tmp_path, steps=1)
    assert model.trainer.global_step == 0
    assert len(load_bank(unfinished)) == 10  # reading it for anything else (anogen show) still works


def test_allow_incomplete_bank_trains_on_the_finished_records_with_a_warning(
    bank: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    unfinished = unfinished_copy(bank, tmp_path, done=10)
    model = DraemWeak(
        generator="anogen",
        bank_dir=unfinished,
        allow_incomplete_bank=True,
        reconstructive_width=8,
        discriminative_width=4,
        pre_processor=DraemWeak.configure_pre_processor((32, 32)),
        visualizer=False,
    )
    with pytest.warns(UserWarning, match=r"unfinished \(10 of 96 records generated\); training on its 10 finished"):
        model.augmenter.num_workers = 0
    assert len(model.augmenter.records) == 10
    assert fit_on_bank_normals(model, bank[0], tmp_path, steps=1).trainer.global_step == 1


def test_empty_or_malformed_bank_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("")
    with pytest.raises(BankError, match="holds no anomalies"):
        load_bank(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json\n")
    with pytest.raises(BankError, match="line 1 is not a bank record"):
        load_bank(tmp_path)


def test_generator_options_are_checked(bank: tuple[Path, list[dict]]) -> None:
    bank_dir, _ = bank
    with pytest.raises(ValueError, match="generator 'anogen' needs bank_dir"):
        build_generator("anogen")
    with pytest.raises(ValueError, match="set generator: anogen"):
        build_generator("perlin", bank_dir=bank_dir)
    with pytest.raises(ValueError, match="generator must be one of"):
        build_generator("diffusion")
    assert isinstance(build_generator("perlin"), PerlinGenerator)
    spec = {"class_path": "AnoGenAnomalyGenerator", "init_args": {"bank_dir": str(bank_dir), "num_workers": 0}}
    assert isinstance(build_generator(spec), AnoGenAnomalyGenerator)


def test_anomalib_cli_trains_with_the_anogen_generator(bank: tuple[Path, list[dict]], tmp_path: Path) -> None:
    from anomalib_anogen.data.toy import make_toy_category

    make_toy_category(tmp_path / "data", size=64, n_train=6, n_test_good=2, n_test_per_defect=1)
    bank_dir, _ = bank
    arguments = {
        "--model": "DraemWeak",
        "--model.generator": "anogen",
        "--model.bank_dir": str(bank_dir),
        "--model.reconstructive_width": "8",
        "--model.discriminative_width": "4",
        "--data": "MVTecAD",
        "--data.root": str(tmp_path / "data"),
        "--data.category": "toy_bottle",
        "--data.num_workers": "0",
        "--data.train_batch_size": "4",
        "--trainer.max_steps": "3",
        "--trainer.accelerator": "cpu",
        "--default_root_dir": str(tmp_path / "results"),
    }
    result = run_cli(["anomalib", "train", *[part for pair in arguments.items() for part in pair]], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "pixel_AUPR" in result.stdout
