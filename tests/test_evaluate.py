"""``anogen evaluate``: a U-Net trained on a bank alone, tested on real anomalies; tiny banks made here."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_anogen.cli import main as cli_main
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.evaluate.command import evaluate
from anomalib_anogen.evaluate.options import EvaluateOptions

from .helpers.bank_factory import make_bank
from .helpers.cli import error_line
from .helpers.data import CATEGORY

# Seconds, not minutes: 32 px, a U-Net of width 4, a few steps, the final network only.
TINY = {"image_size": 32, "steps": 3, "batch_size": 4, "width": 4, "average_last": 1, "progress": False}
TINY_ARGS = [f"--{name}={str(value).lower()}" for name, value in TINY.items()]
METRICS = ("pixel_AP", "pixel_AUROC", "pixel_PRO", "image_AUROC")


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Path:
    """A bank of bright boxes painted into the toy category's normal images (2 defect types x 8 sources)."""
    folder = tmp_path_factory.mktemp("evaluate") / "bank"
    make_bank(folder, sorted((toy_root / CATEGORY / "train" / "good").glob("*.png")))
    return folder


@pytest.fixture
def bank_copy(bank: Path, tmp_path: Path) -> Path:
    """A copy of the toy bank that a test may change."""
    return Path(shutil.copytree(bank, tmp_path / "bank"))


def test_evaluate_writes_every_metric_per_seed_and_is_deterministic(bank: Path, toy_root: Path, tmp_path: Path) -> None:
    test = str(toy_root / CATEGORY)
    first = evaluate(EvaluateOptions(str(bank), test=test, seeds=[0, 1], output=str(tmp_path / "a.json"), **TINY))
    again = evaluate(EvaluateOptions(str(bank), test=test, seeds=[0], output=str(tmp_path / "b.json"), **TINY))
    assert first.seeds[0].metrics == again.seeds[0].metrics  # the same seed: the same numbers
    assert first.seeds[0].metrics != first.seeds[1].metrics
    report = json.loads((tmp_path / "a.json").read_text())
    assert [seed["seed"] for seed in report["seeds"]] == [0, 1]
    for name in METRICS:
        values = [seed[name] for seed in report["seeds"]]
        assert all(0.0 <= value <= 1.0 for value in values), (name, values)
        assert report["mean"][name] == pytest.approx(sum(values) / 2)
        assert report["spread"][name] == pytest.approx(max(values) - min(values))
    assert report["records"] == 16 and report["rejected"] == 0 and report["normal_images"] == 8
    assert report["test_images"] == {"anomalous": 6, "normal": 3}
    assert report["settings"]["steps"] == 3 and report["settings"]["normal_per_batch"] == 1


def test_evaluate_runs_from_the_cli_with_an_mvtec_root_and_category(
    bank: Path, toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "out" / "result.json"
    args = ["evaluate", str(bank), "--test", str(toy_root), "--category", CATEGORY, "--seeds", "3"]
    assert cli_main([*args, *TINY_ARGS, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "pixel_AP" in printed and "mean" in printed
    assert json.loads(output.read_text())["seeds"][0]["seed"] == 3


def test_records_marked_rejected_are_left_out(bank_copy: Path, toy_root: Path, tmp_path: Path) -> None:
    manifest = bank_copy / "manifest.jsonl"
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    for entry in entries[:5]:
        entry["rejected"], entry["rejected_for"] = True, ["visibility"]
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    result = evaluate(
        EvaluateOptions(str(bank_copy), test=str(toy_root / CATEGORY), output=str(tmp_path / "r.json"), **TINY)
    )
    assert (result.report["records"], result.report["rejected"]) == (11, 5)
    for entry in entries:
        entry["rejected"] = True
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    with pytest.raises(AnogenInputError, match="the quality gate rejected every one of the bank's 16 records"):
        evaluate(EvaluateOptions(str(bank_copy), test=str(toy_root / CATEGORY), output=str(tmp_path / "s.json")))


def folder_layout(toy_root: Path, folder: Path) -> Path:
    """The toy category's test set in anomalib's Folder layout (anomalous/, masks/, test_normal/)."""
    category = toy_root / CATEGORY
    shutil.copytree(category / "test" / "good", folder / "test_normal")
    for defect in sorted(p.name for p in (category / "test").iterdir() if p.name != "good"):
        shutil.copytree(category / "test" / defect, folder / "anomalous" / defect)
        shutil.copytree(category / "ground_truth" / defect, folder / "masks" / defect)
    return folder


def test_a_test_set_in_the_folder_layout_gives_the_same_numbers(bank: Path, toy_root: Path, tmp_path: Path) -> None:
    folder = folder_layout(toy_root, tmp_path / "product")
    mvtec = evaluate(EvaluateOptions(str(bank), test=str(toy_root / CATEGORY), output=str(tmp_path / "m.json"), **TINY))
    other = evaluate(EvaluateOptions(str(bank), test=str(folder), output=str(tmp_path / "f.json"), **TINY))
    assert other.report["test_layout"] == "Folder"
    assert other.report["test_images"] == mvtec.report["test_images"]
    assert other.seeds[0].metrics == mvtec.seeds[0].metrics


def _unfinished(bank: Path, tmp_path: Path) -> list[str]:
    (bank / "bank.json").write_text(json.dumps({"complete": False}))
    return []


def _no_masks(toy_root: Path, tmp_path: Path) -> str:
    folder = Path(shutil.copytree(toy_root / CATEGORY, tmp_path / "nomasks"))
    shutil.rmtree(folder / "ground_truth")
    return str(folder)


def _mask_of_another_size(toy_root: Path, tmp_path: Path) -> str:
    folder = Path(shutil.copytree(toy_root / CATEGORY, tmp_path / "badmask"))
    mask = next((folder / "ground_truth").rglob("*_mask.png"))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(mask)
    return str(folder)


def _mask_missing(toy_root: Path, tmp_path: Path) -> str:
    folder = Path(shutil.copytree(toy_root / CATEGORY, tmp_path / "onemissing"))
    next((folder / "ground_truth").rglob("*_mask.png")).unlink()
    return str(folder)


def _folder_without_masks(toy_root: Path, tmp_path: Path) -> str:
    folder = folder_layout(toy_root, tmp_path / "product")
    shutil.rmtree(folder / "masks")
    return str(folder)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unfinished bank", "the anomaly bank is unfinished (bank.json says complete: false"),
        ("no bank", "does not exist"),
        ("test folder without masks", "the test set has no masks (no ground_truth/ folder)"),
        ("folder layout without masks", "the test set has no masks (no masks/ folder)"),
        ("mask of another size", "the mask is 20x20 px, its image"),
        ("a mask missing", "the anomalous test image has no mask"),
        ("unknown category", "--category nope: no such category under"),
        ("root without category", "is an MVTec AD root: add --category (one of toy_bottle)"),
        ("no --test", "--test is required"),
        ("size not a multiple of 32", "--image_size must be a multiple of 32"),
        ("normal share 1", "--normal_share must be a number in [0, 1)"),
        ("no bank image in a batch", "leaves no bank image in a batch"),
        ("repeated seeds", "--seeds must be distinct"),
    ],
)
def test_bad_inputs_are_refused_in_one_line_before_any_work(
    case: str, message: str, bank_copy: Path, toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bank, test, extra = str(bank_copy), str(toy_root / CATEGORY), []
    if case == "unfinished bank":
        _unfinished(bank_copy, tmp_path)
    elif case == "no bank":
        bank = str(tmp_path / "nothing")
    elif case == "test folder without masks":
        test = _no_masks(toy_root, tmp_path)
    elif case == "folder layout without masks":
        test = _folder_without_masks(toy_root, tmp_path)
    elif case == "mask of another size":
        test = _mask_of_another_size(toy_root, tmp_path)
    elif case == "a mask missing":
        test = _mask_missing(toy_root, tmp_path)
    elif case == "unknown category":
        test, extra = str(toy_root), ["--category", "nope"]
    elif case == "root without category":
        test = str(toy_root)
    elif case == "size not a multiple of 32":
        extra = ["--image_size", "48"]
    elif case == "normal share 1":
        extra = ["--normal_share", "1"]
    elif case == "no bank image in a batch":
        extra = ["--batch_size", "1", "--normal_share", "0.9"]
    elif case == "repeated seeds":
        extra = ["--seeds", "[1, 1]"]
    output = tmp_path / "never.json"
    args = ["evaluate", bank, *([] if case == "no --test" else ["--test", test]), *extra, "--output", str(output)]
    line = error_line([*args, "--progress", "false"], capsys, "evaluate")
    assert message in line, line
    assert not output.exists()


def painted_test_set(toy_root: Path, folder: Path, seed: int = 1) -> Path:
    """Toy test images with the bank factory's kind of defect (a bright yellowish box), Folder layout."""
    rng = np.random.default_rng(seed)
    good = sorted((toy_root / CATEGORY / "test" / "good").glob("*.png"))
    shutil.copytree(toy_root / CATEGORY / "test" / "good", folder / "test_normal")
    for index, source in enumerate(sorted((toy_root / CATEGORY / "train" / "good").glob("*.png")) + good):
        image = np.asarray(Image.open(source).convert("RGB")).copy()
        size = image.shape[0]
        width, height = rng.integers(size // 6, size // 3, 2)
        left, top = (
            rng.integers(size // 8, size - width - size // 8),
            rng.integers(size // 8, size - height - size // 8),
        )
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[top : top + height, left : left + width] = 255
        image[mask > 0] = (image[mask > 0] // 4 + np.array([190, 190, 40])).clip(0, 255).astype(np.uint8)
        (folder / "anomalous").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / "anomalous" / f"{index:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{index:03d}_mask.png")
    return folder


def test_a_bank_with_visible_defects_scores_above_one_without(bank: Path, toy_root: Path, tmp_path: Path) -> None:
    test = painted_test_set(toy_root, tmp_path / "painted")
    blank = Path(shutil.copytree(bank, tmp_path / "blank"))
    for line in (blank / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        image = blank / "images" / entry["defect"] / f"{entry['id']}.png"
        shutil.copy(blank / entry["source"], image)  # the source (same size), no defect
    schedule = {**TINY, "steps": 60, "batch_size": 8, "width": 8, "lr": 0.003}  # 0.95 against 0.05 (seeds 0, 1)
    scores = {
        name: evaluate(EvaluateOptions(str(folder), test=str(test), output=str(tmp_path / f"{name}.json"), **schedule))
        for name, folder in (("visible", bank), ("blank", blank))
    }
    visible, without = scores["visible"].mean, scores["blank"].mean
    assert visible["pixel_AP"] > without["pixel_AP"] + 0.5, (visible, without)


def test_seeds_spread_over_several_devices_give_the_numbers_of_one_device(bank: Path, toy_root: Path) -> None:
    """The several-GPU path (one thread per device) run on two CPU "devices": the same numbers per seed."""
    import torch

    from anomalib_anogen.evaluate.command import _run_seeds, load_arrays
    from anomalib_anogen.evaluate.inputs import find_test_set, read_bank
    from anomalib_anogen.evaluate.train import Schedule

    options = EvaluateOptions(str(bank), test=str(toy_root / CATEGORY), seeds=[0, 1, 2], **TINY)
    test = find_test_set(options.test, None, "anomalous", "masks", None)
    arrays = load_arrays(read_bank(options.bank), test, options.image_size)
    schedule = Schedule(3, options.bank_images_per_batch, options.normal_per_batch, 4, options.lr, 0.1, 1)
    cpu = torch.device("cpu")
    alone = _run_seeds(arrays, schedule, options, [cpu])
    spread = _run_seeds(arrays, schedule, options, [cpu, cpu])
    assert [r.seed for r in spread] == [0, 1, 2]
    assert [r.metrics for r in spread] == [r.metrics for r in alone]


def test_epochs_count_passes_over_the_bank_records() -> None:
    options = EvaluateOptions("bank", test="test", batch_size=16, normal_share=0.25, epochs=2.5)
    assert (options.bank_images_per_batch, options.normal_per_batch) == (12, 4)
    assert options.total_steps(480) == 100  # 2.5 x 480 records / 12 per batch
    assert options.total_steps(7) == 2  # rounded up
    assert EvaluateOptions("bank", test="test", steps=7).total_steps(480) == 7


def test_the_bottle_config_holds_the_defaults_it_documents() -> None:
    """configs/anogen/evaluate_bottle.yaml: its schedule is evaluate's default, so the docs' numbers apply to it."""
    import dataclasses

    import yaml

    from .helpers.data import REPO

    config = yaml.safe_load((REPO / "configs" / "anogen" / "evaluate_bottle.yaml").read_text())
    options = {field.name for field in dataclasses.fields(EvaluateOptions)}
    assert set(config) <= options, set(config) - options
    defaults = {field.name: field.default for field in dataclasses.fields(EvaluateOptions)}
    chosen = {"bank", "test", "seeds", "output", "abnormal_dir", "mask_dir", "normal_test_dir"}
    assert {k: v for k, v in config.items() if k not in chosen} == {k: defaults[k] for k in config if k not in chosen}
    assert config["seeds"] == [0, 1, 2]
