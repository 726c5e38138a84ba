"""Output folders: refuse one that cannot be written before any work starts, not after hours of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from anomalib_anogen.generation.errors import AnogenInputError


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
