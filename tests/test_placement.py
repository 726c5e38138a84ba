"""``anogen generate --placement`` (where each defect type may go) and ``--priors auto`` (box sizes from the masks).

Toy data and the paste backend for the rules and the errors (seconds, no shared data); the AnoGen authors' bottle
templates on the real bottle images for what the templates are for: breaks on the rim, contamination inside.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_anogen.cli import main as cli_main
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.data.bank import MANIFEST_NAME, SUMMARY_NAME
from anomalib_anogen.data.support import discover_support, load_support
from anomalib_anogen.data.toy import DEFECT_TYPES
from anomalib_anogen.generate import show as show_module
from anomalib_anogen.generate.boxes import AUTO_MARGIN, derive_prior
from anomalib_anogen.generate.command import generate
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.placement import read_template
from anomalib_anogen.generate.show import ShowOptions

from .helpers.cli import error_line
from .helpers.data import (
    BOTTLE,
    CATEGORY,
    SHARED,
    SUPPORT_BOTTLE,
    needs_shared_bottle,
    needs_shared_support,
    write_support,
)

TEMPLATES = SHARED / "anogen_reference" / "mask_template"
SIZE = 48  # the toy images' side


@pytest.fixture(autouse=True)
def _no_output_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """No output check: these tests are about where the boxes go.

    The toy spot's derived boxes are 2 x 4 px at 48 px, where a pasted spot can vanish, and the output check stops
    such a run (tests/test_robustness.py).
    """
    monkeypatch.setattr("anomalib_anogen.generate.run.check_output", lambda *args: None)


@pytest.fixture(scope="module")
def widget_inputs(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> dict[str, str]:
    """The toy category as generate's inputs, under a path that names no MVTec category."""
    folder = tmp_path_factory.mktemp("widget_inputs")
    support = write_support(toy_root, folder / "support")
    return {"normal": str(toy_root / CATEGORY / "train" / "good"), "support": str(support)}


def paste_bank(widget_inputs: dict[str, str], output: Path, **options: object) -> Path:
    settings = {"max_images": 3, "per_image": 2, "progress": False, **options}
    return generate(
        GenerateOptions(
            normal=widget_inputs["normal"],
            backend="paste",
            support=widget_inputs["support"],
            output=str(output),
            **settings,
        )
    )


def manifest(bank: Path) -> list[dict]:
    return [json.loads(line) for line in (bank / MANIFEST_NAME).read_text().splitlines()]


def settings_of(bank: Path) -> dict:
    return json.loads((bank / SUMMARY_NAME).read_text())["settings"]


def box_pixels(bank: Path, record: dict) -> np.ndarray:
    return np.asarray(Image.open(bank / "masks" / record["defect"] / f"{record['id']}_mask.png").convert("L")) > 0


def save_mask(path: Path, mask: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    (image.convert(mode) if mode != "L" else image).save(path)
    return path


def half(side: int, left: bool = True) -> np.ndarray:
    mask = np.zeros((side, side), bool)
    mask[:, : side // 2] = True
    return mask if left else ~mask


def resized(mask: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.Resampling.NEAREST)) > 0


# ----------------------------------------------------------------------------------------------------------------
# Placement: templates per defect, one ROI, the rule, the records


def test_per_defect_templates_of_another_size_place_every_box(widget_inputs: dict[str, str], tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    sides = {"blob": True, "scratch": False, "spot": True}  # blob and spot on the left half, scratch on the right
    for defect, left in sides.items():  # 3x the image side and RGBA, as the authors' files: resized, alpha ignored
        save_mask(templates / defect / "mask.png", half(3 * SIZE, left), "RGBA")
    bank = paste_bank(widget_inputs, tmp_path / "bank", placement=str(templates), placement_foreground=False)
    placement = settings_of(bank)["placement"]
    assert placement["kind"] == "templates" and placement["foreground"] is False
    assert set(placement["templates"]) == set(DEFECT_TYPES)
    records = manifest(bank)
    assert records and not any(r["box_fallback"] for r in records)
    for record in records:
        share = half(SIZE, sides[record["defect"]])[box_pixels(bank, record)].mean()
        assert share >= 0.75 and abs(share - record["placement_fraction"]) < 1e-3, record
        assert record["placement"] == placement["templates"][record["defect"]]["file"]


def test_one_roi_for_every_defect_and_the_foreground_too(widget_inputs: dict[str, str], tmp_path: Path) -> None:
    roi = save_mask(tmp_path / "roi.png", half(100))
    bank = paste_bank(widget_inputs, tmp_path / "bank", placement=str(roi))
    placement = settings_of(bank)["placement"]
    assert placement["kind"] == "roi" and placement["foreground"] is True
    from anomalib_anogen.generate.foreground import foreground_mask

    rule = settings_of(bank)["foreground"]
    assert rule == "border"
    for record in manifest(bank):
        inside = box_pixels(bank, record)
        image = np.asarray(Image.open(record["source"]).convert("RGB"))
        region = half(SIZE) & foreground_mask(image, rule)
        assert record["box_fallback"] or region[inside].mean() >= 0.75, record
        assert abs(region[inside].mean() - record["placement_fraction"]) < 1e-3
        assert abs(foreground_mask(image, rule)[inside].mean() - record["foreground_fraction"]) < 1e-3


def test_a_bank_without_placement_or_auto_priors_records_them_as_null(
    widget_inputs: dict[str, str], tmp_path: Path
) -> None:
    """bank.json records every setting, null where an option is not used; the records get no placement keys."""
    priors = tmp_path / "priors.json"
    priors.write_text(json.dumps({d: [[0.1, 0.3], [0.1, 0.3], True] for d in DEFECT_TYPES}))
    bank = paste_bank(widget_inputs, tmp_path / "bank", priors=str(priors))
    settings = settings_of(bank)
    assert (settings["placement"], settings["priors_auto"]) == (None, None)
    assert not {"placement", "placement_fraction"} & set(manifest(bank)[0])


def bad_placement(widget_inputs: dict[str, str], output: Path, placement: Path, capsys, *extra: str) -> str:
    args = [
        "generate",
        "--backend",
        "paste",
        "--support",
        widget_inputs["support"],
        "--normal",
        widget_inputs["normal"],
    ]
    args += ["--output", str(output), "--max_images", "1", "--progress", "false", "--placement", str(placement)]
    line = error_line([*args, *extra], capsys)
    assert not output.exists(), "nothing may be written"
    return line


def test_bad_templates_are_refused_before_any_work(
    widget_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_anogen.generate import command as generate_module

    monkeypatch.setattr(generate_module, "run", lambda *a, **k: pytest.fail("work started"))
    good = {d: half(SIZE) for d in DEFECT_TYPES}

    def folder(name: str, masks: dict[str, np.ndarray]) -> Path:
        for defect, mask in masks.items():
            save_mask(tmp_path / name / defect / "mask.png", mask)
        return tmp_path / name

    lacking = folder("lacking", {d: m for d, m in good.items() if d != "spot"})
    assert "no placement template for defect type(s) spot" in bad_placement(
        widget_inputs, tmp_path / "o1", lacking, capsys
    )
    unknown = folder("unknown", {**good, "dent": half(SIZE)})
    line = bad_placement(widget_inputs, tmp_path / "o2", unknown, capsys)
    assert "unknown defect type 'dent'" in line and str(unknown / "dent") in line
    black = folder("black", {**good, "scratch": np.zeros((SIZE, SIZE), bool)})
    line = bad_placement(widget_inputs, tmp_path / "o3", black, capsys)
    assert "empty (all black)" in line and str(black / "scratch" / "mask.png") in line
    broken = folder("broken", good)
    (broken / "blob" / "mask.png").write_bytes(b"not a png")
    line = bad_placement(widget_inputs, tmp_path / "o4", broken, capsys)
    assert "unreadable placement template" in line and str(broken / "blob" / "mask.png") in line
    assert "--placement not found" in bad_placement(widget_inputs, tmp_path / "o5", tmp_path / "nowhere", capsys)
    roi = save_mask(tmp_path / "black.png", np.zeros((8, 8), bool))
    assert "empty (all black)" in bad_placement(widget_inputs, tmp_path / "o6", roi, capsys)
    capsys.readouterr()
    args = [
        "generate",
        "--backend",
        "paste",
        "--support",
        widget_inputs["support"],
        "--normal",
        widget_inputs["normal"],
    ]
    assert cli_main([*args, "--output", str(tmp_path / "o7"), "--placement_foreground", "false"]) == 2
    assert "applies only with --placement" in capsys.readouterr().err


@needs_shared_bottle()
@needs_shared_support()
def test_authors_templates_put_breaks_on_the_rim_and_contamination_inside(tmp_path: Path) -> None:
    if not (TEMPLATES / "bottle").is_dir():
        pytest.skip(f"the authors' templates are not at {TEMPLATES}")
    bank = generate(GenerateOptions(
        normal=str(BOTTLE / "train" / "good"), backend="paste", support=str(SUPPORT_BOTTLE), output=str(tmp_path / "b"),
        placement=str(TEMPLATES), max_images=12, progress=False,
    ))  # fmt: skip
    assert settings_of(bank)["placement"]["path"] == str((TEMPLATES / "bottle").resolve())
    templates = {
        d: resized(read_template(TEMPLATES / "bottle" / d / "mask.png"), 256) for d in ("broken_large", "contamination")
    }
    rim, disc = templates["broken_large"], templates["contamination"]
    assert disc[128, 128] and not rim[128, 128] and rim[128, 10] and not disc[128, 10]  # a ring and a disc
    checked = {"broken_large": 0, "contamination": 0}
    for record in manifest(bank):
        if record["defect"] not in checked or record["box_fallback"]:
            continue
        inside = box_pixels(bank, record)
        assert templates[record["defect"]][inside].mean() >= 0.75, record
        checked[record["defect"]] += 1
    assert min(checked.values()) >= 40, checked  # 12 images x 4 records, nearly all without a fallback
    sheet = Path(show_module.show(ShowOptions(str(bank), output=str(tmp_path / "sheet.png"), per_defect=1, cell=64)))
    drawn = np.asarray(Image.open(sheet))
    original = show_module._regions
    try:
        show_module._regions = lambda *_: {}
        plain = np.asarray(
            Image.open(
                show_module.show(ShowOptions(str(bank), output=str(tmp_path / "plain.png"), per_defect=1, cell=64))
            )
        )
    finally:
        show_module._regions = original
    differs = np.any(drawn != plain, axis=2)
    assert differs[:, 64:128].any() and not differs[:, :64].any() and not differs[:, 128:].any()


# ----------------------------------------------------------------------------------------------------------------
# --priors auto


def test_auto_priors_come_from_the_support_masks_and_are_recorded(
    widget_inputs: dict[str, str], tmp_path: Path
) -> None:
    bank = paste_bank(widget_inputs, tmp_path / "bank", priors="auto", priors_rotate=False)
    settings = settings_of(bank)
    loaded = load_support(discover_support(widget_inputs["support"]))
    expected = {d: derive_prior([p.mask for p in pairs], AUTO_MARGIN, False, d) for d, pairs in loaded.items()}
    assert settings["priors"] == {d: p.describe() for d, p in expected.items()}
    assert settings["priors_auto"]["margin"] == AUTO_MARGIN and settings["priors_auto"]["rotate"] is False
    from anomalib_anogen.generate.backends.paste import cut

    cutouts = {str(p.pair.image.resolve()): cut(p) for pairs in loaded.values() for p in pairs}
    for record in manifest(bank):
        assert record["box"]["angle"] == 0.0
        # paste: the box holds its cut-out at the cut-out's own size, within the priors' margin (docs/quality.md)
        width = cutouts[record["support_image"]].width * SIZE
        assert width / (1 + AUTO_MARGIN) - 0.01 <= record["box"]["w"] <= width * (1 + AUTO_MARGIN) + 0.01


def test_derive_prior_measures_each_component_with_a_margin() -> None:
    mask = np.zeros((100, 200), bool)
    mask[10:30, 10:50] = True  # 40 x 20 px: 0.2 of the width, 0.2 of the height
    mask[60:90, 100:110] = True  # 10 x 30 px: 0.05, 0.3
    mask[0, 199] = True  # one pixel: speckle, ignored
    prior = derive_prior([mask], 0.25, True, "m")
    assert prior.width == (0.04, 0.25) and prior.height == (0.16, 0.375) and prior.rotate
    with pytest.raises(AnogenInputError, match="no defect pixels"):
        derive_prior([np.zeros((8, 8), bool)], 0.25, True, "m")


def test_a_path_without_a_category_falls_back_to_auto_and_a_file_wins(
    widget_inputs: dict[str, str], tmp_path: Path, caplog
) -> None:
    with caplog.at_level(logging.INFO):
        bank = paste_bank(widget_inputs, tmp_path / "auto")  # no --priors, no --category, no MVTec name in the path
    assert "deriving them from the support masks (--priors auto)" in caplog.text
    assert settings_of(bank)["priors_auto"] is not None
    priors = tmp_path / "priors.json"
    priors.write_text(json.dumps({d: [[0.1, 0.2], [0.1, 0.2], False] for d in DEFECT_TYPES}))
    bank = paste_bank(widget_inputs, tmp_path / "file", priors=str(priors))
    assert settings_of(bank)["priors_auto"] is None
    assert settings_of(bank)["priors"] == {d: [[0.1, 0.2], [0.1, 0.2], False] for d in DEFECT_TYPES}


def test_auto_priors_options_and_diffusion_without_support_are_refused(
    widget_inputs: dict[str, str], tmp_path: Path, capsys
) -> None:
    import torch

    from anomalib_anogen.core.backbones import build_tiny
    from anomalib_anogen.learn.embeddings import write_embedding_dir

    embeddings = tmp_path / "embeddings"
    for index, defect in enumerate(DEFECT_TYPES):
        vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(index))
        metadata = {"backbone": build_tiny(0).describe()}
        write_embedding_dir(embeddings, defect, f"<anogen-{defect}>", vector, metadata, overwrite=False)
    base = ["generate", "--normal", widget_inputs["normal"], "--progress", "false"]
    diffusion = [*base, "--embeddings", str(embeddings), "--output", str(tmp_path / "a")]
    assert "--priors auto derives the box sizes from the support masks: pass --support" in error_line(
        [*diffusion, "--priors", "auto"], capsys
    )
    assert "the shipped MVTec box priors have none for" in error_line(diffusion, capsys)
    assert not (tmp_path / "a").exists()
    # diffusion with --support: priors for the defect types that have an embedding; other support folders are unused
    (embeddings / "scratch").rename(tmp_path / "scratch")
    bank = generate(GenerateOptions(
        normal=widget_inputs["normal"], embeddings=str(embeddings), support=widget_inputs["support"], priors="auto",
        output=str(tmp_path / "d"), max_images=1, per_image=1, steps=1, progress=False,
    ))  # fmt: skip
    settings = settings_of(bank)
    assert settings["defects"] == ["blob", "spot"] and set(settings["priors_auto"]["masks"]) == {"blob", "spot"}
    priors = tmp_path / "priors.json"
    priors.write_text(json.dumps({d: [[0.1, 0.2], [0.1, 0.2], False] for d in DEFECT_TYPES}))
    paste = [*base, "--backend", "paste", "--support", widget_inputs["support"], "--output", str(tmp_path / "b")]
    line = error_line([*paste, "--priors", str(priors), "--priors_rotate", "false"], capsys)
    assert "apply to priors derived from the support masks (--priors auto) only" in line
    assert "--priors_margin must be a number in [0, 10]" in error_line([*paste, "--priors_margin", "-1"], capsys)
    assert not (tmp_path / "b").exists()
