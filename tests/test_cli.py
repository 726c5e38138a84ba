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
    assert "p_cutoff must be a number in [0, 1)" in result.stdout + result.stderr
