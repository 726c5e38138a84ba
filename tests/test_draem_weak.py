"""DraemWeak as an anomalib model: construction, bad input, and training on real bottle images."""

from pathlib import Path

import pytest
import torch
from anomalib.models.image.draem.torch_model import DraemModel

from anomalib_anogen.models import DraemWeak
from anomalib_anogen.models.image.draem_weak import DraemWeakModel

from .helpers.data import BOTTLE, DTD, needs_shared_bottle


def test_default_widths_are_draems() -> None:
    ours = DraemWeakModel()
    theirs = DraemModel()
    assert [(name, p.shape) for name, p in ours.named_parameters()] == [
        (name, p.shape) for name, p in theirs.named_parameters()
    ]


def test_small_widths_shrink_the_network_and_keep_inference_contract() -> None:
    model = DraemWeak(reconstructive_width=8, discriminative_width=4)
    assert sum(p.numel() for p in model.model.parameters()) < 500_000
    model.model.eval()
    with torch.no_grad():
        output = model.model(torch.rand(2, 3, 32, 32))
    assert output.anomaly_map.shape == (2, 32, 32)
    assert output.pred_score.shape == (2,)
    assert torch.all((output.anomaly_map >= 0) & (output.anomaly_map <= 1))


@pytest.mark.parametrize("p_cutoff", [-0.5, 1.0, 2])
def test_p_cutoff_outside_unit_interval_is_rejected(p_cutoff: float) -> None:
    with pytest.raises(ValueError, match="p_cutoff"):
        DraemWeak(p_cutoff=p_cutoff, reconstructive_width=8, discriminative_width=4)


def test_missing_dtd_dir_stops_training_before_the_first_step_and_never_downloads(
    tmp_path: Path, toy_root: Path
) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    missing = tmp_path / "no_such_dtd"
    model = DraemWeak(  # building reads no file: a trained model loads without its training data
        dtd_dir=missing,
        reconstructive_width=8,
        discriminative_width=4,
        pre_processor=DraemWeak.configure_pre_processor((32, 32)),
        visualizer=False,
    )
    datamodule = MVTecAD(root=toy_root, category="toy_bottle", train_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"dtd_dir: folder .*no_such_dtd.* does not exist.*never downloads"):
        engine.fit(model=model, datamodule=datamodule)
    assert engine.trainer.global_step == 0
    assert not missing.exists()


def test_dtd_dir_without_images_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no textures here")
    model = DraemWeak(dtd_dir=tmp_path, reconstructive_width=8, discriminative_width=4)
    with pytest.raises(ValueError, match="holds no images"):
        model.augmenter  # noqa: B018 - built on first use, as at fit start


def test_input_size_not_a_multiple_of_32_is_a_clear_error() -> None:
    model = DraemWeak(reconstructive_width=8, discriminative_width=4)
    with pytest.raises(ValueError, match="multiple of 32"):
        model.synthesize(torch.rand(1, 3, 48, 48))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"reconstructive_width": 0}, r"reconstructive_width must be a positive integer, got 0\. DRAEM: 128"),
        ({"discriminative_width": 2.5}, r"discriminative_width must be a positive integer, got 2\.5"),
        ({"learning_rate": 0}, r"learning_rate must be a positive number, got 0\. DRAEM uses 1e-4"),
        ({"anomaly_probability": 1.5}, r"anomaly_probability must be a number in \[0, 1\], got 1\.5"),
        ({"bank_probability": -0.1}, r"bank_probability must be a number in \[0, 1\], got -0\.1"),
        ({"beta": 1.5}, r"beta must be a number in \[0, 1\] or a range \[low, high\].*got 1\.5"),
        ({"beta": [0.9, 0.1]}, r"beta must be .*0 <= low <= high <= 1, got \[0\.9, 0\.1\]"),
        ({"weak_scope": "boxes"}, r"weak_scope must be 'box' \(.*\) or 'all' \(.*\), got 'boxes'"),
        ({"p_cutoff": "0.1"}, r"p_cutoff must be a number in \[0, 1\), got '0\.1'"),
        ({"generator": "diffusion"}, r"generator must be one of \['anogen', 'perlin'\]"),
    ],
)
def test_bad_arguments_name_themselves_the_value_and_the_range(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DraemWeak(**arguments)


def test_dtd_textures_are_used_as_anomaly_source(toy_root: Path) -> None:
    textures = toy_root / "toy_bottle" / "train" / "good"
    model = DraemWeak(dtd_dir=textures, reconstructive_width=8, discriminative_width=4)
    assert len(model.augmenter.anomaly_source_paths) == 8


def test_config_lists_become_a_blend_range() -> None:
    model = DraemWeak(beta=[0.2, 0.4], reconstructive_width=8, discriminative_width=4)
    assert model.augmenter.blend_factor == (0.2, 0.4)


def test_perlin_samples_are_exact_masks() -> None:
    model = DraemWeak(anomaly_probability=1.0, reconstructive_width=8, discriminative_width=4)
    images = torch.rand(4, 3, 32, 32)
    synthetic = model.synthesize(images)
    assert synthetic.image.shape == images.shape
    assert synthetic.mask.shape == (4, 1, 32, 32)
    assert not synthetic.is_box.any()
    assert synthetic.target is images
    assert synthetic.mask.sum() > 0


@needs_shared_bottle()
def test_trains_a_few_steps_on_real_bottle_images(tmp_path: Path) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(0)
    model = DraemWeak(
        dtd_dir=DTD if DTD.is_dir() else None,
        anomaly_probability=1.0,
        reconstructive_width=8,
        discriminative_width=4,
        learning_rate=1e-3,
        pre_processor=DraemWeak.configure_pre_processor((64, 64)),
        visualizer=False,
    )
    datamodule = MVTecAD(root=BOTTLE.parent, category="bottle", train_batch_size=4, eval_batch_size=8, num_workers=0)
    before = {name: p.detach().clone() for name, p in model.model.named_parameters()}
    engine = Engine(
        default_root_dir=tmp_path,
        max_steps=6,
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    assert engine.trainer.global_step == 6
    assert torch.isfinite(engine.trainer.callback_metrics["train_loss_step"])
    changed = [name for name, p in model.model.named_parameters() if not torch.equal(before[name], p)]
    assert len(changed) == len(before)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    for name in ("image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO"):
        assert 0.0 <= metrics[name] <= 1.0, name


def test_checkpoint_widths_replace_the_command_lines_before_the_weights_load() -> None:
    trained = DraemWeak(reconstructive_width=8, discriminative_width=4)
    checkpoint = {"hyper_parameters": dict(trained.hparams), "state_dict": trained.state_dict()}
    model = DraemWeak(reconstructive_width=16, discriminative_width=8)  # what `--model DraemWeak ...` built
    model.on_load_checkpoint(checkpoint)  # Lightning calls it before it loads the state dict
    model.load_state_dict(checkpoint["state_dict"])  # strict: no size mismatch
    assert (model.hparams.reconstructive_width, model.hparams.discriminative_width) == (8, 4)
    for name, value in trained.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], value), name
