"""Range checks of numeric options: one message naming the option, its allowed range and the value given.

Every command checks its numbers with :func:`check_number` before any work and before it creates any output,
so ``--max_images 0`` or ``--feather -3`` end with ``error: --max_images must be an integer >= 1 (...; got 0)``
instead of being accepted silently.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from anomalib_anogen.core.errors import AnogenInputError

SEED_MAX = 2**32 - 1  # the seed range of Lightning's seed_everything and numpy's legacy seeding


def _span(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    if low is not None:
        return f">= {low}"
    return f"<= {high}" if high is not None else "finite"


def check_number(
    option: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    note: str = "",
) -> None:
    """Refuse ``value`` unless it is a finite number (an integer with ``integer``) in ``[low, high]``.

    A bound of ``None`` is open. The message names ``--option``, the range, ``note`` (what the range means) and
    the value, e.g. ``--threads must be an integer in [1, 2] (this machine's CPUs; got 0)``.
    """
    kind = Integral if integer else Real
    valid = (
        isinstance(value, kind)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )
    if not valid:
        what = "an integer" if integer else "a number"
        detail = f"{note}; " if note else ""
        msg = f"--{option} must be {what} {_span(low, high)} ({detail}got {value!r})"
        raise AnogenInputError(msg)
