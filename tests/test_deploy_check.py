"""``anogen deploy-check``: every exported variant at every precision this CPU runs, the choice, and load_inferencer.

The model is a tiny DraemWeak (widths 8/4, 64 px, two steps) that the module trains and exports itself (FP32 and
INT8 IRs) on the toy category. Nothing here depends on the CPU's default precision: on a CPU without bf16 the
command must say so and leave bf16 out; on one with bf16 it must measure it, with and without the output
convolutions kept in f32.
"""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import seed_everything

from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.deploy import CpuInfo, cpu_info, load_inferencer
from anomalib_anogen.deploy.check import (
    DeployCheckOptions,
    Variant,
    deploy_check,
    find_exports,
    find_samples,
    narrow_layers,
    runtime_precisions,
    with_hints,
)
from anomalib_anogen.deploy.choice import choice_path, read_choice
from anomalib_anogen.models import DraemWeak

from .helpers.cli import error_line, run_cli
from .helpers.data import int8_calibration_data

SIZE = (64, 64)
FAST = ("--runs", "2", "--warmup", "0", "--throughput_images", "2", "--progress", "false")


TRAINED: dict[str, DraemWeak] = {}  # the exported model, for the raw-output comparison


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Path:
    """A folder with a tiny DraemWeak's FP32 IR (``fp32/``) and INT8 IR (``int8/``), as anomalib exports them."""
    from anomalib.data import MVTecAD
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine

    seed_everything(0)
    root = tmp_path_factory.mktemp("deploy_check")
    model = DraemWeak(
        reconstructive_width=8,
        discriminative_width=4,
        pre_processor=DraemWeak.configure_pre_processor(SIZE),
        visualizer=False,
    )
    data = MVTecAD(root=toy_root, category="toy_bottle", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=root / "train", accelerator="cpu", logger=False, max_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a two-step model's degenerate normalisation (test_deploy checks it)
        engine.fit(model=model, datamodule=data)
        calibration = int8_calibration_data(toy_root, SIZE)
        for kind, compression in (("fp32", None), ("int8", CompressionType.INT8_PTQ)):
            engine.export(
                model=model,
                export_type=ExportType.OPENVINO,
                export_root=root / "model" / kind,
                input_size=SIZE,
                compression_type=compression,
                datamodule=calibration if compression else None,
            )
    TRAINED["model"] = model.eval()
    return root / "model"


@pytest.fixture
def model_copy(exported: Path, tmp_path: Path) -> Path:
    """A fresh copy of the exports, so a test may write its choice beside them."""
    return Path(shutil.copytree(exported, tmp_path / "model"))


def images_and_masks(toy_root: Path) -> tuple[Path, Path]:
    return toy_root / "toy_bottle" / "test", toy_root / "toy_bottle" / "ground_truth"


def written(model: Path, images: Path) -> DeployCheckOptions:
    """Quick options on two images that write the choice."""
    return DeployCheckOptions(
        str(model), str(images), runs=1, warmup=0, max_images=2, throughput_images=0, progress=False
    )


def fp32_xml(folder: Path) -> Path:
    return folder / "fp32" / "weights" / "openvino" / "model.xml"


def test_the_exports_are_found_and_told_apart(exported: Path) -> None:
    reference, others, notes = find_exports(exported)
    assert reference.path == fp32_xml(exported) and reference.kind == "FP32"
    assert [(item.kind, item.label) for item in others] == [("INT8", "INT8 IR")]
    assert not notes


def test_masks_are_matched_by_relative_path_and_images_without_one_are_normal(toy_root: Path) -> None:
    images, masks = images_and_masks(toy_root)
    samples, notes = find_samples(images, masks, None)
    assert len(samples) == 9 and not notes  # 3 good + 3 defects x 2
    for sample in samples:
        if sample.image.parent.name == "good":
            assert sample.mask is None
        else:
            assert sample.mask == masks / sample.image.parent.name / f"{sample.image.stem}_mask.png"


def test_the_raw_outputs_are_the_networks_before_anomalibs_normalisation(exported: Path, toy_root: Path) -> None:
    """The raw map and score found in the deployable IR are torch's raw outputs (normalisation switched off)."""
    import openvino as ov
    import torch

    from anomalib_anogen.deploy import raw_outputs
    from anomalib_anogen.deploy.check import load_image, raw_network

    core = ov.Core()
    deployed = core.read_model(fp32_xml(exported))
    network = raw_network(deployed)
    assert [output.get_names() for output in network.outputs] == [{"raw_pred_score"}, {"raw_anomaly_map"}]
    assert len(network.get_ops()) < len(deployed.get_ops())  # without anomalib's post-processing
    image = load_image(sorted((toy_root / "toy_bottle" / "test" / "blob").glob("*.png"))[0], SIZE)
    outputs = core.compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(image)
    with torch.no_grad(), raw_outputs(TRAINED["model"]) as model:
        reference = model(torch.from_numpy(image))
    raw_map = np.asarray(outputs["raw_anomaly_map"]).reshape(SIZE)
    assert np.abs(raw_map - reference.anomaly_map.numpy().reshape(SIZE)).max() < 1e-5
    assert abs(float(np.asarray(outputs["raw_pred_score"]).reshape(-1)[0]) - float(reference.pred_score)) < 1e-5
    normalised = core.compile_model(deployed, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(image)["anomaly_map"]
    assert np.abs(raw_map - np.asarray(normalised).reshape(SIZE)).max() > 1e-3  # the deployed map is normalised


@pytest.mark.slow
def test_deploy_check_as_a_function_measures_every_variant_against_f32(exported: Path, toy_root: Path) -> None:
    images, masks = images_and_masks(toy_root)
    before = sorted(path for path in exported.rglob("*"))
    report = deploy_check(DeployCheckOptions(str(exported), str(images), str(masks), runs=2, warmup=0, **QUIET))
    assert sorted(path for path in exported.rglob("*")) == before  # --write false: nothing written
    assert report.choice_file is None and report.images == 9 and report.anomalous == 6
    names = [result.name for result in report.results]
    reference = report.results[0]
    assert names[0] == "FP32 IR at f32" and "INT8 IR at f32" in names
    assert reference.latency_ratio == 1.0 and reference.decisions_agree == 1.0
    assert reference.max_raw_map_difference == 0.0 and reference.pixel_ap_difference == 0.0
    for result in report.results:
        assert result.latency_ms > 0 and result.images_per_s and result.images_per_s > 0
        assert 0.0 <= result.decisions_agree <= 1.0 and result.pixel_ap is not None and result.image_auroc is not None
    if cpu_info().native_bf16:
        bf16 = {result.name: result for result in report.results if result.precision == "bf16"}
        assert set(bf16) >= {"FP32 IR at bf16", "FP32 IR at bf16, narrow layers f32", "INT8 IR at bf16"}
        assert bf16["FP32 IR at bf16"].ran_in == "bf16"
        assert bf16["FP32 IR at bf16"].max_raw_map_difference > 0
    else:
        assert not [result for result in report.results if result.precision == "bf16"]
        assert any(note.startswith("bf16: not supported by this CPU") for note in report.notes)
    assert report.chosen in names
    text = str(report)
    assert "chosen: " in text and "choice not written" in text


QUIET = {"throughput_images": 2, "write": False, "progress": False}


@pytest.mark.slow
def test_deploy_check_through_the_cli_writes_the_choice_that_load_inferencer_runs(
    model_copy: Path,
    toy_root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    images, masks = images_and_masks(toy_root)
    result = run_cli(
        ["anogen", "deploy-check", str(model_copy), "--images", str(images), "--masks", str(masks), *FAST], toy_root
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FP32 IR at f32" in result.stdout and "INT8 IR at f32" in result.stdout
    if not cpu_info().native_bf16:
        assert "bf16: not supported by this CPU" in result.stdout
    file = choice_path(fp32_xml(model_copy))
    assert f"wrote {file}" in result.stdout
    data = json.loads(file.read_text())
    assert data["cpu"]["name"] == cpu_info().name and data["cpu"]["flags"] == list(cpu_info().flags)
    assert data["variant"] in result.stdout and data["precision"] in ("f32", "bf16", "f16")
    assert {"latency_ms", "decisions_agree", "max_raw_map_difference"} <= set(data["measured"])
    choice = read_choice(fp32_xml(model_copy))
    assert choice is not None and choice.ir.is_file()

    with caplog.at_level("INFO", logger="anomalib_anogen.deploy"):
        inferencer = load_inferencer(fp32_xml(model_copy))
    assert f"deploy-check's choice {file}: {data['variant']}" in caplog.text
    expected = data["precision"] if data["precision"] == "f32" or cpu_info().native_bf16 else "f32"
    assert inferencer.model.get_property("INFERENCE_PRECISION_HINT").get_type_name() == expected
    caplog.clear()
    with caplog.at_level("INFO", logger="anomalib_anogen.deploy"):
        explicit = load_inferencer(fp32_xml(model_copy), precision="f32")  # an explicit precision wins
    assert "deploy-check" not in caplog.text
    assert explicit.model.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


@pytest.mark.slow
def test_a_chosen_int8_ir_is_what_load_inferencer_runs_and_a_moved_model_warns(
    model_copy: Path,
    toy_root: Path,
) -> None:
    images, _ = images_and_masks(toy_root)
    options = DeployCheckOptions(
        str(model_copy), str(images), runs=1, warmup=0, max_images=2, **QUIET | {"write": True}
    )
    report = deploy_check(options)
    file = choice_path(fp32_xml(model_copy))
    data = json.loads(file.read_text())
    int8 = next(result for result in report.results if result.name == "INT8 IR at f32")
    data |= {"variant": int8.name, "ir": "../../../int8/weights/openvino/model.xml", "precision": "f32", "keep_f32": []}
    data["files_sha256"] = {}
    file.write_text(json.dumps(data))
    inferencer = load_inferencer(fp32_xml(model_copy))
    precisions = {
        str(node.get_rt_info()["runtimePrecision"].value) for node in inferencer.model.get_runtime_model().get_ops()
    }
    assert precisions & {"u8", "i8"}, precisions  # the INT8 IR runs, not the FP32 one

    data["cpu"] = data["cpu"] | {"name": "Another CPU", "flags": ["avx2"]}
    file.write_text(json.dumps(data))
    with pytest.warns(
        UserWarning, match=r"was made on another CPU \(Another CPU; .*Run `anogen deploy-check` on this PC"
    ):
        load_inferencer(fp32_xml(model_copy))


@pytest.mark.slow
def test_a_choice_for_other_model_files_is_ignored_with_a_warning(model_copy: Path, toy_root: Path) -> None:
    images, _ = images_and_masks(toy_root)
    deploy_check(
        DeployCheckOptions(str(model_copy), str(images), runs=1, warmup=0, max_images=2, **QUIET | {"write": True})
    )
    xml = fp32_xml(model_copy)
    xml.write_text(xml.read_text() + "\n")  # re-exported meanwhile
    with pytest.warns(UserWarning, match=r"model files changed or went missing .* choice ignored, running f32"):
        inferencer = load_inferencer(xml)
    assert inferencer.model.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


def test_without_a_choice_load_inferencer_runs_the_given_ir_at_f32(
    model_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not choice_path(fp32_xml(model_copy)).exists()
    with caplog.at_level("INFO", logger="anomalib_anogen.deploy"):
        inferencer = load_inferencer(fp32_xml(model_copy))
    assert inferencer.model.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert "deploy-check" not in caplog.text


@pytest.mark.skipif(not cpu_info().native_bf16, reason="needs a CPU that runs bf16 (AVX-512 BF16 or AMX)")
def test_the_per_node_hint_keeps_the_narrow_layers_in_f32(exported: Path) -> None:
    import openvino as ov

    from anomalib_anogen.deploy import openvino_config

    network = ov.Core().read_model(fp32_xml(exported))
    narrow = narrow_layers(network)
    assert narrow
    plain = ov.Core().compile_model(network, "CPU", openvino_config("bf16"))
    hinted = ov.Core().compile_model(with_hints(network, narrow), "CPU", openvino_config("bf16"))
    assert set(runtime_precisions(plain, narrow).values()) == {"bf16"}
    assert set(runtime_precisions(hinted, narrow).values()) == {"f32"}


def test_a_cpu_without_bf16_is_said_so_and_bf16_left_out(
    exported: Path, toy_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an AVX2-only line PC gets, on any CPU: the command names the missing precisions and measures the rest."""
    info = cpu_info()
    avx2 = CpuInfo(info.name, "f32", tuple(c for c in info.capabilities if c not in ("BF16", "FP16")), ("avx2",))
    monkeypatch.setattr("anomalib_anogen.deploy.check.cpu_info", lambda: avx2)
    images, _ = images_and_masks(toy_root)
    options = written(exported, images)
    options.write = False
    report = deploy_check(options)
    assert [(result.name, result.ran_in) for result in report.results] == [
        ("FP32 IR at f32", "f32"),
        ("INT8 IR at f32", "f32"),
    ]
    assert "bf16: not supported by this CPU (no AVX-512 BF16 or AMX; flags: avx2); skipped" in report.notes
    assert "note: bf16: not supported by this CPU" in str(report)


def test_bad_input_is_one_error_line_and_writes_nothing(
    exported: Path, toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images, _ = images_and_masks(toy_root)
    model = str(exported)
    cases = {
        "MODEL does not exist": [str(tmp_path / "missing"), "--images", str(images)],
        "--images is required": [model],
        "--images is not a folder": [model, "--images", str(tmp_path / "nope")],
        "--tolerance must be a number in [0, 1) (share of decisions allowed to differ; got 1.5)": [
            *(model, "--images", str(images), "--tolerance", "1.5")
        ],
        "--runs must be an integer in [1, 10000]": [model, "--images", str(images), "--runs", "0"],
        "no deployable OpenVINO export found": [str(tmp_path), "--images", str(images)],
        "--images holds 0 image(s)": [model, "--images", str(tmp_path)],
        "--masks matched none of the 9 images": [model, "--images", str(images), "--masks", str(tmp_path)],
    }
    before = sorted(exported.rglob("*"))
    for expected, args in cases.items():
        line = error_line(["deploy-check", *args], capsys, command="deploy-check")
        assert expected in line, line
    assert sorted(exported.rglob("*")) == before


def test_options_refuse_bad_values_before_any_work(exported: Path, toy_root: Path) -> None:
    images, _ = images_and_masks(toy_root)
    with pytest.raises(AnogenInputError, match=r"--min_speedup must be a number in \[1, 100\] \(got 0.5\)"):
        DeployCheckOptions(str(exported), str(images), min_speedup=0.5)
    with pytest.raises(AnogenInputError, match=r"--max_images must be an integer >= 2"):
        DeployCheckOptions(str(exported), str(images), max_images=1)


def test_variant_names_read_as_the_report_prints_them(exported: Path) -> None:
    reference, others, _ = find_exports(exported)
    assert Variant(reference, "bf16", ("conv",)).name == "FP32 IR at bf16, narrow layers f32"
    assert Variant(others[0], "f32").name == "INT8 IR at f32"
