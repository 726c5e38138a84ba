"""Writing an anomaly bank in the layout that :mod:`anomalib_anogen.data.bank` reads, safely against crashes.

* Every file is written under a temporary name in its final folder and renamed into place, so a file with a
  bank name is always complete.
* A manifest record is appended (one ``write`` of one line) only after its image and mask exist; ``--resume``
  keeps the records whose files exist with the recorded sha256, drops a torn last line, and regenerates the
  rest. Files written but never recorded are simply replaced.
* PNG encoding, hashing and writing may run on a few writer threads (``--writers``) while the next images are
  made; the records are still appended by the generating thread, one at a time, in the order they were made,
  each once its files are on disk, so the manifest, the files and ``bank.json`` are the bytes of a serial run.
* ``bank.json`` (written first, with ``complete: false``) holds the settings; a folder with a bank of other
  settings is refused unless ``--overwrite``, and ``--resume`` requires the same settings.
* When the run ends the manifest is rewritten in work order and ``bank.json`` gets the summary, so a bank
  is byte-identical however it was interrupted or split over devices. Nothing time-dependent is recorded.
* One writer per bank: :class:`BankLock` holds an exclusive lock on ``bank.lock`` (which names its process)
  for the whole run; a second run on the same bank is refused, and a lock left by a killed run is taken over.
  The lock file is not part of the bank and is gone when the run ends.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_anogen import __version__
from anomalib_anogen.core.errors import AnogenInputError, BankWriteError
from anomalib_anogen.core.files import (
    TEMPORARY_MARK,
    make_folder,
    png_bytes,
    remove_created,
    sha256_bytes,
    write_atomic,
)
from anomalib_anogen.data.bank import MANIFEST_NAME, QUALITY_NAME, SUMMARY_NAME, image_path, mask_path

logger = logging.getLogger(__name__)

BANK_FORMAT = "anogen-bank/1"
NORMAL_DIR = "normal"  # resized copies of normal images that are not at the output size
BANK_PARTS = ("images", "masks", NORMAL_DIR, MANIFEST_NAME, QUALITY_NAME, SUMMARY_NAME)  # deletion order, --overwrite
LOCK_NAME = "bank.lock"  # held by the run that writes the bank; never part of it
PENDING_PER_WRITER = 2  # records handed to the writer threads and not yet recorded, per thread (bounds memory)


def settings_sha256(settings: dict[str, Any]) -> str:
    """Hash of the settings that define a bank's content."""
    return sha256_bytes(json.dumps(settings, sort_keys=True).encode())


def read_summary(bank: Path) -> dict[str, Any] | None:
    """``bank.json`` as a dict: ``None`` when there is none, ``{}`` when it is unreadable or not an object."""
    file = bank / SUMMARY_NAME
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _entries(output: Path) -> list[Path]:
    """What is in the folder, less a lock file (a killed run's, or this run's own)."""
    return [path for path in output.iterdir() if path.name != LOCK_NAME]


def check_target(output: Path, resume: bool, overwrite: bool) -> None:
    """The checks that need no settings: run before the lock file is put into ``output``."""
    if resume and overwrite:
        msg = "--resume and --overwrite exclude each other"
        raise AnogenInputError(msg)
    if output.exists() and not output.is_dir():
        msg = f"{output}: --output exists and is not a folder"
        raise AnogenInputError(msg)
    if output.is_dir() and _entries(output) and read_summary(output) is None and not (output / MANIFEST_NAME).exists():
        msg = f"{output}: exists, is not empty and is not an anogen bank; choose another --output"
        raise AnogenInputError(msg)


def check_bank_output(output: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> str:
    """Decide, before any work and without writing, what happens to ``output``: ``new``, ``resume`` or ``overwrite``."""
    check_target(output, resume, overwrite)
    if not output.exists() or not _entries(output):
        if resume:
            logger.info("%s: nothing to resume, starting a new bank", output)
        return "new"
    summary = read_summary(output)
    old = (summary or {}).get("settings")
    if not isinstance(old, dict):
        if overwrite:
            return "overwrite"
        msg = f"{output}: holds a bank without readable settings; pass --overwrite to replace it"
        raise AnogenInputError(msg)
    changed = _differences(old, settings)
    if overwrite:
        return "overwrite"
    if changed:
        msg = (
            f"{output}: holds a bank made with other settings ({', '.join(changed)} differ); "
            "pass --overwrite to replace it, or another --output"
        )
        raise AnogenInputError(msg)
    if not resume:
        state = "a complete" if summary and summary.get("complete") else "an unfinished"
        msg = (
            f"{output}: already holds {state} bank with these settings; pass --resume to continue it "
            "or --overwrite to replace it"
        )
        raise AnogenInputError(msg)
    return "resume"


class BankLock:
    """One writer per bank: an exclusive ``flock`` on ``<bank>/bank.lock``, which names the process holding it.

    Taken before any work (creating the folder: a folder that cannot be written fails here, naming it) and
    released however the run ends (error, Ctrl-C). The kernel drops the ``flock`` of a process that dies, even
    by ``kill -9``, so the lock file such a run leaves behind is free and is taken over with a warning; a lock
    that a live process holds makes a second run fail, naming that process and the lock file. The lock file
    is removed at the end and is never part of the bank (nor of its settings or resume identity).
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output / LOCK_NAME
        self._descriptor: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> BankLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (or raise :class:`AnogenInputError` naming the folder, or the process holding it)."""
        self._created = make_folder(self.output, "--output")
        try:
            self._descriptor = self._lock()
        except OSError as error:
            remove_created(self._created)
            msg = (
                f"{self.output}: cannot write the --output folder ({error.strerror or error}: {self.path}); "
                "choose a writable folder"
            )
            raise AnogenInputError(msg) from error
        except BaseException:
            remove_created(self._created)
            raise
        previous = _holder(self._descriptor)
        if previous:
            logger.warning(
                "%s: taking over the lock left by %s, which no longer holds it (a killed or crashed run)",
                self.path,
                _describe_holder(previous),
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(sys.argv),
        }
        try:
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            self.release()
            raise

    def _lock(self) -> int:
        import fcntl

        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(descriptor)
                os.close(descriptor)
                msg = (
                    f"{self.output}: another anogen generate is writing this bank ({_describe_holder(holder)}; "
                    f"lock file {self.path}); wait for it to end, or stop it and run again"
                )
                raise AnogenInputError(msg) from None
            except BaseException:
                os.close(descriptor)
                raise
            if _same_file(self.path, descriptor):
                return descriptor
            os.close(descriptor)  # its holder removed the file between our open and our lock: open the new one

    def release(self) -> None:
        """Remove the lock file and drop the lock; remove the folders it created if the run wrote nothing."""
        if self._descriptor is None:
            return
        try:
            if _same_file(self.path, self._descriptor):
                self.path.unlink()
        finally:
            os.close(self._descriptor)
            self._descriptor = None
            remove_created(self._created)


def _same_file(path: Path, descriptor: int) -> bool:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def _holder(descriptor: int) -> dict[str, Any]:
    """What a lock file says about its holder (``{}`` when empty or unreadable)."""
    try:
        data = json.loads(os.pread(descriptor, 1 << 16, 0).decode("utf-8", errors="replace") or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not yet written its pid"
    command = " ".join(str(holder.get("command", "?")).split())  # one line, whatever the arguments held
    pid, host, started = (holder.get(key, "?") for key in ("pid", "host", "started"))
    return f"pid {pid} on host {host}, started {started}: {command}"


@dataclass(frozen=True)
class NormalCopy:
    """A resized normal image in the bank (``normal/<stem>.png``): its path, and its sha256 once written."""

    relative: str
    future: Future  # the sha256 of the file, or the error that writing it raised


def _write_file(path: Path, data: bytes) -> None:
    """:func:`write_atomic`, with an error that names the file and says how to go on."""
    try:
        write_atomic(path, data)
    except OSError as error:
        msg = (
            f"{path}: cannot write the bank file ({error.strerror or error}); the records written before it are "
            "kept: fix the cause (free space, permissions), then run again with --resume true"
        )
        raise BankWriteError(msg) from error


class BankWriter:
    """Files and manifest of one bank; every rank of a multi-device run holds one on the same folder."""

    def __init__(
        self,
        output: Path,
        settings: dict[str, Any],
        writers: int = 0,
        quality: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    ) -> None:
        self.output = output
        self.settings = settings
        self.quality = quality  # the records' quality summary for bank.json (QualityGate.summary)
        self.manifest = output / MANIFEST_NAME
        self.writers = writers if writers >= 2 else 0  # 0 or 1: serial, in the generating thread
        self.limit = PENDING_PER_WRITER * self.writers  # records waiting to be recorded, at most
        self._pool = ThreadPoolExecutor(self.writers, thread_name_prefix="anogen-writer") if self.writers else None
        self._queue: deque[tuple[dict[str, Any], NormalCopy | None, Future]] = deque()  # in submission order
        self._failed = False
        self._normal_copies: dict[str, NormalCopy] = {}  # stem -> its copy: encode each normal once

    # ------------------------------------------------------------------------------------------------------------
    # Before the work (one rank)

    def prepare(self, mode: str, order: dict[str, int]) -> None:
        """Clear (overwrite), repair (resume) or create the bank, then mark it unfinished with its settings."""
        if mode == "overwrite":
            for name in BANK_PARTS:
                path = self.output / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        self.output.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        kept = self.valid_records(order) if mode == "resume" else []
        write_atomic(self.manifest, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.write_summary(complete=False, records=kept)
        if mode == "resume":
            logger.info("%s: resuming, %d of %d records already done", self.output, len(kept), len(order))

    def _remove_temporaries(self) -> None:
        for path in self.output.rglob(f".*{TEMPORARY_MARK}*"):
            if path.is_file():
                path.unlink(missing_ok=True)

    def valid_records(self, order: dict[str, int]) -> list[dict[str, Any]]:
        """Manifest records of this work list whose files exist with their recorded sha256, in work order."""
        if not self.manifest.is_file():
            return []
        found: dict[str, dict[str, Any]] = {}
        for line in self.manifest.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                key = record["id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a crash
            if key in order and self._files_intact(record):
                found[key] = record
        return sorted(found.values(), key=lambda r: order[r["id"]])

    def _files_intact(self, record: dict[str, Any]) -> bool:
        pairs = (
            (image_path(self.output, record["defect"], record["id"]), record.get("image_sha256")),
            (mask_path(self.output, record["defect"], record["id"]), record.get("mask_sha256")),
        )
        return all(path.is_file() and sha256_bytes(path.read_bytes()) == digest for path, digest in pairs)

    def done_ids(self) -> set[str]:
        """Ids already in the (repaired) manifest."""
        if not self.manifest.is_file():
            return set()
        return {json.loads(line)["id"] for line in self.manifest.read_text().splitlines() if line.strip()}

    # ------------------------------------------------------------------------------------------------------------
    # During the work (every rank)

    def normal_copy(self, stem: str, array: np.ndarray) -> NormalCopy:
        """Have the resized normal image that records of ``stem`` pair with written, once per run.

        Returns its bank-relative path at once; its sha256 is filled into a record's ``source_sha256`` when
        :meth:`submit` records it (the copy is on disk by then). Every record of an image shares one copy.
        """
        if stem not in self._normal_copies:
            relative = f"{NORMAL_DIR}/{stem}.png"
            self._normal_copies[stem] = NormalCopy(relative, self._run(self._write_copy, self.output / relative, array))
        return self._normal_copies[stem]

    def submit(
        self, record: dict[str, Any], image: np.ndarray, mask: np.ndarray, copy: NormalCopy | None = None
    ) -> None:
        """Write image and mask atomically, then append the record (with their sha256) to the manifest.

        With ``writers`` >= 2 the encoding, hashing and writing run on a writer thread and this returns at once,
        unless ``limit`` (``PENDING_PER_WRITER * writers``) records are already waiting: then it first waits
        for the oldest and records it (bounded memory). Records are appended here, in the order they were
        submitted, each once its files (and its ``copy``) are on disk; an error of a writer thread is raised
        here, by a later :meth:`submit` or by :meth:`drain`. ``image`` and ``mask`` must not be changed
        afterwards. Without writer threads everything is done before this returns, as a serial loop would.
        """
        if self.limit:
            self._record_done(keep=self.limit - 1)  # room for this one first: never more than `limit` images held
        self._queue.append((record, copy, self._run(self._write_files, record, image, mask)))
        self._record_done(keep=self.limit)  # serial: this one, now; threads: those already written

    def drain(self) -> None:
        """Wait for every submitted record and append it (raises the first writer error, as :meth:`submit`)."""
        self._record_done(keep=0)

    def close(self) -> None:
        """Stop the writer threads, however the run ends; idempotent.

        After a writer error the records not yet started are dropped and nothing more is recorded. Otherwise
        (the loop ended, or failed, or was interrupted) the records already submitted are finished and recorded
        in order, as a serial run would have written them before it stopped (at most ``limit`` of them). No
        thread writes into the bank after this; what a failed run did not record, ``--resume`` makes again.
        """
        if self._pool is None:
            return
        self._pool.shutdown(wait=True, cancel_futures=self._failed)
        self._pool = None
        while self._queue and not self._failed:
            record, copy, future = self._queue[0]
            if future.cancelled() or future.exception() is not None:
                break
            if copy is not None and (copy.future.cancelled() or copy.future.exception() is not None):
                break
            self._queue.popleft()
            self._append(record, copy, future.result())
        self._queue.clear()

    @property
    def pending(self) -> int:
        """Records submitted and not yet appended to the manifest."""
        return len(self._queue)

    def _run(self, function: Callable[..., Any], *args: Any) -> Future:
        """``function(*args)`` on a writer thread, or now (serial) with its result or error in a done future."""
        if self._pool is not None:
            return self._pool.submit(function, *args)
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except Exception as error:  # kept, and raised where a writer thread's error would be
            future.set_exception(error)
        return future

    def _record_done(self, keep: int) -> None:
        """Append the records at the head of the queue: while more than ``keep`` wait, and those already done."""
        while self._queue:
            record, copy, future = self._queue[0]
            if len(self._queue) <= keep and not (future.done() and (copy is None or copy.future.done())):
                return
            try:
                hashes = future.result()
                if copy is not None:
                    copy.future.result()
            except Exception:
                self._failed = True  # nothing after a failed record is recorded, as in a serial run
                raise
            self._queue.popleft()
            self._append(record, copy, hashes)

    def _append(self, record: dict[str, Any], copy: NormalCopy | None, hashes: tuple[str, str]) -> None:
        if copy is not None:
            record = {**record, "source": copy.relative, "source_sha256": copy.future.result()}
        record = {**record, "image_sha256": hashes[0], "mask_sha256": hashes[1]}
        line = (json.dumps(record) + "\n").encode()
        descriptor = os.open(self.manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)  # one write of one line: concurrent ranks never interleave on a local disk
        finally:
            os.close(descriptor)

    def _write_files(self, record: dict[str, Any], image: np.ndarray, mask: np.ndarray) -> tuple[str, str]:
        """Encode, write and hash a record's image and mask (on a writer thread); returns their sha256."""
        image_data, mask_data = png_bytes(image), png_bytes(mask)
        _write_file(image_path(self.output, record["defect"], record["id"]), image_data)
        _write_file(mask_path(self.output, record["defect"], record["id"]), mask_data)
        return sha256_bytes(image_data), sha256_bytes(mask_data)

    def _write_copy(self, path: Path, array: np.ndarray) -> str:
        """Encode and (unless that file is already there) write a resized normal image; returns its sha256."""
        data = png_bytes(array)
        digest = sha256_bytes(data)
        if not path.is_file() or sha256_bytes(path.read_bytes()) != digest:
            _write_file(path, data)
        return digest

    # ------------------------------------------------------------------------------------------------------------
    # After the work (one rank)

    def finish(self, order: dict[str, int]) -> list[dict[str, Any]]:
        """Rewrite the manifest in work order and mark the bank complete (if every record is there)."""
        records = self.valid_records(order)
        write_atomic(self.manifest, "".join(json.dumps(r) + "\n" for r in records).encode())
        self.write_summary(complete=len(records) == len(order), records=records)
        return records

    def write_summary(self, complete: bool, records: Iterable[dict[str, Any]]) -> None:
        """``bank.json``: format, version, settings (and their hash), whether complete, counts per defect, quality."""
        records = list(records)
        per_defect: dict[str, int] = {}
        for record in records:
            per_defect[record["defect"]] = per_defect.get(record["defect"], 0) + 1
        summary = {
            "format": BANK_FORMAT,
            "anogen_version": __version__,
            "complete": complete,
            "records": sum(per_defect.values()),
            "per_defect": dict(sorted(per_defect.items())),
            "settings_sha256": settings_sha256(self.settings),
            "settings": self.settings,
        }
        if self.quality is not None:
            summary["quality"] = self.quality(records)
        write_atomic(self.output / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode())
