"""CPU thread count for a block of work, restored afterwards.

The tiny backbones run fastest on one thread, but ``learn``/``generate`` are also library
functions: changing torch's global thread count for good would slow down whatever the caller
does next (the demo trains a detector right after generating its bank).
"""

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (``None``: leave the setting alone)."""
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# The built-in toy backbones (core/backbones.py): their ops are too small to split across threads.
SMALL_BACKBONES = frozenset({"tiny", "tiny-ldm"})


def thread_count(threads: int | None, small_ops: bool) -> int | None:
    """``--threads`` if given, else one thread for work too small to split (``small_ops``), else ``None``."""
    if threads is not None:
        return threads
    return 1 if small_ops else None
