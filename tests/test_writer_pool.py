"""``anogen generate --writers N``: PNG encoding, hashing and writing on a few threads, the same bank as a serial run.

Toy data (48 px) and the paste backend: no shared data and no weights needed, seconds each.
"""

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from anomalib_anogen.cli import main as cli_main
from anomalib_anogen.data.bank import MANIFEST_NAME, SUMMARY_NAME, load_bank
from anomalib_anogen.generate import bank_writer
from anomalib_anogen.generate.bank_writer import BankWriter
from anomalib_anogen.generate.command import generate
from anomalib_anogen.generate.options import GenerateOptions

from .helpers.cli import error_line
from .helpers.data import all_files


def bank(toy_inputs: dict[str, str], output: Path, **options: object) -> Path:
    """4 toy images x 3 defects x 2 records with the paste backend."""
    settings = {"max_images": 4, "per_image": 2, "progress": False, **options}
    inputs = {"normal": toy_inputs["normal"], "support": toy_inputs["support"], "priors": toy_inputs["priors"]}
    return generate(GenerateOptions(backend="paste", output=str(output), **inputs, **settings))


def cli_args(toy_inputs: dict[str, str], output: Path, *extra: str) -> list[str]:
    args = ["generate", "--backend", "paste", "--support", toy_inputs["support"], "--normal", toy_inputs["normal"]]
    args += ["--priors", toy_inputs["priors"], "--output", str(output), "--max_images", "4", "--per_image", "2"]
    return [*args, "--progress", "false", *extra]


@pytest.mark.parametrize("resolution", [None, 40], ids=["own-size", "resized-copies"])
def test_a_bank_written_by_3_writers_is_byte_identical_to_a_serial_one(
    toy_inputs: dict[str, str], tmp_path: Path, resolution: int | None
) -> None:
    serial = bank(toy_inputs, tmp_path / "serial", writers=0, resolution=resolution)
    pooled = bank(toy_inputs, tmp_path / "pooled", writers=3, resolution=resolution)
    files = all_files(serial)
    assert files == all_files(pooled)  # every image, mask, normal copy, the manifest and bank.json
    assert len(load_bank(pooled)) == 24
    assert any(name.startswith("normal/") for name in files) == (resolution is not None)
    assert "writers" not in json.loads(files[SUMMARY_NAME])["settings"]
    # the quality measures and verdicts (docs/quality.md) are part of those bytes
    records = [json.loads(line) for line in files[MANIFEST_NAME].splitlines()]
    assert all({"quality", "rejected", "rejected_for"} <= set(r) for r in records)
    assert "quality" in json.loads(files[SUMMARY_NAME])


def test_writers_are_not_part_of_the_settings_a_resume_checks(toy_inputs: dict[str, str], tmp_path: Path) -> None:
    whole = bank(toy_inputs, tmp_path / "whole", writers=0)
    partial = bank(toy_inputs, tmp_path / "partial", writers=2)
    lines = (partial / MANIFEST_NAME).read_bytes().splitlines(keepends=True)
    (partial / MANIFEST_NAME).write_bytes(b"".join(lines[:7]))
    bank(toy_inputs, partial, writers=4, resume=True)
    assert all_files(partial) == all_files(whole)  # the records' quality and bank.json's summary included


class FailingWrite:
    """``write_atomic`` that fails (disk full) on the image of record ``failing``, from whichever thread writes it."""

    def __init__(self, failing: str) -> None:
        self.failing = failing
        self.original = bank_writer.write_atomic

    def __call__(self, path: Path, data: bytes) -> None:
        if path.parent.parent.name == "images" and path.stem == self.failing:
            raise OSError(28, "No space left on device")
        self.original(path, data)


@pytest.mark.parametrize("writers", [0, 3])
def test_a_writer_error_is_one_clear_line_and_leaves_a_resumable_bank(
    toy_inputs: dict[str, str], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, writers: int
) -> None:
    whole = bank(toy_inputs, tmp_path / "whole", writers=0, resolution=40)
    order = [json.loads(text)["id"] for text in (whole / MANIFEST_NAME).read_text().splitlines()]
    output = tmp_path / "bank"
    with monkeypatch.context() as patch:
        patch.setattr(bank_writer, "write_atomic", FailingWrite(order[9]))
        line = error_line(cli_args(toy_inputs, output, "--resolution", "40", "--writers", str(writers)), capsys)
    assert "No space left on device" in line and "--resume true" in line and f"{order[9]}.png" in line, line
    records = [json.loads(text) for text in (output / MANIFEST_NAME).read_text().splitlines()]
    assert [r["id"] for r in records] == order[:9]  # the records before the failed one, in order, nothing after
    for record in records:  # each recorded with its files on disk
        for path in (output / "images" / record["defect"] / f"{record['id']}.png", output / record["source"]):
            assert path.is_file()
    assert not json.loads((output / SUMMARY_NAME).read_text())["complete"]
    assert not (output / bank_writer.LOCK_NAME).exists()
    assert cli_main([*cli_args(toy_inputs, output, "--resolution", "40", "--writers", "2"), "--resume", "true"]) == 0
    assert all_files(output) == all_files(whole)


def test_an_error_in_the_generation_loop_keeps_the_finished_records_and_resumes(
    toy_inputs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = bank(toy_inputs, tmp_path / "whole", writers=0)
    from anomalib_anogen.generate.backends import paste as paste_module

    original, calls = paste_module.paste, []

    def failing_paste(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 14:
            msg = "backend failed"
            raise RuntimeError(msg)
        return original(*args, **kwargs)

    output = tmp_path / "bank"
    with monkeypatch.context() as patch:
        patch.setattr(paste_module, "paste", failing_paste)
        with pytest.raises(RuntimeError, match="backend failed"):
            bank(toy_inputs, output, writers=3)
    records = (output / MANIFEST_NAME).read_text().splitlines()
    assert len(records) == 13  # every record made before the failure was written and recorded
    bank(toy_inputs, output, writers=3, resume=True)
    assert all_files(output) == all_files(whole)


def test_pending_records_are_bounded_and_recorded_in_submission_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    original = bank_writer.png_bytes

    def slow_png(array: np.ndarray) -> bytes:
        release.wait(timeout=30)  # the writer threads stall until the test lets them go
        return original(array)

    monkeypatch.setattr(bank_writer, "png_bytes", slow_png)
    writer = BankWriter(tmp_path, {"test": True}, writers=2)
    assert writer.limit == 4
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    submitted = threading.Event()

    def submit_six() -> None:
        for index in range(6):
            writer.submit({"id": f"r{index}", "defect": "d"}, image + index, mask)
            assert writer.pending <= writer.limit
        submitted.set()

    thread = threading.Thread(target=submit_six)
    thread.start()
    assert not submitted.wait(timeout=0.5)  # the 5th submission waits for the oldest record
    assert writer.pending == writer.limit and not (tmp_path / MANIFEST_NAME).exists()
    release.set()
    thread.join(timeout=30)
    writer.drain()
    writer.close()
    ids = [json.loads(line)["id"] for line in (tmp_path / MANIFEST_NAME).read_text().splitlines()]
    assert ids == [f"r{index}" for index in range(6)]


@pytest.mark.parametrize("value", ["-1", "33"])
def test_writers_out_of_range_is_refused_before_anything(
    value: str, toy_inputs: dict[str, str], tmp_path: Path, capsys
) -> None:
    output = tmp_path / "runs" / "bank"
    line = error_line(cli_args(toy_inputs, output, "--writers", value), capsys)
    assert "--writers must be an integer in [0, 32]" in line and f"got {value}" in line
    assert not (tmp_path / "runs").exists()
