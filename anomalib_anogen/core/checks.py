"""Checking a number or a choice: one range type, one function each, and every limit of the project, once.

Every command checks its options when its options object is built (``__post_init__``), before any work and
before any output exists; every model checks its arguments when it is built. Both use :class:`Allowed` and
:func:`check_number`, so ``--max_images 0`` ends with ``error: --max_images must be an integer >= 1 (or leave
it out for every image; got 0)`` and ``DraemWeak(p_cutoff=1.5)`` with ``p_cutoff must be a number in [0, 1),
got 1.5. It is ...``: a command's option is named with its dashes and the note goes before the value; a
model's argument is named as in an anomalib config, and its note follows the value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Integral, Real

from anomalib_anogen.core.errors import AnogenInputError

# ----------------------------------------------------------------------------------------------------------------
# Limits (each defined here only)

SEED_MAX = 2**32 - 1  # the seed range of Lightning's seed_everything and numpy's legacy seeding
MIN_RESOLUTION = 8  # the smallest side that every backbone's VAE factor divides
MAX_GENERATE_RESOLUTION = 4096  # output side of a bank; 4096 is 48 MiB per RGB image already
MAX_LEARN_RESOLUTION = 2048  # training side of textual inversion; the support set is decoded at it on every step
TRIES_LIMIT = 10_000  # boxes drawn per record: more would stall a run on an object too small for its priors
MAX_LEARN_STEPS = 1_000_000  # the step plan holds steps x batch_size indices
MAX_LEARN_BATCH_SIZE = 1024
MAX_LR = 1.0
MAX_WRITERS = 32  # --writers: threads that encode and write a bank's files
MAX_CELL = 1024  # anogen show: pixels per side of a sheet's cell
MAX_PRIORS_MARGIN = 10  # --priors_margin: a share added to the measured box sizes
MAX_RECORDS = 1_000_000  # records of one bank: about 70 GiB of PNGs at 256 px; the work list is held in memory
MAX_GENERATE_BATCH_SIZE = 1024  # --batch_size of generate: records per UNet call
MAX_GUIDANCE = 100.0  # --guidance: far above the paper's 10, a scale that saturates every image (or overflows)
MAX_FEATHER_SHARE = 0.5  # --feather: at most half the output side; wider, no pixel of a box reaches full strength
MAX_IMAGE_PIXELS = 8192 * 8192  # an input image (normal, support, mask, bank file): 8192 x 8192, 256 MiB as RGB
DISK_MARGIN = 1.25  # the estimated size of a bank is multiplied by this before it is compared with the free space
EVALUATE_SIZE_STEP = 32  # anogen evaluate: the U-Net (DRAEM's discriminative sub-network) halves the side 5 times
MAX_EVALUATE_SIZE = 1024  # anogen evaluate --image_size: the whole bank is held in memory at this side
MAX_EVALUATE_WIDTH = 256  # anogen evaluate --width: DRAEM's own is 64
MAX_EVALUATE_BATCH_SIZE = 1024
MAX_EVALUATE_STEPS = 1_000_000
MAX_DEPLOY_RUNS = 10_000  # anogen deploy-check --runs and --warmup: batch-1 calls per variant
MAX_THROUGHPUT_IMAGES = 100_000  # anogen deploy-check --throughput_images: images per variant, THROUGHPUT hint
MAX_MIN_SPEEDUP = 100.0  # anogen deploy-check --min_speedup: a variant 100x faster than f32 is not a real bar


@dataclass(frozen=True)
class Allowed:
    """The values a number may take: its kind and bounds, and how a message words them.

    Attributes:
        integer: Integers only (``bool`` is never a number here).
        low: Lower bound, ``None`` for none.
        high: Upper bound, ``None`` for none.
        low_open: The lower bound itself is excluded.
        high_open: The upper bound itself is excluded.
        text: How a message words the range ("a positive integer"); by default it is derived from the bounds
            ("an integer in [1, 2]", "a number >= 0", "a number in (0, 1]").
    """

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    text: str = ""

    def admits(self, value: object) -> bool:
        """Whether ``value`` is a finite number of the right kind within the bounds."""
        kind = Integral if self.integer else Real
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.text:
            return self.text
        what = "an integer" if self.integer else "a number"
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {high}"
        return f"{what}, finite"


def _number(value: float | None) -> str:
    """A bound as a message writes it: ``1`` for 1.0, ``0.25`` as it is."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def at_least(low: float, *, integer: bool = True) -> Allowed:
    """An integer (or number) ``>= low``."""
    return Allowed(integer=integer, low=low)


def between(low: float, high: float, *, integer: bool = True) -> Allowed:
    """An integer (or number) in ``[low, high]``."""
    return Allowed(integer=integer, low=low, high=high)


POSITIVE_INT = Allowed(integer=True, low=1, text="a positive integer")
NON_NEGATIVE_INT = Allowed(integer=True, low=0, text="a non-negative integer")
POSITIVE = Allowed(low=0, low_open=True, text="a positive number")
NON_NEGATIVE = Allowed(low=0, text="a non-negative number")
UNIT_INTERVAL = Allowed(low=0, high=1, text="a number in [0, 1]")
UNIT_INTERVAL_OPEN_RIGHT = Allowed(low=0, high=1, high_open=True, text="a number in [0, 1)")
SEEDS = between(0, SEED_MAX)


def check_number(
    name: str, value: object, allowed: Allowed, note: str = "", error: type[Exception] = AnogenInputError
) -> int | float:
    """Return ``value`` (an ``int`` for an integer range, else a ``float``) or raise ``error`` saying why.

    Args:
        name: A command's option with its dashes (``--threads``) or a model's argument as a config names it
            (``p_cutoff``); the message follows the convention of each (see the module docstring).
        value: What was given.
        allowed: Kind and range.
        note: What the range means or the usual value.
        error: The exception to raise (models raise their :class:`~anomalib_anogen.arguments.ModelArgumentError`).
    """
    if allowed.admits(value):
        return int(value) if allowed.integer else float(value)  # type: ignore[arg-type]
    if name.startswith("--"):
        msg = f"{name} must be {allowed} ({f'{note}; ' if note else ''}got {value!r})"
    else:
        msg = f"{name} must be {allowed}, got {value!r}." + (f" {note}" if note else "")
    raise error(msg)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise an :class:`AnogenInputError` listing them."""
    if isinstance(value, str) and value in choices:
        return value
    msg = f"{name} must be one of {', '.join(choices)} (got {value!r})"
    raise AnogenInputError(msg)


def check_threads(threads: int | None) -> None:
    """``--threads``: ``None`` (the default) or 1 to this machine's CPUs."""
    if threads is not None:
        check_number("--threads", threads, between(1, os.cpu_count() or 1), "this machine's CPUs")
