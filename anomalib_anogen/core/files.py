"""Files and folders: content hashes, atomic writes, PNG bytes, and output folders checked before any work starts."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_anogen.core.errors import AnogenFaultError, AnogenInputError

TEMPORARY_MARK = ".tmp-"  # in the name of a file being written (see write_atomic)


def check_writable_folder(folder: Path, option: str = "--output") -> None:
    """Refuse ``folder`` unless it is, or can become, a folder that this process can write into.

    Nothing is created: the folder, or its nearest existing parent when it does not exist yet, is probed by
    creating and removing a hidden temporary file there. A real write is the only test that also holds for
    root (who passes every permission check) on a read-only file system or a pseudo file system such as /proc.
    """
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        msg = f"{folder}: {option} cannot be created, {existing} is a broken link"
        raise AnogenInputError(msg)
    if not existing.is_dir():
        if existing == folder:
            msg = f"{folder}: {option} exists and is not a folder"
            raise AnogenInputError(msg)
        msg = f"{folder}: {option} cannot be created, {existing} is a file, not a folder"
        raise AnogenInputError(msg)
    try:
        handle, probe = tempfile.mkstemp(prefix=".anogen-write-test-", dir=existing)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        where = "" if existing == folder else f" (its nearest existing parent {existing})"
        msg = f"{folder}: {option} cannot be written{where}: {reason}"
        raise (AnogenFaultError if is_machine_fault(error) else AnogenInputError)(msg) from error
    os.close(handle)
    os.unlink(probe)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (support images are recorded by content, not by name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of a uint8 array (RGB or grey); deterministic, so equal pixels give equal files."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_all(descriptor: int, data: bytes) -> None:
    """Write every byte of ``data`` to an open file, or raise the ``OSError`` (``ENOSPC``...) of the write that failed.

    ``os.write`` may write fewer bytes than asked (a disk that fills up): the rest is written by the next call.

    Every file the project writes goes through here (tests simulate a full disk by patching ``os.write``).
    """
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        if written <= 0:  # never for a regular file; kept so that a bad writer cannot loop forever
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        view = view[written:]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}{TEMPORARY_MARK}{uuid.uuid4().hex[:8]}")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            write_all(descriptor, data)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# The errors of a disk that is full or fails (not of a path the user chose): a machine fault, exit code 74.
MACHINE_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def is_machine_fault(error: OSError) -> bool:
    """Whether ``error`` is the machine's (a full or failing disk), not the input's (a path, a permission)."""
    return error.errno in MACHINE_FAULTS


def reason(error: OSError) -> str:
    """An OS error as a message says it: ``No space left on device`` (its ``strerror``), else its text."""
    return error.strerror or str(error) or type(error).__name__


def write_fault(path: Path, what: str, error: OSError, then: str) -> AnogenFaultError:
    """The one-line error of a write that the machine refused: ``<path>: cannot write <what> (<reason>); <then>``.

    A full disk (``ENOSPC``, ``EDQUOT``) says to free space first.
    """
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    return AnogenFaultError(
        f"{path}: cannot write {what} ({reason(error)}); {'free space, then ' if full else ''}{then}"
    )


def free_bytes(folder: Path) -> int:
    """Bytes that this process may still write on the file system of ``folder`` (or its nearest existing parent)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_free(folder: Path, need: int, what: str, then: str) -> None:
    """Refuse (:class:`AnogenFaultError`) to start work whose output (``need`` bytes) the disk of ``folder`` lacks."""
    free = free_bytes(folder)
    if need > free:
        msg = (
            f"{folder}: {what} needs about {human_bytes(need)} but its file system has {human_bytes(free)} free; "
            f"free space, then {then}"
        )
        raise AnogenFaultError(msg)


def size_of(paths: list[Path]) -> int:
    """Bytes in the files under ``paths`` (files or folders; links are not followed, missing paths count 0)."""
    total = 0
    for path in paths:
        if path.is_symlink() or path.is_file():
            total += path.lstat().st_size if path.is_file() and not path.is_symlink() else 0
        elif path.is_dir():
            total += sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return total


def human_bytes(count: float) -> str:
    """``1.5 GiB``, ``240 KiB``, ``12 B``: binary units, 3 significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" or count >= 100 else f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} TiB"  # pragma: no cover


def make_folder(folder: Path, what: str) -> list[Path]:
    """Create ``folder`` (and its parents) or say why it cannot be; returns the folders created, deepest first.

    ``what`` names the option (``--output``) in the message. The list is what :func:`remove_created` takes away
    again when the run fails before writing anything.
    """
    created = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        created.append(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        remove_created(created)
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            msg = f"{folder}: cannot create the {what} folder: {blocker} is a file"
            raise AnogenInputError(msg) from error
        if is_machine_fault(error):
            msg = f"{folder}: cannot create the {what} folder ({error.strerror or error}); free space, then run again"
            raise AnogenFaultError(msg) from error
        msg = f"{folder}: cannot create the {what} folder ({error.strerror or error}); choose a writable place"
        raise AnogenInputError(msg) from error
    return created


def remove_created(created: list[Path]) -> None:
    """Remove the folders that :func:`make_folder` created, deepest first, as long as they are empty."""
    for path in created:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (the run wrote something, or another run uses it): keep it and its parents
