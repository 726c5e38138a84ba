"""When the machine fails, or a file lies (issue #23): one clear line, and a bank that never lies.

A full disk (simulated: ``tests/helpers/disk.py``), huge or degenerate inputs, non-finite or unchanged output,
a tampered bank, a link in a bank, Ctrl-C, a token the tokenizer knows, space-separated lists, the
``pretrained_weights`` of DeSTSeg and anomalib's ``ckpt_path``. Toy data, the paste backend and the tiny backbone:
no shared data and no weights; seconds each, except the ones marked slow (anomalib's CLI).
"""

import json
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_anogen.arguments import ModelArgumentError, checkpoint_error, cli_error_hook
from anomalib_anogen.cli import build_parser, join_list_values
from anomalib_anogen.cli import main as cli_main
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.data.bank import MANIFEST_NAME, SUMMARY_NAME, BankError, load_bank
from anomalib_anogen.generate.bank_writer import LOCK_NAME
from anomalib_anogen.generate.command import generate
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.output_checks import OutputCheckError, check_output
from anomalib_anogen.generate.settings import GenerateSettings

from .helpers.bank_factory import make_bank
from .helpers.cli import error_line, run_cli
from .helpers.data import all_files
from .helpers.disk import FullDisk

FAULT = 74  # exit code of a machine fault (EX_IOERR)


def paste_args(toy_inputs: dict[str, str], output: Path, *extra: str) -> list[str]:
    """``anogen generate`` on 2 toy images x 3 defects x 2 records with the paste backend (12 records)."""
    args = ["generate", "--backend", "paste", "--support", toy_inputs["support"], "--normal", toy_inputs["normal"]]
    args += ["--priors", toy_inputs["priors"], "--output", str(output), "--max_images", "2", "--per_image", "2"]
    return [*args, "--progress", "false", *extra]


def paste_bank(toy_inputs: dict[str, str], output: Path, **options: object) -> Path:
    inputs = {key: toy_inputs[key] for key in ("normal", "support", "priors")}
    settings = {"max_images": 2, "per_image": 2, "progress": False, **options}
    return generate(GenerateOptions(backend="paste", output=str(output), **inputs, **settings))


def png_header(path: Path, width: int, height: int) -> Path:
    """A valid PNG that claims ``width`` x ``height`` grey pixels: what its header says is all a check may read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def no_work(*args: object, **kwargs: object) -> None:
    msg = "the work started before the input was refused"
    raise AssertionError(msg)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random 'learned' embeddings for the tiny backbone, one per toy defect, in anogen learn's format."""
    from anomalib_anogen.core.backbones import build_tiny
    from anomalib_anogen.data.toy import DEFECT_TYPES
    from anomalib_anogen.learn.embeddings import write_embedding_dir

    folder = tmp_path_factory.mktemp("embeddings")
    described = build_tiny(0).describe()
    for index, defect in enumerate(DEFECT_TYPES):
        vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(index))
        write_embedding_dir(folder, defect, f"<anogen-{defect}>", vector, {"backbone": described}, overwrite=False)
    return folder


def diffusion_args(toy_inputs: dict[str, str], embeddings: Path, output: Path, *extra: str) -> list[str]:
    """``anogen generate`` with the tiny backbone: 1 toy image x 3 defects x 2 records, 2 DDIM steps, at 48 px."""
    args = ["generate", "--normal", toy_inputs["normal"], "--embeddings", str(embeddings), "--priors"]
    args += [toy_inputs["priors"], "--output", str(output), "--max_images", "1", "--per_image", "2", "--steps", "2"]
    return [*args, "--resolution", "48", "--batch_size", "2", "--progress", "false", *extra]


# ----------------------------------------------------------------------------------------------------------------
# A bank is not trusted because its files exist


@pytest.fixture
def toy_bank(tmp_path: Path, toy_root: Path) -> tuple[Path, list[dict]]:
    """A small bank made by the test (relative sources in normal/), with its records."""
    normals = sorted((toy_root / "toy_bottle" / "train" / "good").glob("*.png"))[:2]
    bank = tmp_path / "bank"
    return bank, make_bank(bank, normals, size=48)


def write_manifest(bank: Path, records: list[dict]) -> None:
    (bank / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_record_id_that_is_a_path_is_refused_before_anything_outside_is_touched(
    toy_bank: tuple[Path, list[dict]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_anogen.data.generators import build_generator

    bank, records = toy_bank
    secret = tmp_path / "outside" / "secret.png"  # where images/<defect>/../../../outside/secret.png points
    secret.parent.mkdir()
    shutil.copy(bank / "normal" / "000.png", secret)
    write_manifest(bank, [{**records[0], "id": "../../../outside/secret"}, *records[1:]])
    touched: list[str] = []
    original_is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: touched.append(str(self)) or original_is_file(self))
    with pytest.raises(BankError, match=r"line 1: id '\.\./\.\./\.\./outside/secret' is not a plain name") as error:
        build_generator("anogen", bank_dir=bank)
    assert not any("outside" in path for path in touched)
    assert "\n" not in str(error.value)
    write_manifest(bank, [{**records[0], "defect": ".."}])
    with pytest.raises(BankError, match=r"defect '\.\.' is not a plain name"):
        load_bank(bank)


def test_a_source_outside_the_bank_and_its_normal_folder_is_refused(
    toy_bank: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    bank, records = toy_bank
    passwd = tmp_path / "passwd"  # a file outside the bank that is no image, as /etc/passwd
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    write_manifest(bank, [records[0], {**records[1], "source": str(passwd)}])
    with pytest.raises(BankError, match=r"line 2 \(id dent_000\) names a source image outside the bank: .*passwd"):
        load_bank(bank)
    write_manifest(bank, [{**records[0], "source": "../passwd"}])  # relative, but out of the bank
    with pytest.raises(BankError, match=r"names a source image outside the bank"):
        load_bank(bank)


def test_a_generated_bank_reads_its_normal_folder_but_nothing_through_a_link(
    toy_inputs: dict[str, str], tmp_path: Path
) -> None:
    bank = paste_bank(toy_inputs, tmp_path / "bank")
    records = load_bank(bank)  # absolute sources in the normal folder that bank.json records
    assert len(records) == 12 and all(r.source.is_relative_to(Path(toy_inputs["normal"]).resolve()) for r in records)
    outside = tmp_path / "elsewhere"
    shutil.move(bank / "masks", outside)
    (bank / "masks").symlink_to(outside)
    with pytest.raises(BankError, match=r"names a mask outside the bank: .* never through a link"):
        load_bank(bank)


def test_a_truncated_or_huge_bank_file_is_refused_when_the_generator_is_built_naming_it(
    toy_bank: tuple[Path, list[dict]],
) -> None:
    from anomalib_anogen.data.generators import build_generator

    bank, records = toy_bank
    image = bank / "images" / records[3]["defect"] / f"{records[3]['id']}.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(BankError, match=rf"line 4 \(id {records[3]['id']}\) names an image that cannot be decoded: "):
        build_generator("anogen", bank_dir=bank)
    make_bank(bank, [bank / "normal" / "000.png", bank / "normal" / "001.png"], size=48)  # whole again
    mask = bank / "masks" / records[1]["defect"] / f"{records[1]['id']}_mask.png"
    png_header(mask, 20000, 20000)
    with pytest.raises(BankError, match=r"names a mask that cannot be decoded: .*400000000 pixels, more than"):
        load_bank(bank)
    png_header(mask, 9000, 9000)
    with pytest.raises(BankError, match=r"9000 x 9000 = 81000000 pixels, more than an input image may have"):
        load_bank(bank)


def test_a_bank_file_that_breaks_during_training_is_one_line_naming_it(toy_bank: tuple[Path, list[dict]]) -> None:
    from anomalib_anogen.data.generators.anogen import AnoGenAnomalyGenerator, _worker_message

    bank, _ = toy_bank
    generator = AnoGenAnomalyGenerator(bank, bank_probability=1.0, num_workers=0, prefetch=4)
    for record in generator.records:  # changed after the check when training started
        record.image.write_bytes(b"")
    with pytest.raises(BankError, match=r"images/.*\.png: this bank file cannot be read during training") as error:
        generator.draw(2, (32, 32))
    assert "\n" not in str(error.value)
    worker = BankError(
        "Caught BankError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nanomalib_anogen.data.bank.BankError: bank_dir: x.png: broken\n'
    )
    assert _worker_message(worker) == "bank_dir: x.png: broken"


# ----------------------------------------------------------------------------------------------------------------
# DeSTSeg's pretrained_weights and anomalib's ckpt_path


class _RunsCode:
    """Unpickled, it would create the file ``marker``: what a malicious pickle does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_pretrained_weights_that_hold_a_model_or_code_are_one_line_and_never_run(tmp_path: Path) -> None:
    from anomalib_anogen.models.image.destseg.torch_model import load_teacher_state

    marker = tmp_path / "ran"
    torch.save(_RunsCode(marker), tmp_path / "code.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "model.pth").read_bytes()[:200])
    expected = {
        "code.pth": "refused '{}': it holds a reference to io.open, which a state dict never holds",
        "model.pth": "it holds a whole model (an object of class torch.nn.modules.linear.Linear, as torch.save(model)",
        "truncated.pth": "is not a torch file (it is a truncated or damaged zip archive",
    }
    for name, text in expected.items():
        with pytest.raises(ModelArgumentError) as error:
            load_teacher_state(tmp_path / name, {})
        message = str(error.value)
        assert text.format(tmp_path / name) in message, message
        assert "\n" not in message and "weights_only" not in message
        assert "torch.save(model.state_dict(), 'resnet18.pth')" in message
    assert not marker.exists()


def _reading(path: object, error: BaseException) -> BaseException:
    """``error`` as Lightning's ``load_checkpoint(path)`` raises it (the hook finds the path in its frame)."""

    def load_checkpoint(path: object) -> None:
        raise error

    try:
        load_checkpoint(path)
    except BaseException as raised:
        return raised
    raise AssertionError


def test_checkpoint_errors_with_the_plugins_models_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from anomalib_anogen import arguments

    passed_on: list[BaseException] = []
    hook = cli_error_hook(lambda kind, error, traceback: passed_on.append(error))
    missing = _reading(str(tmp_path / "missing.ckpt"), FileNotFoundError("Checkpoint file not found"))
    monkeypatch.setattr(arguments._PluginModels, "built", False)
    hook(type(missing), missing, missing.__traceback__)
    assert passed_on == [missing]  # anomalib's own models: anomalib's own traceback
    monkeypatch.setattr(arguments._PluginModels, "built", True)
    hook(type(missing), missing, missing.__traceback__)
    assert capsys.readouterr().err == f"error: ckpt_path: checkpoint file not found: {tmp_path / 'missing.ckpt'}; " + (
        "pass the model.ckpt that `anomalib train` wrote "
        "(results/<model>/<dataset>/<category>/latest/weights/lightning/model.ckpt), or train again\n"
    )
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, tmp_path / "whole.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:3000])
    cut = _reading(tmp_path / "cut.ckpt", RuntimeError("PytorchStreamReader failed reading zip archive"))
    assert "cut.ckpt is not a readable checkpoint (it is a truncated or damaged zip archive" in str(
        checkpoint_error(cut, cut.__traceback__)
    )
    folder = _reading(tmp_path, IsADirectoryError(21, "Is a directory"))
    assert f"ckpt_path: {tmp_path} is a folder, not a checkpoint file" in str(
        checkpoint_error(folder, folder.__traceback__)
    )
    other = ValueError("not about a checkpoint")
    assert checkpoint_error(other, other.__traceback__) is None


@pytest.mark.slow  # anomalib's CLI, three times
def test_anomalib_cli_with_a_plugin_model_says_one_line_for_bad_weights_and_checkpoints(
    tmp_path: Path, toy_root: Path
) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, tmp_path / "whole.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:3000])
    data = ["--data", "MVTecAD", "--data.root", str(toy_root), "--data.category", "toy_bottle"]
    fit = ["anomalib", "fit", "--model", "Destseg", "--model.pretrained_weights", "model.pth", *data]
    images = str(toy_root / "toy_bottle" / "test")
    cases = {
        "pretrained_weights: refused 'model.pth': it holds a whole model": fit,
        "ckpt_path: checkpoint file not found: ": ["anomalib", "predict", "--model", "DraemWeak", "--ckpt_path",
                                                   "missing.ckpt", "--data", images, "--default_root_dir", "p"],
        "cut.ckpt is not a readable checkpoint (it is a truncated or damaged zip archive": [
            "anomalib", "predict", "--model", "DraemWeak", "--ckpt_path", "cut.ckpt", "--data", images,
            "--default_root_dir", "p"],
    }  # fmt: skip
    for expected, command in cases.items():
        result = run_cli(command, tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "Traceback" not in output and "weights_only=False" not in output, output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# A full disk


def test_generate_on_a_full_disk_is_one_line_and_leaves_no_folder(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "runs" / "bank"
    FullDisk(monkeypatch, tmp_path, room=0)
    line = error_line(paste_args(toy_inputs, output), capsys, code=FAULT)
    assert line == (
        f"anogen generate: error: {output / LOCK_NAME}: cannot write the lock file (No space left on device); "
        "free space, then run the same command again"
    )
    assert sorted(tmp_path.iterdir()) == []


def test_generate_with_room_for_the_lock_only_then_resume_gives_the_uninterrupted_bank(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = paste_bank(toy_inputs, tmp_path / "whole")
    output = tmp_path / "bank"
    disk = FullDisk(monkeypatch, output.parent, room=0, exempt=(LOCK_NAME,))
    line = error_line(paste_args(toy_inputs, output), capsys, code=FAULT)
    assert f"{output / SUMMARY_NAME}: cannot write the bank file (No space left on device)" in line
    assert "run the same command with --resume true" in line
    assert not output.exists()  # nothing half-written: no manifest without settings
    disk.free()
    assert cli_main([*paste_args(toy_inputs, output), "--resume", "true"]) == 0
    assert all_files(output) == all_files(whole)


@pytest.mark.parametrize("writers", [0, 2])
def test_a_disk_that_fills_up_mid_run_leaves_a_bank_that_resumes_byte_identical(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, writers: int
) -> None:
    whole = paste_bank(toy_inputs, tmp_path / "whole")
    size = sum(len(data) for data in all_files(whole).values())
    output = tmp_path / "bank"
    args = paste_args(toy_inputs, output, "--writers", str(writers))
    with monkeypatch.context() as patch:
        disk = FullDisk(patch, output.parent, room=size // 2)  # full half-way, mid-file
        line = error_line(args, capsys, code=FAULT)
    assert disk.refused and "(No space left on device)" in line and "--resume true" in line
    assert not (output / LOCK_NAME).exists()
    kept = load_bank(output)  # what it recorded is whole and readable
    assert 0 < len(kept) < 12 and not json.loads((output / SUMMARY_NAME).read_text())["complete"]
    assert cli_main([*args, "--resume", "true"]) == 0
    assert all_files(output) == all_files(whole)


def _support(folder: Path, defects: tuple[str, ...] = ("crack", "stain")) -> Path:
    rng = np.random.default_rng(0)
    for defect in defects:
        (folder / defect).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / defect / "000.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        Image.fromarray(mask).save(folder / defect / "000_mask.png")
    return folder


def _no_hidden(folder: Path) -> bool:
    return not any(p.name.startswith(".") for p in folder.rglob("*"))


def test_learn_on_a_full_disk_keeps_no_partial_embedding_and_a_rerun_finishes(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    support = _support(tmp_path / "support")
    learn = ["learn", "--support", str(support), "--backbone", "tiny", "--steps", "2", "--batch_size", "1"]
    learn += ["--progress", "false"]
    assert cli_main([*learn, "--output", str(tmp_path / "first")]) == 0
    room = sum(p.stat().st_size for p in (tmp_path / "first" / "crack").iterdir()) + 300  # crack fits, stain not
    output = tmp_path / "out"
    with monkeypatch.context() as patch:
        FullDisk(patch, tmp_path / "out", room=room)
        line = error_line([*learn, "--output", str(output)], capsys, command="learn", code=FAULT)
    assert line.startswith(f"anogen learn: error: {output / 'stain'}/")
    assert (
        "cannot write the embedding of stain (nothing of it was kept) (No space left on device); free space, then "
        "run the same command again to learn the others (the defects finished before are kept)"
    ) in line
    assert sorted(p.name for p in output.iterdir()) == ["crack"] and _no_hidden(output)
    assert cli_main([*learn, "--output", str(output)]) == 0
    assert sorted(p.name for p in output.iterdir()) == ["crack", "stain"] and _no_hidden(output)


def test_learn_and_import_refuse_to_start_without_room_for_their_embeddings(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("anomalib_anogen.core.files.free_bytes", lambda folder: 1000)
    monkeypatch.setattr("anomalib_anogen.learn.command._learn_on_rank", no_work)
    output = tmp_path / "out"
    learn = ["learn", "--support", str(_support(tmp_path / "support")), "--backbone", "tiny", "--output", str(output)]
    line = error_line(learn, capsys, command="learn", code=FAULT)
    assert line == (
        f"anogen learn: error: {output}: learning 2 defect(s) needs about 512 KiB but its file system has 1000 B "
        "free; free space, then run the same command again"
    )
    released = str(_released(tmp_path / "bottle_crack.pt"))
    line = error_line(
        ["import-embedding", "--input", released, "--output", str(output)], capsys, "import-embedding", FAULT
    )
    assert "importing 1 embedding(s) needs about 256 KiB but its file system has 1000 B free" in line
    assert not output.exists()


def _released(path: Path) -> Path:
    """A file in the AnoGen authors' released format (one token ``*``, 1280 wide)."""
    param = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(1, 1280))})
    torch.save({"string_to_token": {"*": torch.tensor(1008)}, "string_to_param": param}, path)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_import_embedding_on_a_full_disk_keeps_no_partial_embedding(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [str(_released(tmp_path / f"bottle_{name}.pt")) for name in ("a_crack", "b_stain")]
    output = tmp_path / "out"
    args = ["import-embedding", "--input", *files, "--output", str(output), "--category", "bottle"]  # a b: a list
    with monkeypatch.context() as patch:
        FullDisk(patch, output, room=0)
        line = error_line(args, capsys, command="import-embedding", code=FAULT)
    assert "a_crack/learned_embeds.safetensors: cannot write the embedding of a_crack" in line
    assert not output.exists()
    assert cli_main([*args[:-4], "--output", str(tmp_path / "first"), "--category", "bottle"]) == 0
    room = sum(p.stat().st_size for p in (tmp_path / "first" / "a_crack").iterdir()) + 300  # the first fits
    with monkeypatch.context() as patch:
        disk = FullDisk(patch, output, room=room)
        line = error_line(args, capsys, command="import-embedding", code=FAULT)
    assert disk.refused and "cannot write the embedding of b_stain" in line
    assert line.endswith("free space, then run the same command with --overwrite true")
    assert sorted(p.name for p in output.iterdir()) == ["a_crack"] and _no_hidden(output)
    assert cli_main([*args, "--overwrite", "true"]) == 0
    assert sorted(p.name for p in output.iterdir()) == ["a_crack", "b_stain"]


# ----------------------------------------------------------------------------------------------------------------
# Non-finite, flat or unchanged output never reaches the bank


def test_settings_whose_extremes_make_nonsense_have_upper_bounds(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("anomalib_anogen.generate.inputs.list_normals", no_work)
    output = tmp_path / "bank"
    line = error_line(paste_args(toy_inputs, output, "--guidance", "1e30"), capsys)
    assert "--guidance must be a number in [1, 100] (1 turns guidance off, the paper uses 10; above 100 every" in line
    line = error_line(paste_args(toy_inputs, output, "--keep_outside", "true", "--feather", "1e9"), capsys)
    assert "--feather must be a number in [0, 2048] (pixels inside the box edge" in line and "half the" in line
    line = error_line(paste_args(toy_inputs, output, "--batch_size", "100000"), capsys)
    assert "--batch_size must be an integer in [1, 1024]" in line
    monkeypatch.undo()
    line = error_line(paste_args(toy_inputs, output, "--feather", "30"), capsys)  # the toy images are 48 px
    assert "--feather must be a number in [0, 24]" in line
    assert not output.exists()


def _settings(**changes: object) -> GenerateSettings:
    common = {"backend": "diffusion", "normal": "n", "sources": 1, "sources_sha256": [], "defects": ["d"]}
    common |= {"priors": {}, "foreground": "all", "min_foreground": 0.0, "max_tries": 1, "per_image": 1}
    common |= {"samples_per_box": 1, "resolution": 32, "seed": 0, "keep_outside": False, "feather": 1.0}
    common |= {"steps": 50, "guidance": 10.0, "precision": "32", "blend": "feather"}
    return GenerateSettings(**{**common, **changes})


def test_output_checks_name_what_is_wrong_and_the_setting() -> None:
    normal = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    changed = normal.copy()
    changed[mask > 0] = 255 - changed[mask > 0]
    check_output("r", changed, mask, normal, _settings())  # a defect: passes
    flat = r"record r: the generated image is one flat colour \(grey level 0\); the diffusion sampler diverged with "
    with pytest.raises(OutputCheckError, match=flat + r"--guidance 10 \(the paper uses 10\), --steps 50"):
        check_output("r", np.zeros_like(normal), mask, normal, _settings())
    feather = r"--keep_outside true with --feather 40 px blends the defect in at 0\.095 of its strength at most "
    with pytest.raises(OutputCheckError, match=feather + r"\(the box is 4 px deep\): lower --feather"):
        check_output("r", normal.copy(), mask, normal, _settings(keep_outside=True, feather=40.0))
    vanished = r"the pasted support anomaly \(--blend poisson\) vanished in a box of 64 pixels: make the boxes larger "
    with pytest.raises(OutputCheckError, match=vanished + r"\(--resolution, now 32; --priors or --priors_margin\)"):
        check_output("r", normal.copy(), mask, normal, _settings(backend="paste", blend="poisson"))


def test_non_finite_sampler_output_stops_the_run_naming_guidance_and_precision(
    toy_inputs: dict[str, str], embeddings: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_anogen.generate.backends.diffusion import BlendedSampler

    decode, calls = BlendedSampler.decode_floats, []

    def nan_in_the_second_chunk(self: BlendedSampler, latents: torch.Tensor) -> torch.Tensor:
        pixels = decode(self, latents)
        calls.append(1)
        return pixels * float("nan") if len(calls) == 2 else pixels

    monkeypatch.setattr(BlendedSampler, "decode_floats", nan_in_the_second_chunk)
    output = tmp_path / "bank"
    line = error_line(diffusion_args(toy_inputs, embeddings, output, "--writers", "0"), capsys)
    assert "the diffusion sampler produced NaN/Inf values, which would be written as a black image; with " in line
    assert "--guidance 10 (the paper uses 10), --steps 2, --precision 32: lower --guidance" in line
    records = [json.loads(text) for text in (output / MANIFEST_NAME).read_text().splitlines()]
    assert len(records) == 2  # the first chunk, nothing of the second
    assert all(f"record {record['id']}:" not in line for record in records)


def test_an_unchanged_or_flat_image_stops_the_run(
    toy_inputs: dict[str, str], embeddings: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_anogen.generate.backends import diffusion, paste

    with monkeypatch.context() as patch:  # what --feather 1e9 did: a weight of ~1e-9 everywhere in the box
        patch.setattr(diffusion, "feather_alpha", lambda mask, width: (mask > 0).astype(np.float32) * 1e-9)
        args = diffusion_args(toy_inputs, embeddings, tmp_path / "a", "--keep_outside", "true", "--feather", "24")
        line = error_line(args, capsys)
    assert "the generated image is unchanged inside its box, which its mask marks as anomaly; --keep_outside " in line
    assert "with --feather 24 px blends the defect in at 0." in line and "lower --feather" in line
    with monkeypatch.context() as patch:
        patch.setattr(paste, "paste", lambda normal, box, pixels, cutout, rng, blend: np.zeros_like(normal))
        line = error_line(paste_args(toy_inputs, tmp_path / "b"), capsys)
    assert "the generated image is one flat colour (grey level 0); check the normal image and the support set" in line
    assert (tmp_path / "b" / MANIFEST_NAME).read_text() == ""  # nothing recorded


# ----------------------------------------------------------------------------------------------------------------
# Work that cannot fit is refused before it starts


def test_too_many_records_are_refused_before_any_work(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "bank"
    with monkeypatch.context() as patch:
        patch.setattr("anomalib_anogen.generate.inputs.list_normals", no_work)
        line = error_line(paste_args(toy_inputs, output, "--per_image", "1000000000"), capsys)
    assert (
        "--per_image must be an integer in [1, 1000000] (a bank holds at most 1000000 records; got 1000000000)" in line
    )
    monkeypatch.setattr("anomalib_anogen.generate.command.work_list", no_work)
    line = error_line(paste_args(toy_inputs, output, "--per_image", "400000"), capsys)
    assert "2 normal images x 3 defect types x --per_image 400000 = 2400000 records, more than a bank holds" in line
    assert not output.exists()


def test_huge_input_images_are_refused_from_their_header(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_anogen.learn.command import learn
    from anomalib_anogen.learn.options import LearnOptions

    normal = tmp_path / "normal"
    shutil.copytree(toy_inputs["normal"], normal)
    png_header(normal / "000_huge.png", 20000, 20000)  # second by name: within --max_images 2
    args = paste_args(toy_inputs, tmp_path / "bank")
    args[args.index("--normal") + 1] = str(normal)
    line = error_line(args, capsys)
    assert line.endswith(
        f"{normal / '000_huge.png'}: 400000000 pixels, more than an input image may have (67108864, 8192 x 8192); "
        "downscale or crop it"
    )
    support = _support(tmp_path / "support", ("crack",))
    png_header(support / "crack" / "001.png", 9000, 9000)
    shutil.copy(support / "crack" / "000_mask.png", support / "crack" / "001_mask.png")
    monkeypatch.setattr("anomalib_anogen.learn.command._learn_on_rank", no_work)
    with pytest.raises(AnogenInputError, match=r"001\.png: 9000 x 9000 = 81000000 pixels, more than an input image"):
        learn(LearnOptions(support=str(support), output=str(tmp_path / "out"), backbone="tiny"))


def test_a_bank_that_cannot_fit_the_free_space_is_refused_with_both_numbers(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_anogen.generate import capacity

    output = tmp_path / "bank"
    monkeypatch.setattr(capacity, "free_bytes", lambda folder: 20_000)
    line = error_line(paste_args(toy_inputs, output), capsys, code=FAULT)
    assert f"{output}: the bank needs about " in line and "(12 records x " in line
    assert (
        "estimated from the first normal image as a PNG at 48 px, plus 25%) but its file system has 19.5 KiB free"
        in line
    )
    assert not output.exists()
    monkeypatch.setattr(capacity, "free_bytes", lambda folder: 10**9)
    assert cli_main(paste_args(toy_inputs, output)) == 0


def test_out_of_memory_is_one_line(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr("anomalib_anogen.generate.command.read_inputs", no_memory)
    line = error_line(paste_args(toy_inputs, tmp_path / "bank"), capsys, code=FAULT)
    assert line.startswith("anogen generate: error: out of memory; make the work smaller (--batch_size, --resolution)")
    assert not (tmp_path / "bank").exists()


# ----------------------------------------------------------------------------------------------------------------
# Links in a bank, Ctrl-C


def test_overwrite_removes_a_link_in_the_bank_never_its_target(
    toy_inputs: dict[str, str], tmp_path: Path, capsys
) -> None:
    output = paste_bank(toy_inputs, tmp_path / "bank")
    outside = tmp_path / "outside"
    shutil.move(output / "images", outside)
    (output / "images").symlink_to(outside)
    before = all_files(outside)
    line = error_line([*paste_args(toy_inputs, output), "--resume", "true"], capsys)
    assert f"{output / 'images'}: a symbolic link in the bank (to {outside}); a bank's files and folders" in line
    assert "pass --overwrite true to replace the link by a new folder (its target is left untouched)" in line
    assert cli_main([*paste_args(toy_inputs, output), "--overwrite", "true"]) == 0
    assert all_files(outside) == before and not (output / "images").is_symlink()
    assert len(load_bank(output)) == 12


INTERRUPTED_AFTER_5_RECORDS = """
import os, signal, sys
from anomalib_anogen.cli import main
from anomalib_anogen.generate.bank_writer import BankWriter
# as in a terminal: a test run started in the background inherits SIGINT ignored, and Python then keeps it ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
append, appended = BankWriter._append, []
def append_then_ctrl_c(self, *args):
    append(self, *args)
    appended.append(1)
    if len(appended) == 5:
        os.kill(os.getpid(), signal.SIGINT)
BankWriter._append = append_then_ctrl_c
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_says_how_to_resume_and_the_resume_completes_the_bank(
    toy_inputs: dict[str, str], tmp_path: Path
) -> None:
    whole = paste_bank(toy_inputs, tmp_path / "whole", writers=0)
    output = tmp_path / "bank"
    args = paste_args(toy_inputs, output, "--writers", "0")
    process = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_AFTER_5_RECORDS, *args], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 128 + signal.SIGINT, process.stderr[-3000:]
    assert process.stderr.strip().splitlines()[-1] == (
        "anogen generate: interrupted (Ctrl-C); the records written so far are kept; run the same command with "
        "--resume true to continue"
    )
    assert "Traceback" not in process.stderr and not (output / LOCK_NAME).exists()
    assert cli_main([*args, "--resume", "true"]) == 0
    assert all_files(output) == all_files(whole)


# ----------------------------------------------------------------------------------------------------------------
# A token the tokenizer knows; lists as most CLIs take them


def test_a_token_that_is_already_a_word_of_the_vocabulary_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_anogen.learn.command import learn
    from anomalib_anogen.learn.options import LearnOptions

    monkeypatch.setattr("anomalib_anogen.learn.textual_inversion.learn_embedding", no_work)
    support = _support(tmp_path / "support", ("crack",))
    for token in ("defect", "Defect"):
        with pytest.raises(AnogenInputError, match=r"--token '[dD]efect' already exists in the backbone's vocabulary "
                           r"\(read as 'defect</w>'\); pick a new word"):  # fmt: skip
            learn(LearnOptions(support=str(support), output=str(tmp_path / "out"), backbone="tiny", token=token))
    assert not (tmp_path / "out").exists()


def test_space_separated_lists_are_read_as_lists(toy_inputs: dict[str, str], tmp_path: Path) -> None:
    assert join_list_values(["generate", "--defects", "blob", "spot", "--seed", "1"]) == [
        "generate", "--defects", '["blob", "spot"]', "--seed", "1"]  # fmt: skip
    assert join_list_values(["learn", "--defects", "crack"])[2] == '["crack"]'
    assert join_list_values(["learn", "--defects", "[a, b]"])[2] == "[a, b]"
    assert join_list_values(["import-embedding", "--input", "a.pt"])[2] == "a.pt"  # also takes one string
    parser = build_parser()
    config = parser.parse_args(join_list_values(["learn", "--support", "s", "--output", "o", "--backbone", "tiny",
                                                 "--defects", "broken_large", "broken_small"]))  # fmt: skip
    assert config.learn.defects == ["broken_large", "broken_small"]
    output = tmp_path / "bank"
    assert cli_main(paste_args(toy_inputs, output, "--defects", "blob", "spot")) == 0
    assert sorted(p.name for p in (output / "images").iterdir()) == ["blob", "spot"]
