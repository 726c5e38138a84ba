"""A disk that fills up, without root and without filling the real one: ``os.write`` that fails with ENOSPC.

Every file the project writes goes through ``os.write`` (``core.files.write_all``) and the bank's lock through
``os.pwrite``; :class:`FullDisk` lets ``room`` bytes through to files under one folder, writes the part that still
fits (a short write, as a real disk does), then fails every further write there with ``OSError(ENOSPC)``.
"""

import errno
import os
import stat
import threading
from pathlib import Path

import pytest


class FullDisk:
    """``os.write`` / ``os.pwrite`` for files under ``folder`` with ``room`` bytes left (:meth:`free`: room again)."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, folder: Path, room: int = 0, exempt: tuple[str, ...] = ()
    ) -> None:
        self.folder = str(folder.resolve())
        self.room = room
        self.exempt = exempt  # file names whose writes always fit (the lock file: "room for the lock only")
        self.written = 0
        self.refused = 0  # writes that failed with ENOSPC
        self._lock = threading.Lock()
        self._write, self._pwrite = os.write, os.pwrite
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "pwrite", self.pwrite)

    def _on_disk(self, descriptor: int) -> bool:
        """Whether ``descriptor`` is a regular file under ``folder`` (Linux names it in /proc/self/fd)."""
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return False
            path = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            return True  # no /proc: every regular file counts
        return path.startswith(self.folder) and Path(path).name not in self.exempt

    def _allowed(self, descriptor: int, size: int) -> int:
        if not self._on_disk(descriptor):
            return size
        with self._lock:
            allowed = max(0, min(size, self.room - self.written))
            if allowed == 0 and size > 0:
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += allowed
            return allowed

    def write(self, descriptor: int, data: bytes) -> int:
        allowed = self._allowed(descriptor, len(data))
        return self._write(descriptor, bytes(memoryview(data)[:allowed]))

    def pwrite(self, descriptor: int, data: bytes, offset: int) -> int:
        allowed = self._allowed(descriptor, len(data))
        return self._pwrite(descriptor, bytes(memoryview(data)[:allowed]), offset)

    def free(self) -> None:
        """Space was freed: every write goes through again."""
        self.room = 1 << 62
