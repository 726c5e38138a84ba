"""Files and folders: content hashes, atomic writes, PNG bytes, and output folders checked before any work starts."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_anogen.core.errors import AnogenInputError

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
        raise AnogenInputError(msg) from error
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


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}{TEMPORARY_MARK}{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
