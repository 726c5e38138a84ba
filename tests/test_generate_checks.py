"""``anogen generate`` / ``anogen show``: fail early and lose nothing.

A writable output, one writer per bank (the lock), numbers in range, a note on unfinished banks, one mask-resize
warning. Toy data and the paste backend: no shared data and no weights needed, seconds each.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_anogen.cli import main as cli_main
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.data.bank import MANIFEST_NAME, SUMMARY_NAME, load_bank
from anomalib_anogen.data.toy import DEFECT_TYPES
from anomalib_anogen.generate.bank_writer import LOCK_NAME
from anomalib_anogen.generate.command import generate
from anomalib_anogen.generate.options import GenerateOptions
from anomalib_anogen.generate.show import INCOMPLETE_COLOUR, TITLE, ShowOptions, show

from .helpers.cli import error_line
from .helpers.data import all_files, write_support


def toy_args(toy_inputs: dict[str, str], output: Path, *extra: str) -> list[str]:
    """``anogen generate`` on 2 toy images x 3 defects x 1 record with the paste backend."""
    args = ["generate", "--backend", "paste", "--support", toy_inputs["support"], "--normal", toy_inputs["normal"]]
    args += ["--priors", toy_inputs["priors"], "--output", str(output), "--max_images", "2", "--per_image", "1"]
    return [*args, "--progress", "false", *extra]


def toy_bank(toy_inputs: dict[str, str], output: Path, **options: object) -> Path:
    settings = {"max_images": 2, "per_image": 2, "progress": False, **options}
    inputs = {"normal": toy_inputs["normal"], "support": toy_inputs["support"], "priors": toy_inputs["priors"]}
    return generate(GenerateOptions(backend="paste", output=str(output), **inputs, **settings))


def no_work(*args: object, **kwargs: object) -> None:
    msg = "generate started its work before refusing"
    raise AssertionError(msg)


# ----------------------------------------------------------------------------------------------------------------
# An output that cannot be written


def test_output_under_a_file_is_refused_before_any_work(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root may write anywhere, so the output is made impossible: its parent is a file."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    monkeypatch.setattr("anomalib_anogen.generate.inputs.list_normals", no_work)
    line = error_line(toy_args(toy_inputs, blocker / "runs" / "bank"), capsys)
    assert f"{blocker / 'runs' / 'bank'}: cannot create the --output folder: {blocker} is a file" in line
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_input_error_after_the_lock_leaves_no_folder_behind(
    toy_inputs: dict[str, str], tmp_path: Path, capsys
) -> None:
    output = tmp_path / "new" / "deeper" / "bank"
    bad = tmp_path / "priors.json"
    bad.write_text(json.dumps({"blob": [[0.1, 0.3], [0.1, 0.3], True]}))  # scratch and spot have no prior
    args = toy_args(toy_inputs, output)
    args[args.index("--priors") + 1] = str(bad)
    assert "scratch, spot have a support anomaly" in error_line(args, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["priors.json"]  # not even new/deeper


# ----------------------------------------------------------------------------------------------------------------
# One writer per bank

HOLD_LOCK = """
import sys, time
from pathlib import Path
from anomalib_anogen.generate.bank_writer import BankLock
BankLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_writer_blocks_a_second_run_and_a_killed_ones_lock_is_taken_over(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, caplog
) -> None:
    output = toy_bank(toy_inputs, tmp_path / "bank")
    before = all_files(output)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = output / LOCK_NAME
        assert json.loads(lock.read_text())["pid"] == holder.pid
        for extra in (["--seed", "1", "--overwrite", "true"], ["--resume", "true"]):
            line = error_line(toy_args(toy_inputs, output, "--per_image", "2", *extra), capsys)
            assert f"another anogen generate is writing this bank (pid {holder.pid} on host" in line
            assert f"lock file {lock}" in line
        with pytest.raises(AnogenInputError, match=f"pid {holder.pid}"):
            toy_bank(toy_inputs, output, resume=True)
        assert all_files(output) == {**before, LOCK_NAME: lock.read_bytes()}  # the holder's lock, nothing else
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert json.loads((output / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by the killed process
    caplog.clear()
    assert cli_main(toy_args(toy_inputs, output, "--per_image", "2", "--resume", "true")) == 0
    assert f"taking over the lock left by pid {holder.pid}" in caplog.text
    assert all_files(output) == before  # resumed (complete: nothing to do) and the lock file is gone


def test_a_lock_file_of_a_dead_process_does_not_block_resume_of_an_unfinished_bank(
    toy_inputs: dict[str, str], tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    whole = toy_bank(toy_inputs, tmp_path / "whole")
    partial = toy_bank(toy_inputs, tmp_path / "partial")
    lines = (partial / MANIFEST_NAME).read_bytes().splitlines(keepends=True)
    (partial / MANIFEST_NAME).write_bytes(b"".join(lines[:5]))
    summary = json.loads((partial / SUMMARY_NAME).read_text())
    (partial / SUMMARY_NAME).write_text(json.dumps({**summary, "complete": False}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (partial / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "command": "anogen"}))
    toy_bank(toy_inputs, partial, resume=True)
    assert f"taking over the lock left by pid {pid}" in caplog.text and "5 of 12 records already done" in caplog.text
    assert all_files(partial) == all_files(whole)


def test_an_unlocked_run_leaves_no_lock_and_a_lock_only_folder_is_a_new_bank(
    toy_inputs: dict[str, str], tmp_path: Path
):
    output = tmp_path / "bank"
    output.mkdir()
    (output / LOCK_NAME).write_text("")  # a run killed right after creating its lock file
    toy_bank(toy_inputs, output)
    assert LOCK_NAME not in all_files(output) and len(load_bank(output)) == 12


@pytest.mark.skipif(sys.platform == "win32", reason="flock is the Unix lock")
def test_a_file_system_without_locks_is_refused_not_soft_locked(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No existence-lock fallback (it would stay behind a killed run): one clear line, no folder left."""
    import errno
    import fcntl

    def no_flock(*args: object) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    output = tmp_path / "new" / "bank"
    line = error_line(toy_args(toy_inputs, output), capsys)
    assert f"{output}: cannot write the --output folder (Function not implemented" in line
    assert list(tmp_path.iterdir()) == []


def test_the_holder_record_survives_contenders_and_follows_a_first_empty_line(
    toy_inputs: dict[str, str], tmp_path: Path, capsys
) -> None:
    """The record is the holder's, written after it won; byte 0 (all Windows locks) is a newline."""
    output = tmp_path / "bank"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        written = (output / LOCK_NAME).read_bytes()
        for _ in range(3):
            assert "another anogen generate is writing this bank" in error_line(toy_args(toy_inputs, output), capsys)
        assert (output / LOCK_NAME).read_bytes() == written and written.startswith(b"\n{")
        assert json.loads(written)["command"].endswith(str(output))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)


# ----------------------------------------------------------------------------------------------------------------
# Numbers in range

OUT_OF_RANGE = [
    ("max_images", "0", "--max_images must be an integer >= 1"),
    ("feather", "-3", "--feather must be a number in [0, 2048]"),
    ("guidance", "-5", "--guidance must be a number in [1, 100]"),
    ("guidance", "1000", "--guidance must be a number in [1, 100]"),
    ("feather", "5000", "--feather must be a number in [0, 2048]"),
    ("threads", "0", "--threads must be an integer in [1, "),
    ("threads", "100000", "--threads must be an integer in [1, "),
    ("steps", "0", "--steps must be an integer >= 1"),
    ("per_image", "0", "--per_image must be an integer in [1, 1000000]"),
    ("per_image", "1000000000", "--per_image must be an integer in [1, 1000000]"),
    ("samples_per_box", "0", "--samples_per_box must be an integer in [1, 1000000]"),
    ("resolution", "4", "--resolution must be an integer in [8, 4096]"),
    ("resolution", "100000", "--resolution must be an integer in [8, 4096]"),
    ("batch_size", "0", "--batch_size must be an integer in [1, 1024]"),
    ("batch_size", "1025", "--batch_size must be an integer in [1, 1024]"),
    ("seed", "-1", "--seed must be an integer in [0, 4294967295]"),
    ("min_foreground", "1.5", "--min_foreground must be a number in [0, 1]"),
    ("max_tries", "0", "--max_tries must be an integer in [1, 10000]"),
    ("max_tries", "100000000", "--max_tries must be an integer in [1, 10000]"),
    ("devices", "0", "--devices must be an integer >= 1"),
    ("accelerator", "tpu", "--accelerator must be one of auto, cpu, gpu, cuda"),
]


@pytest.mark.parametrize(("option", "value", "message"), OUT_OF_RANGE, ids=[f"{o}={v}" for o, v, _ in OUT_OF_RANGE])
def test_generate_numbers_out_of_range_are_refused_before_anything(
    option: str, value: str, message: str, toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr("anomalib_anogen.generate.inputs.list_normals", no_work)
    output = tmp_path / "runs" / "bank"
    line = error_line(toy_args(toy_inputs, output, f"--{option}", value), capsys)
    assert message in line and f"got {value}" in line.replace("'", ""), line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--per_defect", "0"], "--per_defect must be an integer >= 1 (got 0)"),
        (["--cell", "4"], "--cell must be an integer in [8, 1024]"),
        (["--cell", "5000"], "--cell must be an integer in [8, 1024]"),
        (["--seed", "-1"], "--seed must be an integer in [0, 4294967295]"),
    ],
)
def test_show_numbers_out_of_range_are_refused(
    extra: list[str], message: str, toy_inputs: dict[str, str], tmp_path: Path, capsys
) -> None:
    bank = toy_bank(toy_inputs, tmp_path / "bank")
    sheet = tmp_path / "sheet.png"
    assert message in error_line(["show", str(bank), "--output", str(sheet), *extra], capsys, "show")
    assert not sheet.exists()


def test_show_into_a_path_under_a_file_is_refused(toy_inputs: dict[str, str], tmp_path: Path, capsys) -> None:
    bank = toy_bank(toy_inputs, tmp_path / "bank")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    line = error_line(["show", str(bank), "--output", str(blocker / "sheet.png")], capsys, "show")
    assert f"cannot create the --output folder: {blocker} is a file" in line


# ----------------------------------------------------------------------------------------------------------------
# show on an unfinished bank


def test_show_marks_an_unfinished_bank(toy_inputs: dict[str, str], tmp_path: Path, caplog) -> None:
    bank = toy_bank(toy_inputs, tmp_path / "bank")
    complete = np.asarray(
        Image.open(show(ShowOptions(str(bank), output=str(tmp_path / "complete.png"), per_defect=1, cell=32)))
    )
    assert "unfinished" not in caplog.text
    lines = (bank / MANIFEST_NAME).read_bytes().splitlines(keepends=True)
    (bank / MANIFEST_NAME).write_bytes(b"".join(lines[:5]))  # blob x2, scratch x2, spot x1
    summary = json.loads((bank / SUMMARY_NAME).read_text())
    (bank / SUMMARY_NAME).write_text(json.dumps({**summary, "complete": False}))
    sheet = np.asarray(
        Image.open(show(ShowOptions(str(bank), output=str(tmp_path / "partial.png"), per_defect=1, cell=32)))
    )
    assert "unfinished bank (bank.json says complete: false): 5 of 12 records" in caplog.text
    assert sheet.shape == (complete.shape[0] + TITLE, complete.shape[1], 3)
    assert tuple(sheet[0, -1]) == INCOMPLETE_COLOUR and tuple(complete[0, -1]) != INCOMPLETE_COLOUR
    block = TITLE + 32
    for index in range(len(DEFECT_TYPES)):  # below the note the same rows (the first record of each defect)
        rows = slice(index * block + TITLE, (index + 1) * block)
        assert np.array_equal(sheet[TITLE:][rows], complete[rows])


# ----------------------------------------------------------------------------------------------------------------
# Mask-resize warning


def test_masks_of_another_size_are_reported_once(toy_inputs: dict[str, str], tmp_path: Path, toy_root: Path) -> None:
    support = write_support(toy_root, tmp_path / "support", mask_side=24)
    count = sum(1 for _ in support.rglob("*_mask.png"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        toy_bank({**toy_inputs, "support": str(support)}, tmp_path / "bank", per_image=1)
    resized = [str(w.message) for w in caught if "resizing the mask" in str(w.message)]
    assert len(resized) == 1 and f"(and {count - 1} more of the {count} support masks)" in resized[0], resized
