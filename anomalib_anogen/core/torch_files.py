"""Reading files of ``torch.save`` without running anything in them, and saying in one line what a refused file is.

``torch.load(weights_only=True)`` never runs a pickle's code, but its errors are many lines long and suggest
rerunning with ``weights_only=False`` (which would run it). The helpers here find what a file is before it is
unpickled, and turn torch's errors into a short description that never repeats that suggestion.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

# torch.save's legacy (pre-zip) format starts with its magic number 0x1950a86a20f9469cfc6c as a protocol-2 pickle.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_FILE_SIGNATURES = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "gzip-compressed data"),
)


def not_a_torch_file(path: Path) -> str | None:
    """What ``path`` looks like when it is not a file of ``torch.save`` (zip with data.pkl, or legacy), else None."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head:
        return "it is empty"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "it is a damaged zip archive"
        return None if any(name.endswith("data.pkl") for name in names) else "it is a zip archive without data.pkl"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return None
    if head.startswith(b"PK\x03\x04"):
        return "it is a truncated or damaged zip archive (torch.save writes zip archives)"
    if head[:1] == b"\x80":
        return "it is a plain Python pickle, which is never unpickled here"
    for signature, what in _FILE_SIGNATURES:
        if head.startswith(signature):
            return f"it looks like {what}"
    header_size = int.from_bytes(head[:8], "little") if len(head) > 8 else 0
    if head[8:9] == b"{" and 0 < header_size <= path.stat().st_size - 8:
        return "it looks like a safetensors file, which is read as it is (no conversion needed)"
    try:
        text = head.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        return "it holds binary data of an unknown kind"
    if text.startswith(("{", "[")):
        return "it looks like JSON"
    if text.startswith("<"):
        return "it looks like XML or HTML"
    return "it looks like text"


def refused_global(error: pickle.UnpicklingError) -> str | None:
    """The class or function (``posix.system``, ``torch.nn.modules.linear.Linear``) that ``weights_only`` refused."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def read_failure(error: BaseException) -> str:
    """The first sentence of a read error (``PytorchStreamReader failed reading zip archive...``).

    Empty when that sentence is torch's advice about ``weights_only``, which is never passed on.
    """
    text = str(error).strip()
    detail = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
    return "" if "weights_only" in detail else detail
