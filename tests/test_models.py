"""Every model of the plugin through anomalib's own CLI, as a user runs it (anomalib's ``test_models.py`` style).

For each of ``DraemWeak``, ``Destseg`` and ``DestsegWeak``, with its shipped config: ``--model.help`` lists its
arguments, the short name and the class path resolve, and one small training (on a bank and a DTD folder given
by relative paths, for the models that take a bank) gives a checkpoint that stands on its own: after the bank and
the DTD folder are deleted, ``anomalib test``, ``predict`` and ``export`` (OpenVINO FP32 and INT8) run from it in
another folder. Toy data; the DeSTSeg teacher has random weights (no ImageNet weights exist here).
"""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers.bank_factory import make_bank
from .helpers.cli import run_cli
from .helpers.data import REPO

DESTSEG_SMALL = (  # random teacher, 2 steps (1 student), image score from the top 10
    *("--model.pretrained_weights", "random", "--model.steps", "2"),
    *("--model.de_st_steps", "1", "--model.T", "10"),
)


@dataclass(frozen=True)
class ModelCase:
    name: str
    config: str
    bank: bool  # trains on an anomaly bank (configs/anogen_bank.yaml as a second --config)
    small: tuple[str, ...]  # arguments that make it small and fast
    arguments: tuple[str, ...]  # some of its own arguments, listed by --model.help

    def __str__(self) -> str:
        return self.name


CASES = (
    ModelCase(
        "DraemWeak",
        "draem_weak.yaml",
        True,
        ("--model.reconstructive_width", "8", "--model.discriminative_width", "4"),
        ("--model.p_cutoff", "--model.weak_scope", "--model.dtd_dir", "--model.reconstructive_width"),
    ),
    ModelCase(
        "Destseg",
        "destseg.yaml",
        False,
        DESTSEG_SMALL,
        ("--model.pretrained_weights", "--model.de_st_steps", "--model.T", "--model.dtd_dir"),
    ),
    ModelCase(
        "DestsegWeak",
        "destseg_weak.yaml",
        True,
        DESTSEG_SMALL,
        ("--model.pretrained_weights", "--model.p_cutoff", "--model.de_st_steps", "--model.T"),
    ),
)


def ok(result: subprocess.CompletedProcess) -> str:
    """The command's output, once it is known to have succeeded without a traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, " ".join(result.args) + "\n" + output[-5000:]
    assert "Traceback" not in output, output[-5000:]
    return output


@pytest.mark.parametrize("case", CASES, ids=str)
def test_model_help_lists_its_arguments(case: ModelCase, tmp_path: Path) -> None:
    output = ok(run_cli(["anomalib", "train", "--model.help", case.name], cwd=tmp_path))
    for argument in case.arguments:
        assert argument in output


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("spelling", ["short", "class path"])
def test_short_name_and_class_path_resolve(case: ModelCase, spelling: str, tmp_path: Path) -> None:
    model = case.name if spelling == "short" else f"anomalib_anogen.models.{case.name}"
    result = run_cli(["anomalib", "fit", "--model", model, "--model.dtd_dir", "dtd", "--print_config"], cwd=tmp_path)
    ok(result)
    assert "class_path: anomalib_anogen.models." in result.stdout
    assert f".{case.name}\n" in result.stdout
    assert "dtd_dir: dtd" in result.stdout


@pytest.fixture(scope="module", params=CASES, ids=str)
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> tuple:
    """``anomalib train --config configs/<model>.yaml`` on the toy category; then the bank and DTD are deleted."""
    case: ModelCase = request.param
    training = tmp_path_factory.mktemp(f"train_{case.name}")
    normals = sorted((toy_root / "toy_bottle" / "train" / "good").glob("*.png"))
    (training / "dtd" / "textures").mkdir(parents=True)
    shutil.copy(normals[0], training / "dtd" / "textures" / "texture.png")
    configs = ["--config", str(REPO / "configs" / case.config)]
    if case.bank:
        make_bank(training / "bank", normals[:3])
        configs += ["--config", str(REPO / "configs" / "anogen_bank.yaml"), "--model.bank_dir", "bank"]
    data = ["--data.root", str(toy_root), "--data.category", "toy_bottle", "--data.num_workers", "0"]
    data += ["--data.train_batch_size", "4", "--data.eval_batch_size", "4"]
    train = [*configs, "--model.dtd_dir", "dtd", *case.small, *data, "--trainer.max_steps", "2"]
    train += ["--trainer.accelerator", "cpu", "--default_root_dir", "results"]
    output = ok(run_cli(["anomalib", "train", *train], training))
    assert "pixel_AUPR" in output  # anomalib's test report, with this plugin's metrics
    (checkpoint,) = (training / "results").rglob("model.ckpt")
    (config,) = (training / "results").rglob("config.yaml")  # the training's own, naming bank and DTD
    shutil.rmtree(training / "dtd")
    if case.bank:
        shutil.rmtree(training / "bank")
    elsewhere = tmp_path_factory.mktemp(f"elsewhere_{case.name}")
    return case, checkpoint, config, data, elsewhere


@pytest.mark.slow  # trains each model once (the `trained` fixture)
def test_test_runs_from_the_training_config_without_bank_or_dtd(trained: tuple, toy_root: Path) -> None:
    _, checkpoint, config, data, elsewhere = trained
    args = ["--config", str(config), "--ckpt_path", str(checkpoint), *data, "--default_root_dir", "t"]
    assert "pixel_AUPR" in ok(run_cli(["anomalib", "test", *args], cwd=elsewhere))


@pytest.mark.slow  # trains each model once (the `trained` fixture)
def test_predict_from_the_checkpoint_alone(trained: tuple, toy_root: Path) -> None:
    """No model arguments: what the network needs (DRAEM's widths, DeSTSeg's teacher) comes from the checkpoint."""
    case, checkpoint, _, _, elsewhere = trained
    images = toy_root / "toy_bottle" / "test"
    args = ["--model", case.name, "--ckpt_path", str(checkpoint), "--data", str(images), "--default_root_dir", "p"]
    output = ok(run_cli(["anomalib", "predict", *args], cwd=elsewhere))
    assert "size mismatch" not in output
    if case.name == "DraemWeak":
        assert "reconstructive_width=8, discriminative_width=4" in output  # says which widths it took
    assert len(list((elsewhere / "p").rglob("*.png"))) == len(list(images.rglob("*.png")))


@pytest.mark.slow  # trains each model once (the `trained` fixture)
def test_openvino_export_from_the_checkpoint_alone(trained: tuple) -> None:
    case, checkpoint, _, _, elsewhere = trained
    export = ["anomalib", "export", "--model", case.name, "--ckpt_path", str(checkpoint), "--export_type", "openvino"]
    ok(run_cli([*export, "--default_root_dir", "fp32"], cwd=elsewhere))  # no Traceback: ONNX opset 18, no down-convert
    assert list((elsewhere / "fp32").rglob("model.xml"))


@pytest.mark.slow
@pytest.mark.parametrize("trained", [CASES[0]], indirect=True, ids=str)
def test_int8_export_is_calibrated_on_training_images(trained: tuple) -> None:
    """INT8 as docs/deploy.md says: calibrated on a split of the normal *training* images, not on the test set.

    The split is anomalib's CLI (the same for every model), shown on one; every model's INT8 export is compiled and
    run on this CPU in tests/test_deploy.py.
    """
    case, checkpoint, _, data, elsewhere = trained
    export = ["anomalib", "export", "--model", case.name, "--ckpt_path", str(checkpoint), "--export_type", "openvino"]
    split = ["--data.val_split_mode", "from_train", "--data.val_split_ratio", "0.5"]
    int8 = [*export, "--compression_type", "INT8_PTQ", "--data", "MVTecAD", *data, *split, "--default_root_dir", "int8"]
    output = ok(run_cli(int8, cwd=elsewhere))
    assert list((elsewhere / "int8").rglob("model.xml"))
    # anomalib names the calibration set's size: half of the 8 toy training images (the test split has 9).
    assert "found only 4 images" in output


@pytest.mark.slow  # trains each model once (the `trained` fixture)
def test_the_checkpoint_loads_in_python_and_only_training_needs_the_bank(
    trained: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anomalib_anogen.models
    from anomalib_anogen.data.bank import BankError

    case, checkpoint, _, _, elsewhere = trained
    monkeypatch.chdir(elsewhere)
    model = getattr(anomalib_anogen.models, case.name).load_from_checkpoint(checkpoint)
    assert model.hparams.dtd_dir == "dtd"
    if case.bank:
        assert model.hparams.bank_dir == "bank"
        with pytest.raises(BankError, match="bank_dir: anomaly bank 'bank' does not exist"):
            model.augmenter  # noqa: B018 - only training needs the bank, and then says so
