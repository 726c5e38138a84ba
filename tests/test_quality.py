"""Per-record quality (visibility, on_object, leak), the gate, ``anogen check`` and ``anogen show --worst``.

Also the generator skipping rejected records, injected faults, and the paste backend keeping real defects real.

Synthetic arrays with known answers and toy banks (no ../shared needed), except the measurement on the real bottle.
"""

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from anomalib_anogen.cli import main as cli_main
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.data.bank import MANIFEST_NAME, QUALITY_NAME, SUMMARY_NAME, BankError, load_bank
from anomalib_anogen.generate.backends.paste import Cutout, paste
from anomalib_anogen.generate.boxes import Box, BoxPrior, Shape, box_mask, sample_box
from anomalib_anogen.generate.check import CheckOptions, check, measure_bank
from anomalib_anogen.generate.command import generate
from anomalib_anogen.generate.faults import gate_scores, inject_faults
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.quality import (
    FIXED_CONTRAST,
    MAX_LEAK,
    ON_OBJECT_SHARE,
    VISIBILITY_SHARE,
    QualityGate,
    Reference,
    badness,
    change_map,
    concentration,
    fixed_reference,
    image_contrast,
    lab,
    measure,
    support_reference,
)
from anomalib_anogen.generate.show import TITLE, ShowOptions, show

from .helpers.cli import error_line
from .helpers.data import BOTTLE, SUPPORT_BOTTLE, needs_shared_bottle, needs_shared_support

SIZE = 64


def flat(value: tuple[int, int, int] = (120, 110, 100), size: int = SIZE) -> np.ndarray:
    return np.tile(np.array(value, np.uint8), (size, size, 1))


def square(left: int, top: int, side: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 255
    return mask


def manifest(bank: Path) -> list[dict]:
    return [json.loads(line) for line in (bank / MANIFEST_NAME).read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# The measures, on cases with known answers


def test_no_change_is_invisible_leaks_nothing_and_counts_as_on_object() -> None:
    normal = flat()
    measures = measure(normal, normal, square(10, 10, 20), np.ones((SIZE, SIZE), bool), 10.0)
    assert (measures.visibility, measures.leak, measures.on_object) == (0.0, 0.0, 1.0)


def test_visibility_is_the_typical_change_of_the_changed_pixels_over_the_reference() -> None:
    normal, box = flat(), square(10, 10, 30)
    everywhere = np.ones((SIZE, SIZE), bool)
    dark = (40, 35, 30)
    expected = float(np.linalg.norm(lab(flat(dark))[0, 0] - lab(normal)[0, 0]))
    for side in (4, 20):  # a small and a large defect of the same colour are equally visible
        image = normal.copy()
        image[15 : 15 + side, 15 : 15 + side] = dark
        measures = measure(image, normal, box, everywhere, expected / 2)
        assert measures.visibility == pytest.approx(2.0, rel=1e-4)
        assert measures.change == pytest.approx(expected, rel=1e-4) and measures.leak == 0.0
    faint = (normal.astype(np.float32) * 0.95 + np.float32(image) * 0.05).round().astype(np.uint8)  # 5% opacity
    assert measure(faint, normal, box, everywhere, expected).visibility < 0.08


def test_change_outside_the_box_is_a_leak_relative_to_the_image_contrast() -> None:
    normal = flat()
    normal[:, SIZE // 2 :] = (20, 20, 20)  # two halves: a contrast of about half their ΔE
    image = normal.copy()
    image[:5] = np.clip(image[:5].astype(int) + 30, 0, 255)  # a band outside the box changed
    box = square(30, 30, 20)
    measures = measure(image, normal, box, np.ones((SIZE, SIZE), bool), 10.0)
    outside = change_map(image, normal)[box == 0].mean()
    assert measures.leak == pytest.approx(outside / image_contrast(normal), rel=1e-5) and measures.leak > 0
    assert image_contrast(flat()) == 5.0  # a flat image: the floor, never a division by zero


def test_a_defect_on_the_background_is_off_the_object() -> None:
    normal, box = flat(), square(0, 0, 24)
    part = np.zeros((SIZE, SIZE), bool)
    part[32:, 32:] = True  # the part is the lower right quarter; the box is in the upper left corner
    image = normal.copy()
    image[5:15, 5:15] = (10, 10, 10)
    assert measure(image, normal, box, part, 10.0).on_object == 0.0
    image = normal.copy()
    image[30:40, 30:40] = (10, 10, 10)  # a box across the part's corner: 64 of 100 changed pixels on it
    assert measure(image, normal, square(26, 26, 20), part, 10.0).on_object == pytest.approx(0.64, abs=1e-6)


def test_concentration_ignores_unchanged_pixels() -> None:
    change = np.zeros((10, 10), np.float32)
    change[0, :3] = 6.0
    assert concentration(change, np.ones((10, 10), bool)) == pytest.approx(6.0)
    assert concentration(np.zeros((4, 4)), np.ones((4, 4), bool)) == 0.0


def test_the_support_reference_is_the_defects_own_contrast() -> None:
    pairs = []
    for left in (10, 30):
        image = flat(size=128)
        mask = np.zeros((128, 128), bool)
        mask[50:60, left : left + 12] = True
        image[mask] = (30, 30, 30)
        pairs.append((image, mask))
    expected = float(np.linalg.norm(lab(flat((30, 30, 30)))[0, 0] - lab(flat())[0, 0]))
    reference = support_reference(pairs, 128, "all")
    assert reference.contrast == pytest.approx(expected, rel=0.05)
    assert reference.source == "support" and reference.on_object == (1.0, 1.0)
    assert all(v == pytest.approx(1.0, abs=0.05) for v in reference.visibility)
    half = support_reference(
        [(cv2.resize(image, (256, 256)), cv2.resize(mask.astype(np.uint8), (256, 256)) > 0)], 128, "all"
    )
    assert half.contrast == pytest.approx(expected, rel=0.1)  # scaled to the bank's resolution first


# ----------------------------------------------------------------------------------------------------------------
# The gate


def test_default_limits_are_derived_from_the_support_and_overrides_win() -> None:
    reference = Reference(20.0, (0.8, 1.0, 1.3), (1.0, 0.9, 1.0))
    gate = QualityGate({"crack": reference, "stain": fixed_reference()})
    limits = gate.limits("crack")
    assert limits.min_visibility == pytest.approx(VISIBILITY_SHARE * 0.8)
    assert limits.min_on_object == pytest.approx(ON_OBJECT_SHARE * 0.9)
    assert limits.max_leak == MAX_LEAK and limits.origin["min_visibility"] == "derived"
    assert gate.limits("stain").origin == dict.fromkeys(("min_visibility", "min_on_object", "max_leak"), "fixed")
    given = QualityGate({"crack": reference}, min_visibility=0.5, max_leak=0.3).limits("crack")
    assert (given.min_visibility, given.max_leak, given.origin["min_visibility"]) == (0.5, 0.3, "given")
    assert given.min_on_object == pytest.approx(0.45)


def test_the_gate_rejects_each_broken_limit_and_nothing_when_off() -> None:
    from anomalib_anogen.generate.quality import Measures

    gate = QualityGate({"crack": Reference(20.0, (1.0,), (1.0,))})
    assert gate.decide("crack", Measures(1.0, 1.0, 0.0, 20, 0)).rejected_for == ()
    assert gate.decide("crack", Measures(0.05, 0.2, 0.5, 1, 8)).rejected_for == ("visibility", "on_object", "leak")
    off = QualityGate({"crack": Reference(20.0, (1.0,), (1.0,))}, enabled=False)
    assert not off.decide("crack", Measures(0.0, 0.0, 9.0, 0, 90)).rejected
    fields = gate.decide("crack", Measures(0.05, 1.0, 0.0, 1, 0)).fields()
    assert fields["rejected"] is True and fields["rejected_for"] == ["visibility"]
    limits = gate.limits("crack").describe()
    assert badness(fields["quality"], limits) >= 1 > badness({"visibility": 1, "on_object": 1, "leak": 0}, limits)


@pytest.mark.parametrize(
    ("option", "value", "text"),
    [
        ("--min_visibility", "-1", "--min_visibility must be a number >= 0"),
        ("--min_on_object", "1.5", "--min_on_object must be a number in [0, 1]"),
        ("--max_leak", "-0.1", "--max_leak must be a number >= 0"),
    ],
)
def test_bad_limits_are_one_line_before_anything(tmp_path: Path, capsys, option: str, value: str, text: str) -> None:
    for command in (["generate", "--normal", "n", "--output", str(tmp_path / "b")], ["check", str(tmp_path)]):
        line = error_line([*command, option, value], capsys, command[0])
        assert text in line, line
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------------------------------------------
# In every bank


@pytest.fixture(scope="module")
def toy_bank(tmp_path_factory: pytest.TempPathFactory, toy_inputs: dict[str, str]) -> Path:
    """A toy paste bank: 4 images x 3 defects x 2 records at 48 px."""
    output = tmp_path_factory.mktemp("quality") / "bank"
    inputs = {name: toy_inputs[name] for name in ("normal", "support", "priors")}
    generate(GenerateOptions(backend="paste", output=str(output), max_images=4, per_image=2, progress=False, **inputs))
    return output


def test_every_record_and_bank_json_carry_the_quality(toy_bank: Path) -> None:
    records = manifest(toy_bank)
    summary = json.loads((toy_bank / SUMMARY_NAME).read_text())
    for record in records:
        assert set(record["quality"]) == {"visibility", "on_object", "leak", "change_de", "outside_de"}
        assert record["quality"]["leak"] == 0.0  # paste: bit-exact outside the box
        assert record["rejected"] == bool(record["rejected_for"])
    quality = summary["quality"]
    assert quality["gate"] is True and set(quality["defects"]) == set(summary["settings"]["defects"])
    for defect, entry in quality["defects"].items():
        assert entry["records"] == summary["per_defect"][defect] == entry["measured"]
        assert entry["reference"]["source"] == "support" and entry["limits"]["origin"]["min_visibility"] == "derived"
        assert entry["rejected"] == sum(r["rejected"] for r in records if r["defect"] == defect)
        assert {"mean", "p05", "p50", "p95"} <= set(entry["visibility"])
    assert "quality" not in summary["settings"]  # the default gate: defined by the support set alone
    assert summary["settings"]["paste_version"] == 2


def test_gate_options_are_recorded_and_the_gate_can_be_off(tmp_path: Path, toy_inputs: dict[str, str]) -> None:
    inputs = {name: toy_inputs[name] for name in ("normal", "support", "priors")}
    common = {"backend": "paste", "max_images": 1, "per_image": 2, "progress": False, **inputs}
    strict = tmp_path / "strict"
    generate(GenerateOptions(output=str(strict), min_visibility=100.0, **common))
    summary = json.loads((strict / SUMMARY_NAME).read_text())
    assert summary["settings"]["quality"] == {"min_visibility": 100.0}
    assert all(r["rejected"] and r["rejected_for"] == ["visibility"] for r in manifest(strict))
    off = tmp_path / "off"
    generate(GenerateOptions(output=str(off), min_visibility=100.0, gate=False, **common))
    assert json.loads((off / SUMMARY_NAME).read_text())["settings"]["quality"] == {
        "gate": False,
        "min_visibility": 100.0,
    }
    assert not any(r["rejected"] for r in manifest(off)) and all("quality" in r for r in manifest(off))


# ----------------------------------------------------------------------------------------------------------------
# anogen check


def test_check_measures_an_existing_bank_as_generate_did_and_writes_quality_json(toy_bank: Path, capsys) -> None:
    before = {p: p.read_bytes() for p in toy_bank.rglob("*") if p.is_file()}
    result = check(CheckOptions(bank=str(toy_bank)))
    printed = capsys.readouterr().out
    assert "| defect | records | rejected |" in printed and "references from" in printed
    for record in manifest(toy_bank):
        assert result.records[record["id"]]["quality"] == record["quality"]
        assert result.records[record["id"]]["rejected_for"] == record["rejected_for"]
    assert {p: p.read_bytes() for p in toy_bank.rglob("*") if p.is_file()} == before  # nothing written
    assert cli_main(["check", str(toy_bank), "--max_leak", "0", "--min_visibility", "0", "--write", "true"]) == 0
    written = json.loads((toy_bank / QUALITY_NAME).read_text())
    assert written["format"] == "anogen-quality/1" and set(written["records"]) == {r["id"] for r in manifest(toy_bank)}
    (toy_bank / QUALITY_NAME).unlink()


def test_check_of_a_bank_without_references_reads_the_support_its_records_name(toy_bank: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(toy_bank, copy)
    summary = json.loads((copy / SUMMARY_NAME).read_text())
    del summary["quality"]  # a bank made before the gate
    (copy / SUMMARY_NAME).write_text(json.dumps(summary))
    records = manifest(copy)
    for record in records:
        for key in ("quality", "rejected", "rejected_for"):
            del record[key]
    (copy / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    result = measure_bank(copy)
    support = Path(records[0]["support_image"]).parent.parent
    assert result.references_from == str(support)
    measured = result.records.values()
    assert all(value["quality"] == r["quality"] for r, value in zip(manifest(toy_bank), measured, strict=True))
    # a bank whose support moved: a fixed reference, with a warning
    for record in records:
        record["support_image"] = "/nowhere/crack/a.png"
    (copy / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert (
        measure_bank(copy).gate.references["broken_large" if False else records[0]["defect"]].contrast == FIXED_CONTRAST
    )


def test_check_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    assert "does not exist" in error_line(["check", str(tmp_path / "missing")], capsys, "check")
    (tmp_path / "empty").mkdir()
    assert "is not an anomaly bank" in error_line(["check", str(tmp_path / "empty")], capsys, "check")


# ----------------------------------------------------------------------------------------------------------------
# Training skips rejected records; quality.json overrides the manifest for the same image


def test_generator_skips_rejected_records_and_says_how_many(toy_bank: Path, tmp_path: Path, caplog) -> None:
    import shutil

    from anomalib_anogen.data.generators import AnoGenAnomalyGenerator

    copy = tmp_path / "bank"
    shutil.copytree(toy_bank, copy)
    records = manifest(copy)
    for record in records[:3]:
        record["rejected"], record["rejected_for"] = True, ["visibility"]
    for record in records[3:]:
        record["rejected"], record["rejected_for"] = False, []
    (copy / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level(logging.WARNING):
        generator = AnoGenAnomalyGenerator(copy, num_workers=0)
    assert len(generator.records) == len(records) - 3
    assert {r.record_id for r in generator.records}.isdisjoint(r["id"] for r in records[:3])
    assert f"skipping 3 of {len(records)} records that the quality gate rejected (visibility 3)" in caplog.text
    assert len(load_bank(copy)) == len(records)  # the reader keeps them (anogen show draws them)
    # quality.json judged the same image files: its verdicts win; a verdict on another image file is ignored
    verdicts = {r["id"]: {"image_sha256": r["image_sha256"], "rejected": False, "rejected_for": []} for r in records}
    verdicts[records[0]["id"]]["image_sha256"] = "0" * 64
    (copy / QUALITY_NAME).write_text(json.dumps({"records": verdicts}))
    assert [r.record_id for r in load_bank(copy) if r.rejected] == [records[0]["id"]]
    # a bank rejected whole is refused, saying how to look at it and how to train on it anyway
    for verdict in verdicts.values():
        verdict["image_sha256"] = "0" * 64
    (copy / QUALITY_NAME).write_text(json.dumps({"records": verdicts}))
    for record in records:
        record["rejected"], record["rejected_for"] = True, ["leak"]
    (copy / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(BankError, match=r"rejected all \d+ records .*--worst 4.*--gate false --write true"):
        AnoGenAnomalyGenerator(copy, num_workers=0)
    assert cli_main(["check", str(copy), "--gate", "false", "--write", "true"]) == 0
    assert len(AnoGenAnomalyGenerator(copy, num_workers=0).records) == len(records)
    (copy / QUALITY_NAME).write_text("{not json")
    with pytest.raises(BankError, match=r"quality\.json cannot be read"):
        load_bank(copy)


# ----------------------------------------------------------------------------------------------------------------
# anogen show --worst


def test_show_worst_orders_by_the_gate_and_marks_rejected_records(toy_bank: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bank"
    shutil.copytree(toy_bank, copy)
    records = manifest(copy)
    worst = {d: next(r for r in records if r["defect"] == d) for d in {r["defect"] for r in records}}
    for record in records:  # every other record passes clearly
        record["quality"].update(visibility=1.0, on_object=1.0, leak=0.0)
        record["rejected"], record["rejected_for"] = False, []
    for record in worst.values():
        record["quality"]["visibility"], record["rejected"], record["rejected_for"] = 0.01, True, ["visibility"]
    (copy / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    cell = 32
    sheet = show(ShowOptions(bank=str(copy), output=str(tmp_path / "worst.png"), worst=2, cell=cell))
    image = np.asarray(Image.open(sheet).convert("RGB"))
    defects = len(worst)
    assert image.shape == (defects * (TITLE + 2 * (TITLE + cell)), 3 * cell, 3)
    for index in range(defects):  # each defect's first row is its rejected record: a red caption and a red cross
        top = index * (TITLE + 2 * (TITLE + cell)) + TITLE
        assert tuple(image[top + 2, 3 * cell - 2]) == (140, 0, 0)
        generated = image[top + TITLE : top + TITLE + cell, cell : 2 * cell].astype(int)
        assert ((generated[..., 0] > 200) & (generated[..., 1] < 60)).sum() > cell  # the cross
        second = image[top + TITLE + cell + 2, 3 * cell - 2]
        assert tuple(second) != (140, 0, 0)
    plain = show(ShowOptions(bank=str(copy), output=str(tmp_path / "s.png"), cell=cell, per_defect=2))
    plain = np.asarray(Image.open(plain))
    assert plain.shape[0] == defects * (TITLE + 2 * cell)  # the plain sheet keeps its layout


def test_show_worst_measures_a_bank_without_measures(toy_bank: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "bank"
    shutil.copytree(toy_bank, copy)
    records = manifest(copy)
    for record in records:
        del record["quality"]
    (copy / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert show(ShowOptions(bank=str(copy), output=str(tmp_path / "w.png"), worst=1, cell=16)).is_file()
    assert "--worst and --seed exclude" in error_line(
        ["show", str(copy), "--worst", "1", "--seed", "0"], capsys, "show"
    )
    assert "--worst must be an integer >= 1" in error_line(["show", str(copy), "--worst", "0"], capsys, "show")


# ----------------------------------------------------------------------------------------------------------------
# Injected faults, and the gate catching them


def test_injected_faults_are_caught_and_the_source_bank_is_untouched(toy_bank: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in toy_bank.rglob("*") if p.is_file()}
    shares = {"invisible": 0.25, "off_object": 0.125, "leak": 0.125}
    injected = inject_faults(toy_bank, tmp_path / "faulty", shares, seed=1)
    assert {p: p.read_bytes() for p in toy_bank.rglob("*") if p.is_file()} == before
    assert {kind: len(injected.of_kind(kind)) for kind in shares} == {"invisible": 6, "off_object": 3, "leak": 3}
    records = {r["id"]: r for r in manifest(injected.bank)}
    assert len(load_bank(injected.bank)) == 24  # hashes updated: a valid bank
    for key, kind in injected.faults.items():
        assert records[key]["fault"]["kind"] == kind and "quality" not in records[key]
    result = measure_bank(injected.bank)
    scores = gate_scores(injected.faults, result.rejected(), set(result.records))
    assert scores["recall_invisible"] == scores["recall_leak"] == 1.0, scores
    assert scores["recall_off_object"] >= 2 / 3 and scores["false_rejection"] <= 0.2, scores
    with pytest.raises(AnogenInputError, match="exists"):
        inject_faults(toy_bank, injected.bank)


# ----------------------------------------------------------------------------------------------------------------
# The paste backend keeps real defects real


def test_a_shaped_box_keeps_the_defects_aspect_ratio() -> None:
    prior = BoxPrior((0.05, 0.6), (0.05, 0.6), True)  # ranges that mix a long thin cut and small beads
    everywhere = np.ones((256, 256), bool)
    for shape in (Shape(0.35, 0.012), Shape(0.043, 0.074)):  # a 90 x 3 px cut, an 11 x 19 px bead
        for seed in range(20):
            placed = sample_box(prior, 256, everywhere, np.random.default_rng(seed), shape=shape)
            if min(placed.box.w, placed.box.h) > 2:
                assert placed.box.w / placed.box.h == pytest.approx(shape.width / shape.height, rel=0.02)
            area = placed.box.w * placed.box.h / 256**2
            assert 0.05**2 - 1e-3 <= area <= 0.6**2 + 1e-3
    own = Shape(0.043, 0.074, own_size=True, margin=0.25)  # --priors auto: the bead's own size, within the margin
    for seed in range(20):
        box = sample_box(prior, 256, everywhere, np.random.default_rng(seed), shape=own).box
        assert 0.043 * 256 / 1.25 - 0.01 <= box.w <= 0.043 * 256 * 1.25 + 0.01
        assert box.w / box.h == pytest.approx(0.043 / 0.074, rel=0.02)


def _cutout(image: np.ndarray, mask: np.ndarray) -> Cutout:
    from anomalib_anogen.data.support import LoadedPair, SupportPair
    from anomalib_anogen.generate.backends.paste import cut

    pair = SupportPair("cut", Path("s.png"), Path("s_mask.png"))
    return cut(LoadedPair(pair, Image.fromarray(image), mask))


def test_paste_keeps_the_cut_outs_shape_and_colours() -> None:
    """A dark, thin, neutral cut pasted on a lighter, tinted surface keeps its shape, stays dark and untinted."""
    support = np.tile(np.array([70, 66, 60], np.uint8), (128, 128, 1))
    mask = np.zeros((128, 128), bool)
    mask[60:63, 20:100] = True  # 80 x 3 px
    support[mask] = (14, 14, 14)
    cutout = _cutout(support, mask)
    assert cutout.width / cutout.height == pytest.approx(84 / 7)
    normal = np.tile(np.array([80, 72, 66], np.uint8), (128, 128, 1))
    box = Box(64, 64, cutout.width * 128, cutout.height * 128, 30.0)
    inside = box_mask(box, 128)
    for seed in range(8):
        image = paste(normal, box, inside, cutout, np.random.default_rng(seed))
        dark = (image.astype(int).sum(axis=-1) < 3 * 40) & (inside > 0)
        ys, xs = np.nonzero(dark)
        assert dark.sum() >= 0.6 * 0.7**2 * 80 * 3  # the defect is there, opaque
        # its elongation (principal extents) is a thin bar's: about 80 / 3 at 70-100%, along the box angle
        covariance = np.cov(np.stack([xs, ys]).astype(float))
        low, high = np.linalg.eigvalsh(covariance) + 1 / 12
        assert np.sqrt(high / low) > 10
        colours = lab(image)[dark]
        support_lab = lab(support)[mask]
        assert np.abs(colours[:, 1:].mean(axis=0) - support_lab[:, 1:].mean(axis=0)).max() < 2.0  # no tint
        # its darkest pixels are the support's cut, brightness-jittered within range (not mixed with the surface)
        darkest, support_l = colours[:, 0].min(), support_lab[:, 0].mean()
        assert support_l * 0.85 - 0.5 <= darkest <= support_l * 1.15 + 0.5
    assert inside[image.astype(int).sum(axis=-1) != normal.astype(int).sum(axis=-1)].all()  # clipped to the box


def test_paste_bank_of_the_dark_product_keeps_aspect_and_colour(tmp_path: Path) -> None:
    from anomalib_anogen.data.toy import make_dark_product

    dark = make_dark_product(tmp_path / "dark", size=128, n_normal=2)
    output = generate(GenerateOptions(
        normal=str(dark / "normal"), backend="paste", support=str(dark / "support"), priors="auto",
        output=str(tmp_path / "bank"), per_image=2, progress=False,
    ))  # fmt: skip
    from anomalib_anogen.data.support import discover_support, load_support
    from anomalib_anogen.generate.backends.paste import cut

    cutouts = {
        str(p.pair.image.resolve()): cut(p)
        for pairs in load_support(discover_support(dark / "support")).values()
        for p in pairs
    }
    for record in manifest(output):
        cutout = cutouts[record["support_image"]]
        box = record["box"]
        assert box["w"] / box["h"] == pytest.approx(cutout.width / cutout.height, rel=0.05), record["id"]
        assert cutout.width * 128 / 1.25 - 0.5 <= box["w"] <= cutout.width * 128 * 1.25 + 0.5  # its own size


# ----------------------------------------------------------------------------------------------------------------
# The diffusion backend: the tiny backbone's whole-latent decode leaks, the composite does not


def test_tiny_diffusion_bank_leaks_without_keep_outside(tmp_path: Path, toy_inputs: dict[str, str]) -> None:
    import torch

    from anomalib_anogen.core.backbones import build_tiny
    from anomalib_anogen.learn.embeddings import write_embedding_dir

    embeddings = tmp_path / "embeddings"
    described = build_tiny(0).describe()
    for index, defect in enumerate(("blob", "scratch", "spot")):
        vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(index))
        write_embedding_dir(embeddings, defect, f"<anogen-{defect}>", vector, {"backbone": described}, overwrite=False)
    leaked = {}
    for keep in (False, True):
        output = tmp_path / f"keep_{keep}"
        generate(GenerateOptions(
            normal=toy_inputs["normal"], embeddings=str(embeddings), support=toy_inputs["support"],
            priors=toy_inputs["priors"], output=str(output), max_images=1, per_image=2, steps=2, batch_size=6,
            keep_outside=keep, progress=False,
        ))  # fmt: skip
        records = manifest(output)
        leaked[keep] = [r["rejected_for"] for r in records]
        settings = json.loads((output / SUMMARY_NAME).read_text())["settings"]
        assert set(settings["quality"]) == {"support"}  # the diffusion backend records the support it measured
    assert all("leak" in reasons for reasons in leaked[False])
    assert not any("leak" in reasons for reasons in leaked[True])


# ----------------------------------------------------------------------------------------------------------------
# The real bottle


@pytest.mark.slow
@needs_shared_bottle()
@needs_shared_support()
def test_gate_on_the_real_bottle_catches_injected_faults(tmp_path: Path) -> None:
    """20 bottle images x 3 defects x 4 records (paste); 30% invisible, 10% off the object, 10% leaking."""
    bank = generate(GenerateOptions(
        normal=str(BOTTLE / "train" / "good"), backend="paste", support=str(SUPPORT_BOTTLE),
        output=str(tmp_path / "bank"), max_images=20, progress=False,
    ))  # fmt: skip
    clean = measure_bank(bank)
    assert len(clean.rejected()) <= 0.05 * len(clean.records)
    injected = inject_faults(bank, tmp_path / "faulty")
    result = measure_bank(injected.bank)
    scores = gate_scores(injected.faults, result.rejected(), set(result.records))
    assert scores["recall"] >= 0.9 and scores["false_rejection"] <= 0.05, scores


def test_a_paste_bank_of_the_old_paste_is_not_resumed(toy_bank: Path, tmp_path: Path, capsys) -> None:
    import shutil

    from anomalib_anogen.generate.bank_writer import settings_sha256

    old = tmp_path / "old"
    shutil.copytree(toy_bank, old)
    summary = json.loads((old / SUMMARY_NAME).read_text())
    del summary["settings"]["paste_version"]  # as paste banks were recorded before version 2
    summary["settings_sha256"], summary["complete"] = settings_sha256(summary["settings"]), False
    (old / SUMMARY_NAME).write_text(json.dumps(summary))
    settings = summary["settings"]
    records = manifest(toy_bank)
    support = str(Path(records[0]["support_image"]).parent.parent)
    args = ["generate", "--backend", "paste", "--support", support, "--normal", settings["normal"]]
    args += ["--priors", str(Path(support).parent / "toy_priors.json"), "--output", str(old), "--max_images", "4"]
    args += ["--per_image", "2", "--progress", "false", "--resume", "true"]
    assert "paste_version differ" in error_line(args, capsys)
