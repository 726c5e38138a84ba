"""anomalib's stock CLI resolves the plugin's models, in fresh processes as a user runs it."""

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, run_cli

TINY = ["--model.reconstructive_width", "8", "--model.discriminative_width", "4"]


def test_plugin_hook_imports_neither_torch_nor_anomalib() -> None:
    code = (
        "import sys; "
        "assert any(type(f).__name__ == 'AnomalibCliFinder' for f in sys.meta_path), sys.meta_path; "
        "heavy = sorted(m for m in ('torch', 'anomalib', 'anomalib_anogen.models') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_help_lists_draem_weak_arguments(tmp_path: Path) -> None:
    result = run_cli(["anomalib", "train", "--model.help", "DraemWeak"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for argument in ("--model.p_cutoff", "--model.weak_scope", "--model.dtd_dir", "--model.reconstructive_width"):
        assert argument in result.stdout


@pytest.mark.parametrize("model", ["DraemWeak", "anomalib_anogen.models.DraemWeak"])
def test_short_name_and_class_path_resolve(tmp_path: Path, model: str) -> None:
    result = run_cli(["anomalib", "fit", "--model", model, "--model.p_cutoff", "0.2", "--print_config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class_path: anomalib_anogen.models.DraemWeak" in result.stdout
    assert "p_cutoff: 0.2" in result.stdout


def test_yaml_config_with_short_class_path_trains_tests_and_exports(tmp_path: Path, toy_root: Path) -> None:
    common = ["--data.root", str(toy_root), "--data.category", "toy_bottle", "--data.num_workers", "0"]
    train = run_cli(
        [
            "anomalib",
            "train",
            "--config",
            str(REPO / "configs" / "draem_weak.yaml"),
            "--model.dtd_dir",
            "null",
            *TINY,
            *common,
            "--data.train_batch_size",
            "4",
            "--trainer.max_epochs",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--default_root_dir",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-4000:]
    checkpoints = sorted((tmp_path / "results").rglob("*.ckpt"))
    assert checkpoints, train.stdout[-2000:]
    assert "pixel_AUPR" in train.stdout  # anomalib's test report, with this plugin's metrics

    export = run_cli(
        [
            "anomalib",
            "export",
            "--model",
            "DraemWeak",
            *TINY,
            "--ckpt_path",
            str(checkpoints[-1]),
            "--export_type",
            "openvino",
            "--default_root_dir",
            str(tmp_path / "exported"),
        ],
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stdout[-2000:] + export.stderr[-4000:]
    assert list((tmp_path / "exported").rglob("model.xml")), export.stdout[-2000:]
    assert "Traceback" not in export.stdout + export.stderr  # the plugin exports at ONNX opset 18, no down-convert

    # INT8 as docs/deploy.md says: calibrated on a split of the normal *training* images, not on the test set.
    int8 = run_cli(
        [
            "anomalib",
            "export",
            "--model",
            "DraemWeak",
            *TINY,
            "--ckpt_path",
            str(checkpoints[-1]),
            "--export_type",
            "openvino",
            "--compression_type",
            "INT8_PTQ",
            "--data",
            "MVTecAD",
            *common,
            "--data.val_split_mode",
            "from_train",
            "--data.val_split_ratio",
            "0.5",
            "--default_root_dir",
            str(tmp_path / "int8"),
        ],
        cwd=tmp_path,
    )
    assert int8.returncode == 0, int8.stdout[-2000:] + int8.stderr[-4000:]
    assert list((tmp_path / "int8").rglob("model.xml")), int8.stdout[-2000:]
    # anomalib names the calibration set's size: half of the 8 toy training images (the test split has 9).
    assert "found only 4 images" in int8.stdout + int8.stderr


def test_bad_p_cutoff_fails_with_the_argument_named(tmp_path: Path) -> None:
    result = run_cli(
        ["anomalib", "fit", "--model", "DraemWeak", "--model.p_cutoff", "1.5", "--data", "MVTecAD"], cwd=tmp_path
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output and len(output.splitlines()) < 15, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: p_cutoff must be a number in [0, 1), got 1.5. It is the anomaly probability below which in-box "
        "pixels of a box-masked sample get no segmentation loss; the paper uses 0.1."
    ], output


def test_cross_argument_error_is_one_line_and_other_errors_keep_the_traceback(tmp_path: Path) -> None:
    bad = run_cli(
        ["anomalib", "fit", "--model", "Destseg", "--model.steps", "10", "--model.de_st_steps", "20"], cwd=tmp_path
    )
    output = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert "Traceback" not in output and len(output.splitlines()) < 15, output
    assert "error: de_st_steps (20) must be smaller than steps (10)" in output
    # Not the plugin's input error: anomalib's traceback as before (here: no training data at all).
    other = run_cli(["anomalib", "fit", "--model", "DraemWeak", *TINY], cwd=tmp_path)
    assert other.returncode != 0
    assert "Traceback" in other.stdout + other.stderr


@pytest.mark.slow
def test_checkpoint_stands_on_its_own_without_bank_dtd_or_working_directory(
    tmp_path: Path, toy_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train on a bank and a DTD folder given by relative paths, delete both, then test, predict, export, load."""
    import shutil

    from anomalib_anogen.data.bank import BankError
    from anomalib_anogen.models import DraemWeak

    from .bank_factory import make_bank

    training = tmp_path / "training"
    normals = sorted((toy_root / "toy_bottle" / "train" / "good").glob("*.png"))
    make_bank(training / "bank", normals[:3])
    (training / "dtd" / "textures").mkdir(parents=True)
    shutil.copy(normals[0], training / "dtd" / "textures" / "texture.png")
    data = ["--data.root", str(toy_root), "--data.category", "toy_bottle", "--data.num_workers", "0"]
    train = run_cli(
        [
            "anomalib",
            "train",
            "--model",
            "DraemWeak",
            "--model.generator",
            "anogen",
            "--model.bank_dir",
            "bank",
            "--model.dtd_dir",
            "dtd",
            *TINY,
            "--data",
            "MVTecAD",
            *data,
            "--data.train_batch_size",
            "4",
            "--trainer.max_steps",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--default_root_dir",
            "results",
        ],
        cwd=training,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-4000:]
    (checkpoint,) = (training / "results").rglob("model.ckpt")
    (config,) = (training / "results").rglob("config.yaml")  # the training's own config, with bank_dir: bank
    shutil.rmtree(training / "bank")
    shutil.rmtree(training / "dtd")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # The training config names the deleted bank and DTD folder: testing never reads them.
    test = run_cli(
        ["anomalib", "test", "--config", str(config), "--ckpt_path", str(checkpoint), *data, "--default_root_dir", "t"],
        cwd=elsewhere,
    )
    assert test.returncode == 0, test.stdout[-2000:] + test.stderr[-4000:]
    assert "pixel_AUPR" in test.stdout

    # No width arguments: the network is rebuilt with the checkpoint's widths instead of ~300 size mismatches.
    images = toy_root / "toy_bottle" / "test"
    from_checkpoint = ["--model", "DraemWeak", "--ckpt_path", str(checkpoint)]
    predict = run_cli(
        ["anomalib", "predict", *from_checkpoint, "--data", str(images), "--default_root_dir", "p"], cwd=elsewhere
    )
    output = predict.stdout + predict.stderr
    assert predict.returncode == 0, output[-4000:]
    assert "size mismatch" not in output
    assert "reconstructive_width=8, discriminative_width=4" in output  # says which widths it took
    assert len(list((elsewhere / "p").rglob("*.png"))) == len(list(images.rglob("*.png")))

    export = run_cli(
        ["anomalib", "export", *from_checkpoint, "--export_type", "openvino", "--default_root_dir", "e"], cwd=elsewhere
    )
    assert export.returncode == 0, export.stdout[-2000:] + export.stderr[-4000:]
    assert list((elsewhere / "e").rglob("model.xml"))

    monkeypatch.chdir(elsewhere)
    model = DraemWeak.load_from_checkpoint(checkpoint)
    assert model.hparams.bank_dir == "bank" and model.hparams.reconstructive_width == 8
    with pytest.raises(BankError, match="bank_dir: anomaly bank 'bank' does not exist"):
        model.augmenter  # noqa: B018 - only training needs the bank, and then says so
