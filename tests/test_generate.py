"""``anogen generate`` / ``anogen show``: boxes, blended sampling, paste, bank format, resume, bad input.

On a toy stand-in for bottle (:func:`toy_bottle`): no ../shared needed, except where the real bottle is the point.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_anogen.cli import main as cli_main
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.data.bank import MANIFEST_NAME, SUMMARY_NAME, load_bank
from anomalib_anogen.generate.bank_writer import LOCK_NAME
from anomalib_anogen.generate.boxes import DEFAULT_PRIORS, BoxPrior, box_mask, load_priors, sample_box
from anomalib_anogen.generate.command import generate
from anomalib_anogen.generate.foreground import foreground_mask
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.show import TITLE, ShowOptions, show

from .helpers.data import BOTTLE, REPO, SHARED, all_files, needs_shared_bottle, needs_shared_support, toy_bottle

DEFECTS = ("broken_large", "broken_small", "contamination")
FAST = {"steps": 3, "per_image": 2, "batch_size": 4, "progress": False}


@pytest.fixture(scope="module")
def toy_bottle_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A toy stand-in for MVTec AD bottle at 64 px: its normal images and support set (see :func:`toy_bottle`)."""
    return toy_bottle(tmp_path_factory.mktemp("toy_bottle"))


@pytest.fixture(scope="module")
def normal(toy_bottle_inputs: tuple[Path, Path]) -> Path:
    return toy_bottle_inputs[0]


@pytest.fixture(scope="module")
def support(toy_bottle_inputs: tuple[Path, Path]) -> Path:
    return toy_bottle_inputs[1]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random 'learned' embeddings for the tiny backbone, one per bottle defect, in anogen learn's format."""
    from anomalib_anogen.core.backbones import build_tiny
    from anomalib_anogen.learn.embeddings import write_embedding_dir

    folder = tmp_path_factory.mktemp("embeddings")
    described = build_tiny(0).describe()
    for index, defect in enumerate(DEFECTS):
        vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(index))
        write_embedding_dir(folder, defect, f"<anogen-{defect}>", vector, {"backbone": described}, overwrite=False)
    return folder


@pytest.fixture(scope="module")
def diffusion_bank(tmp_path_factory: pytest.TempPathFactory, embeddings: Path, normal: Path) -> Path:
    """2 toy bottle images x 3 defects x 2 records with the tiny backbone at 64 px, composited onto the normal image."""
    output = tmp_path_factory.mktemp("banks") / "diffusion"
    generate(
        GenerateOptions(
            normal=str(normal), embeddings=str(embeddings), output=str(output), max_images=2, keep_outside=True, **FAST
        )
    )
    return output


@pytest.fixture(scope="module")
def paste_bank(tmp_path_factory: pytest.TempPathFactory, normal: Path, support: Path) -> Path:
    """3 toy bottle images x 3 defects x 2 records with the paste backend at the images' 64 px."""
    output = tmp_path_factory.mktemp("banks") / "paste"
    generate(
        GenerateOptions(
            normal=str(normal), backend="paste", support=str(support), output=str(output), max_images=3, **FAST
        )
    )
    return output


def manifest(bank: Path) -> list[dict]:
    return [json.loads(line) for line in (bank / MANIFEST_NAME).read_text().splitlines()]


def pixels(path: Path, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(path).convert(mode))


def source_of(bank: Path, record: dict) -> Path:
    source = Path(record["source"])
    return source if source.is_absolute() else bank / source


# ----------------------------------------------------------------------------------------------------------------
# Pixels and latents


@pytest.mark.parametrize("which", ["diffusion_bank", "paste_bank"])
def test_outside_the_box_is_the_normal_image_exactly_and_inside_differs(which: str, request) -> None:
    bank = request.getfixturevalue(which)
    records = manifest(bank)
    assert len(records) == (2 if which == "diffusion_bank" else 3) * len(DEFECTS) * 2
    for record in records:
        image = pixels(bank / "images" / record["defect"] / f"{record['id']}.png")
        mask = pixels(bank / "masks" / record["defect"] / f"{record['id']}_mask.png", "L")
        normal = pixels(source_of(bank, record))
        assert set(np.unique(mask)) <= {0, 255} and mask.shape == image.shape[:2] == normal.shape[:2]
        assert np.array_equal(image[mask == 0], normal[mask == 0]), record["id"]
        assert not np.array_equal(image[mask > 0], normal[mask > 0]), record["id"]


def test_by_default_the_whole_image_is_decoded_as_the_paper(tmp_path: Path, embeddings: Path, normal: Path) -> None:
    output = tmp_path / "raw"
    generate(
        GenerateOptions(
            normal=str(normal),
            embeddings=str(embeddings),
            output=str(output),
            max_images=1,
            defects=["broken_large"],
            **FAST,
        )
    )
    assert json.loads((output / SUMMARY_NAME).read_text())["settings"]["keep_outside"] is False
    for record in manifest(output):
        image = pixels(output / "images" / record["defect"] / f"{record['id']}.png").astype(int)
        mask = pixels(output / "masks" / record["defect"] / f"{record['id']}_mask.png", "L")
        normal = pixels(source_of(output, record)).astype(int)
        assert np.abs(image - normal)[mask == 0].mean() > 1  # outside the box: the VAE's decode, not the normal image


def test_poisson_paste_keeps_outside_exactly(tmp_path: Path, normal: Path, support: Path) -> None:
    output = tmp_path / "bank"
    generate(GenerateOptions(
        normal=str(normal), backend="paste", blend="poisson", support=str(support), output=str(output),
        max_images=1, **FAST,
    ))  # fmt: skip
    for record in manifest(output):
        image = pixels(output / "images" / record["defect"] / f"{record['id']}.png")
        mask = pixels(output / "masks" / record["defect"] / f"{record['id']}_mask.png", "L")
        assert np.array_equal(image[mask == 0], pixels(source_of(output, record))[mask == 0])
        assert record["blend"] == "poisson" and record["backend"] == "paste"


def test_without_keep_outside_the_final_latent_outside_the_box_is_the_normal_latent(normal: Path) -> None:
    from anomalib_anogen.core.backbones import build_tiny
    from anomalib_anogen.generate.backends.diffusion import BlendedSampler, BoxBatch
    from anomalib_anogen.generate.boxes import Box

    model = build_tiny(0).freeze()
    sampler = BlendedSampler(model, steps=4, guidance=10.0)
    image = np.asarray(Image.open(normal / "000.png").convert("RGB").resize((64, 64), Image.Resampling.BICUBIC))
    latent = sampler.encode(image[None])
    masks = np.stack([box_mask(Box(32, 32, 20, 12, 30.0), 64), box_mask(Box(20, 40, 10, 10, 0.0), 64)])
    inside = sampler.latent_mask(masks)
    batch = BoxBatch(
        normal_latents=latent.repeat(2, 1, 1, 1),
        latent_masks=inside,
        prompt_embeds=sampler.embed_prompts(["defect", "scratch"]),
        seeds=[1, 2],
    )
    final = sampler.sample(batch)
    outside = ~inside.expand_as(final)
    assert torch.equal(final[outside], latent.repeat(2, 1, 1, 1)[outside])
    assert not torch.allclose(final[~outside], latent.repeat(2, 1, 1, 1)[~outside])
    assert torch.equal(sampler.sample(batch), final)  # seeded per item
    alone = BoxBatch(latent, inside[1:], sampler.embed_prompts(["scratch"]), seeds=[2])
    difference = (sampler.sample(alone) - final[1:]).abs().max().item()
    assert difference < 1e-4, difference  # an item's noise is its own in any batch (batched float sums differ)


# ----------------------------------------------------------------------------------------------------------------
# Boxes


def test_boxes_respect_the_priors_and_the_foreground_rule(paste_bank: Path, diffusion_bank: Path, normal: Path) -> None:
    priors, category = load_priors(None, None, normal)
    assert category == "bottle" and set(priors) == set(DEFECTS)
    for bank in (paste_bank, diffusion_bank):
        for record in manifest(bank):
            prior, box, size = priors[record["defect"]], record["box"], record["resolution"]
            if bank == diffusion_bank:  # the paper: width and height drawn from their ranges
                assert prior.width[0] * size - 0.01 <= box["w"] <= prior.width[1] * size + 0.01
                assert prior.height[0] * size - 0.01 <= box["h"] <= prior.height[1] * size + 0.01
            else:  # paste: the area of such a draw, in the shape of the cut-out it holds (test_quality.py)
                area = box["w"] * box["h"] / size**2
                assert prior.width[0] * prior.height[0] - 1e-3 <= area <= prior.width[1] * prior.height[1] + 1e-3
            if not prior.rotate:
                assert box["angle"] == 0.0
            mask = pixels(bank / "masks" / record["defect"] / f"{record['id']}_mask.png", "L") > 0
            rule = json.loads((bank / "bank.json").read_text())["settings"]["foreground"]
            share = foreground_mask(pixels(source_of(bank, record)), rule)[mask].mean()
            assert share >= 0.75 or record["box_fallback"], record
            assert abs(share - record["foreground_fraction"]) < 1e-3


def test_box_fallback_is_bounded_and_recorded() -> None:
    foreground = np.zeros((64, 64), bool)
    foreground[:4, :4] = True  # far too small an object
    prior = BoxPrior((0.2, 0.3), (0.2, 0.3), True)
    placed = sample_box(prior, 64, foreground, np.random.default_rng(0), max_tries=7)
    assert placed.fallback and placed.tries == 7 and placed.foreground < 0.75
    ok = sample_box(prior, 64, np.ones((64, 64), bool), np.random.default_rng(0))
    assert not ok.fallback and ok.foreground == 1.0 and ok.tries == 1


@needs_shared_bottle()
@pytest.mark.parametrize("rule", ["border", "otsu"])
def test_foreground_of_the_bottle_is_the_bottle(rule: str) -> None:
    mask = foreground_mask(pixels(BOTTLE / "train" / "good" / "000.png"), rule)
    assert 0.4 < mask.mean() < 0.8 and mask[128, 128] and not mask[0, 0]


def test_shipped_priors_are_the_papers_with_booleans() -> None:
    shipped = json.loads(DEFAULT_PRIORS.read_text())
    reference = SHARED / "anogen_reference" / "mvtec_box_ranges.json"
    if reference.is_file():
        original = json.loads(reference.read_text())
        papers = {c: {d: [v[0], v[1], v[2] == "True"] for d, v in t.items()} for c, t in original.items()}
        assert papers == {c: t for c, t in shipped.items() if c != "screw"}
    # screw is not in the authors' json: their generation script draws its boxes unrotated at 0.05-0.1 of the side
    screw = ("manipulated_front", "scratch_head", "scratch_neck", "thread_side", "thread_top")
    assert shipped["screw"] == {d: [[0.05, 0.1], [0.05, 0.1], False] for d in screw}
    assert shipped["bottle"]["broken_small"][2] is False and shipped["bottle"]["broken_large"][2] is True


# ----------------------------------------------------------------------------------------------------------------
# Determinism, crash safety


def test_same_seed_same_bank_other_seed_other_bank(
    tmp_path: Path, embeddings: Path, diffusion_bank: Path, normal: Path
) -> None:
    again = tmp_path / "again"
    generate(
        GenerateOptions(
            normal=str(normal), embeddings=str(embeddings), output=str(again), max_images=2, keep_outside=True, **FAST
        )
    )
    assert all_files(again) == all_files(diffusion_bank)
    other = tmp_path / "other"
    generate(
        GenerateOptions(normal=str(normal), embeddings=str(embeddings), output=str(other), max_images=2, seed=1, **FAST)
    )
    assert (
        all_files(other)["images/broken_large/000_broken_large_00.png"]
        != all_files(diffusion_bank)["images/broken_large/000_broken_large_00.png"]
    )


# A run of ``anogen generate`` that kills itself with SIGKILL right after its 5th record reached the manifest:
# a crash at a known point, not a race between a polling test and the run.
KILLED_AFTER_5_RECORDS = """
import os, signal, sys
from anomalib_anogen.cli import main
from anomalib_anogen.generate.bank_writer import BankWriter
append, appended = BankWriter._append, []
def append_then_die(self, *args):
    append(self, *args)
    appended.append(1)
    if len(appended) == 5:
        os.kill(os.getpid(), signal.SIGKILL)
BankWriter._append = append_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_then_resume_gives_the_uninterrupted_bank(
    tmp_path: Path, embeddings: Path, caplog, normal: Path
) -> None:
    options = {"max_images": 4, "steps": 3, "per_image": 2, "batch_size": 2}
    whole = tmp_path / "whole"
    generate(
        GenerateOptions(normal=str(normal), embeddings=str(embeddings), output=str(whole), progress=False, **options)
    )
    killed = tmp_path / "killed"
    args = ["generate", "--normal", str(normal), "--embeddings", str(embeddings), "--output", str(killed)]
    args += ["--progress", "false", *(item for key, value in options.items() for item in (f"--{key}", str(value)))]
    process = subprocess.run([sys.executable, "-c", KILLED_AFTER_5_RECORDS, *args], capture_output=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-3000:]
    assert len((killed / MANIFEST_NAME).read_bytes().splitlines()) == 5
    assert not json.loads((killed / SUMMARY_NAME).read_text())["complete"]
    holder = json.loads((killed / LOCK_NAME).read_text())["pid"]  # the killed run's lock stays behind
    assert cli_main([*args, "--resume", "true"]) == 0
    assert f"taking over the lock left by pid {holder}" in caplog.text
    assert all_files(killed) == all_files(whole)  # and the lock file is gone
    assert len(load_bank(killed)) == 24


# ----------------------------------------------------------------------------------------------------------------
# Readers of the bank


def test_bank_reader_and_anogen_generator_use_the_bank(diffusion_bank: Path, normal: Path) -> None:
    from anomalib_anogen.data.generators import AnoGenAnomalyGenerator

    records = load_bank(diffusion_bank)
    assert len(records) == 12 and {r.defect for r in records} == set(DEFECTS)
    # at the backbone's 64 px the sources are the normal images themselves (resized copies: test_mixed_sizes...)
    assert all(r.source.is_file() and r.source.parent == normal.resolve() for r in records)
    generator = AnoGenAnomalyGenerator(diffusion_bank, num_workers=0, bank_probability=1.0, clean_share=0.0)
    torch.manual_seed(0)
    synthetic = generator.generate(torch.rand(4, 3, 64, 64))
    assert synthetic.image.shape == (4, 3, 64, 64) and synthetic.mask.shape == (4, 1, 64, 64)
    assert synthetic.is_box.all() and (synthetic.mask.flatten(1).sum(1) > 0).all()


def test_anomalib_folder_datamodule_reads_images_with_masks(paste_bank: Path, normal: Path) -> None:
    from anomalib.data import Folder

    datamodule = Folder(
        name="bank",
        root=paste_bank,
        normal_dir=normal,
        abnormal_dir=[f"images/{d}" for d in DEFECTS],
        mask_dir=[f"masks/{d}" for d in DEFECTS],
        num_workers=0,
        eval_batch_size=4,
        val_split_mode="same_as_test",
    )
    datamodule.setup()
    samples = datamodule.test_data.samples
    abnormal = samples[samples.label_index == 1]
    assert len(abnormal) == len(manifest(paste_bank))
    for row in abnormal.itertuples():
        assert Path(row.mask_path).name == Path(row.image_path).stem + "_mask.png"
    item = datamodule.test_data[int(np.flatnonzero(samples.label_index.to_numpy() == 1)[0])]
    assert item.gt_mask is not None and item.gt_mask.any()


def test_contact_sheet_has_the_expected_size(paste_bank: Path, tmp_path: Path) -> None:
    sheet = show(ShowOptions(str(paste_bank), output=str(tmp_path / "sheet.png"), per_defect=2, cell=40))
    assert Image.open(sheet).size == (3 * 40, len(DEFECTS) * (TITLE + 2 * 40))
    assert cli_main(["show", str(paste_bank), "--output", str(tmp_path / "s.png"), "--per_defect", "9"]) == 0
    assert Image.open(tmp_path / "s.png").size == (3 * 128, len(DEFECTS) * (TITLE + 6 * 128))  # 6 per defect


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def run_bad(args: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anogen generate: error:"), err
    return err[0]


def paste_args(normal: Path, support: Path, output: Path, *extra: str) -> list[str]:
    base = ["generate", "--backend", "paste", "--support", str(support), "--normal", str(normal)]
    return [*base, "--output", str(output), "--max_images", "1", "--per_image", "1", "--progress", "false", *extra]


def write_priors(path: Path, table: dict) -> Path:
    path.write_text(json.dumps(table))
    return path


BOTTLE_PRIORS = {
    "broken_large": [[0.2, 0.25], [0.25, 0.8], True],
    "broken_small": [[0.15, 0.25], [0.15, 0.25], False],
    "contamination": [[0.2, 0.4], [0.2, 0.4], "True"],
}


def test_priors_naming_a_defect_without_embedding(tmp_path: Path, embeddings: Path, capsys, normal: Path) -> None:
    partial = tmp_path / "embeddings"
    partial.mkdir()
    for defect in DEFECTS[:2]:
        (partial / defect).symlink_to(embeddings / defect)
    output = tmp_path / "out"
    args = ["generate", "--normal", str(normal), "--embeddings", str(partial), "--output", str(output)]
    assert "contamination without an embedding" in run_bad(args, capsys)
    assert not output.exists()


def test_embedding_without_prior_and_unknown_defect_in_users_priors(
    tmp_path: Path, capsys, normal: Path, support: Path
) -> None:
    two = write_priors(tmp_path / "two.json", {k: v for k, v in BOTTLE_PRIORS.items() if k != "contamination"})
    assert "contamination have a support anomaly" in run_bad(
        paste_args(normal, support, tmp_path / "a", "--priors", str(two)), capsys
    )
    four = write_priors(tmp_path / "four.json", {**BOTTLE_PRIORS, "scratch": [[0.1, 0.2], [0.1, 0.2], False]})
    assert "scratch without a support anomaly" in run_bad(
        paste_args(normal, support, tmp_path / "b", "--priors", str(four)), capsys
    )
    bad = write_priors(tmp_path / "bad.json", {**BOTTLE_PRIORS, "broken_small": [[0.1, 0.2], [0.1, 0.2], "maybe"]})
    assert "rotate must be true or false" in run_bad(
        paste_args(normal, support, tmp_path / "c", "--priors", str(bad)), capsys
    )
    assert not any((tmp_path / name).exists() for name in "abc")


def test_box_prior_larger_than_the_image(tmp_path: Path, capsys, normal: Path, support: Path) -> None:
    big = write_priors(tmp_path / "big.json", {**BOTTLE_PRIORS, "broken_large": [[0.2, 1.5], [0.2, 0.3], True]})
    assert "larger than the image" in run_bad(
        paste_args(normal, support, tmp_path / "out", "--priors", str(big)), capsys
    )


def test_empty_normal_folder_and_non_image(tmp_path: Path, capsys, normal: Path, support: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = paste_args(normal, support, tmp_path / "out")
    args[args.index("--normal") + 1] = str(empty)
    assert "no normal images found" in run_bad(args, capsys)
    (empty / "notes.txt").write_text("x")
    assert "not an image file" in run_bad(args, capsys)


def test_mixed_sizes_are_resized_and_recorded(tmp_path: Path, caplog, normal: Path, support: Path) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    Image.open(normal / "000.png").save(folder / "a.png")
    Image.open(normal / "001.png").resize((50, 45)).save(folder / "b.png")
    output = tmp_path / "bank"
    generate(
        GenerateOptions(
            normal=str(folder), backend="paste", support=str(support), output=str(output), category="bottle", **FAST
        )
    )
    assert "1 of 2 normal images (50x45) are resized to 64x64 (1 not square: stretched" in caplog.text
    records = {r["source"]: r for r in manifest(output)}
    assert str((folder / "a.png").resolve()) in records and "normal/b.png" in records
    assert pixels(output / "normal" / "b.png").shape == (64, 64, 3)
    assert len(load_bank(output)) == 12


def test_steps_and_resolution_beyond_the_backbone_are_refused(
    tmp_path: Path, embeddings: Path, capsys, normal: Path
) -> None:
    output = tmp_path / "new" / "bank"
    base = ["generate", "--normal", str(normal), "--embeddings", str(embeddings), "--output", str(output)]
    base += ["--max_images", "1", "--progress", "false"]
    line = run_bad([*base, "--steps", "5000"], capsys)
    assert "--steps must be an integer in [1, 1000] (the training timesteps of backbone tiny; got 5000)" in line
    line = run_bad([*base, "--resolution", "60"], capsys)
    assert "--resolution must be a multiple of 8, the VAE factor of backbone tiny (got 60)" in line
    assert not (tmp_path / "new").exists()  # the lock's folder is taken away again


def test_worker_ranks_neither_lock_nor_judge_the_bank(
    monkeypatch: pytest.MonkeyPatch, paste_bank: Path, normal: Path, support: Path
) -> None:
    """Rank > 0 processes of a multi-GPU run start generate again while rank 0 holds the lock.

    By then rank 0 has written bank.json: the workers go on to their chunks instead of refusing the bank or the lock.
    """
    import anomalib_anogen.generate.command as module
    from anomalib_anogen.generate.bank_writer import BankLock

    reached = []
    monkeypatch.setattr(module, "run", lambda job, options: reached.append(job.mode))  # the mode handed to the run
    options = {"backend": "paste", "support": str(support), "output": str(paste_bank), "max_images": 3, **FAST}
    monkeypatch.setenv("LOCAL_RANK", "1")
    with BankLock(paste_bank):  # rank 0's
        generate(GenerateOptions(normal=str(normal), **options))
    assert reached == ["worker"] and not (paste_bank / LOCK_NAME).exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(AnogenInputError, match="already holds a complete bank"):
        generate(GenerateOptions(normal=str(normal), **options))


def test_output_with_another_bank_is_refused_unless_overwrite(
    tmp_path: Path, capsys, normal: Path, support: Path
) -> None:
    output = tmp_path / "bank"
    assert cli_main(paste_args(normal, support, output)) == 0
    before = all_files(output)
    assert "other settings (seed differ)" in run_bad(paste_args(normal, support, output, "--seed", "5"), capsys)
    assert "other settings (seed differ)" in run_bad(
        paste_args(normal, support, output, "--seed", "5", "--resume", "true"), capsys
    )
    assert "--resume to continue" in run_bad(paste_args(normal, support, output), capsys)
    assert all_files(output) == before  # nothing touched
    assert (
        cli_main(paste_args(normal, support, output, "--resume", "true")) == 0
    )  # complete, same settings: nothing to do
    assert all_files(output) == before
    assert cli_main(paste_args(normal, support, output, "--seed", "5", "--overwrite", "true")) == 0
    assert json.loads((output / SUMMARY_NAME).read_text())["settings"]["seed"] == 5
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("x")
    assert "is not an anogen bank" in run_bad(paste_args(normal, support, stranger, "--overwrite", "true"), capsys)
    assert (stranger / "thesis.tex").is_file()


def test_cli_help_lists_the_options(tmp_path: Path) -> None:
    from .helpers.cli import run_cli

    result = run_cli(["anogen", "generate", "--help"], cwd=tmp_path)
    assert result.returncode == 0 and "--keep_outside" in result.stdout and "--batch_size" in result.stdout


@needs_shared_bottle()
@needs_shared_support()
def test_bottle_config_runs_with_the_paste_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    config = REPO / "configs" / "anogen" / "generate_bottle.yaml"
    output = tmp_path / "bank"
    args = ["generate", "--config", str(config), "--backend", "paste", "--output", str(output)]
    assert cli_main([*args, "--max_images", "1", "--per_image", "1", "--progress", "false"]) == 0
    assert len(load_bank(output)) == len(DEFECTS)


# The keys of bank.json's settings before GenerateSettings existed (a dict built in generate()); a bank made
# without --priors auto and --placement must keep exactly these, or banks made before would not --resume.
OLD_COMMON_KEYS = {
    "backend", "normal", "sources", "sources_sha256", "defects", "priors", "foreground", "min_foreground",
    "max_tries", "per_image", "samples_per_box", "resolution", "seed", "keep_outside", "feather",
}  # fmt: skip
OLD_DIFFUSION_KEYS = {
    "backbone", "backbone_sha256", "embeddings", "steps", "guidance", "eta", "batch_size", "precision",
}  # fmt: skip
# The paste backend's pixels changed in version 2 (boxes of the cut-out's shape, brightness-only jitter): its banks
# record paste_version, so a paste bank made before is refused by --resume (naming it) instead of mixing the two.
OLD_PASTE_KEYS = {"support", "blend", "paste_version"}


def test_typed_settings_write_the_settings_of_older_banks(paste_bank: Path, diffusion_bank: Path) -> None:
    from anomalib_anogen.generate.bank_writer import settings_sha256
    from anomalib_anogen.generate.settings import GenerateSettings

    for bank, extra in ((paste_bank, OLD_PASTE_KEYS), (diffusion_bank, OLD_DIFFUSION_KEYS)):
        summary = json.loads((bank / "bank.json").read_text())
        assert set(summary["settings"]) == OLD_COMMON_KEYS | extra
        typed = GenerateSettings(**summary["settings"])
        assert typed.to_json() == summary["settings"]
        assert settings_sha256(typed.to_json()) == summary["settings_sha256"]
