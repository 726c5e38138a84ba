"""The models' and generators' argument checks, and how anomalib's CLI shows a failed one.

Every check raises :class:`ModelArgumentError` (a ``ValueError``) whose message starts with the
argument's name, then gives the value and the allowed range or the fix, so
``DraemWeak(p_cutoff=1.5)`` fails in Python with the same text that ``anomalib train --model
DraemWeak --model.p_cutoff 1.5`` prints.

anomalib's CLI builds the model inside jsonargparse, which tries each type of ``--model``'s
``Optional[AnomalibModule]`` in turn and re-raises a model's error as a generic "Does not validate
against any of the Union subtypes" whose first cause is ``Expected a <class 'NoneType'>``; anomalib
prints that as a ~180-line traceback. :func:`install_cli_error_hook` (run by the plugin's start-up
hook in the ``anomalib`` command only) prints the plugin's input errors as one ``error:`` line
instead, and so a ``ckpt_path`` that does not exist or is not a readable checkpoint when one of the
plugin's models is in use (:func:`note_plugin_model`); every other error keeps anomalib's traceback.

This module imports neither torch nor anomalib.
"""

import itertools
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from anomalib_anogen.core.checks import UNIT_INTERVAL, Allowed, check_number
from anomalib_anogen.core.errors import AnogenInputError
from anomalib_anogen.core.torch_files import not_a_torch_file, read_failure, refused_global


class ModelArgumentError(AnogenInputError):
    """A bad model or generator argument; the message names it, the value and the allowed values or the fix.

    The most recent one is remembered (``last``): jsonargparse keeps only its text when anomalib's CLI
    builds the model, and :func:`install_cli_error_hook` recognises it by that text.
    """

    last: ClassVar["ModelArgumentError | None"] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        ModelArgumentError.last = self


def check_argument(argument: str, value: object, allowed: Allowed, hint: str = "") -> int | float:
    """:func:`~anomalib_anogen.core.checks.check_number` for a model's argument (raises :class:`ModelArgumentError`).

    Args:
        argument: The argument's name, as the user writes it in a config.
        value: What was given.
        allowed: Kind and range.
        hint: What the argument means or its usual value, appended to the message.
    """
    return check_number(argument, value, allowed, hint, error=ModelArgumentError)


def check_blend(argument: str, value: object) -> float | tuple[float, float]:
    """A blend factor: a number in [0, 1], or a ``(low, high)`` range within [0, 1] (lists from configs too)."""
    if isinstance(value, list | tuple):
        if len(value) == 2 and all(UNIT_INTERVAL.admits(v) for v in value) and value[0] <= value[1]:
            return float(value[0]), float(value[1])
    elif UNIT_INTERVAL.admits(value):
        return float(value)  # type: ignore[arg-type]
    msg = (
        f"{argument} must be a number in [0, 1] or a range [low, high] with 0 <= low <= high <= 1, got {value!r}. "
        "It is the share of the texture in a Perlin anomaly."
    )
    raise ModelArgumentError(msg)


def check_choice(argument: str, value: object, choices: dict[str, str]) -> str:
    """Return ``value`` if it is one of ``choices`` (name -> meaning), else raise listing them."""
    if isinstance(value, str) and value in choices:
        return value
    listed = [f"{name!r} ({meaning})" for name, meaning in choices.items()]
    alternatives = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + f" or {listed[-1]}"
    msg = f"{argument} must be {alternatives}, got {value!r}."
    raise ModelArgumentError(msg)


# ----------------------------------------------------------------------------------------------------------------
# anomalib's CLI

ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], object]
CLI_NAMES = frozenset({"anomalib", "anomalib.exe", "anomalib-script.py"})
CLI_MODULES = frozenset({"anomalib.cli", "anomalib.cli.cli"})


def plugin_input_error(error: BaseException) -> AnogenInputError | None:
    """The plugin's input error behind ``error``: itself, one of its causes, or the one jsonargparse re-worded."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, AnogenInputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    last = ModelArgumentError.last
    if last is not None and isinstance(error, ValueError) and str(last) in str(error):
        return last
    return None


class _PluginModels:
    built: ClassVar[bool] = False  # whether one of the plugin's models was built in this process


def note_plugin_model() -> None:
    """Called when one of the plugin's models is built: the CLI's checkpoint errors are then the plugin's to word."""
    _PluginModels.built = True


# Where Lightning reads a checkpoint: the function, and its argument that holds the checkpoint's path.
_CHECKPOINT_READERS = {"load_checkpoint": "path", "_load": "path_or_url", "_load_from_checkpoint": "checkpoint_path"}
_CHECKPOINT_HINT = (
    "pass the model.ckpt that `anomalib train` wrote (results/<model>/<dataset>/<category>/latest/weights/lightning/"
    "model.ckpt), or train again"
)


def _checkpoint_path(traceback: TracebackType | None) -> str | None:
    """The checkpoint that Lightning was reading when ``traceback`` was raised (the innermost reader's argument)."""
    found = None
    while traceback is not None:
        frame = traceback.tb_frame
        argument = _CHECKPOINT_READERS.get(frame.f_code.co_name)
        value = frame.f_locals.get(argument) if argument else None
        if isinstance(value, str | Path):
            found = str(value)
        traceback = traceback.tb_next
    return found


def checkpoint_error(error: BaseException, traceback: TracebackType | None) -> str | None:
    """One line for a ``ckpt_path`` that does not exist or is not a checkpoint (``None`` for any other error)."""
    path = _checkpoint_path(traceback)
    if path is None or not isinstance(error, OSError | RuntimeError | EOFError | ValueError | pickle.UnpicklingError):
        return None
    file = Path(path)
    if not file.exists():
        return f"ckpt_path: checkpoint file not found: {path}; {_CHECKPOINT_HINT}"
    if file.is_dir():
        return f"ckpt_path: {path} is a folder, not a checkpoint file; {_CHECKPOINT_HINT}"
    try:
        what = not_a_torch_file(file)
    except OSError as read_error:
        what = f"it cannot be read: {read_error.strerror or read_error}"
    if what is None and isinstance(error, pickle.UnpicklingError):
        found = refused_global(error)
        holds = f"a reference to {found}" if found else "pickle instructions"
        what = f"it holds {holds}, which a checkpoint of anomalib never holds; nothing in it was run"
    elif what is None:
        detail = read_failure(error)
        what = f"damaged or truncated{f': {detail}' if detail else ''}"
    return f"ckpt_path: {path} is not a readable checkpoint ({what}); {_CHECKPOINT_HINT}"


def cli_error_hook(previous: ExceptHook) -> ExceptHook:
    """An ``excepthook`` that prints the plugin's input errors as one line and leaves the others to ``previous``.

    So also a checkpoint that cannot be read while one of the plugin's models is in use (:func:`checkpoint_error`).
    """

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        found = plugin_input_error(error)
        line = str(found) if found is not None else None
        if line is None and _PluginModels.built:
            line = checkpoint_error(error, traceback)
        if line is None:
            previous(kind, error, traceback)
            return
        sys.stdout.flush()
        print(f"error: {' '.join(line.split())}", file=sys.stderr)  # one line, whatever the message held

    return hook


def running_anomalib_cli() -> bool:
    """Whether this process is the ``anomalib`` command (console script or ``python -m anomalib.cli.cli``)."""
    if sys.argv and Path(sys.argv[0]).name in CLI_NAMES:
        return True
    command = list(getattr(sys, "orig_argv", []))
    return any(flag == "-m" and module in CLI_MODULES for flag, module in itertools.pairwise(command))


def install_cli_error_hook() -> bool:
    """In the ``anomalib`` command only: print the plugin's input errors as one ``error:`` line (exit code 1).

    Returns whether the hook is installed (it is not in other programs that import ``anomalib.cli``).
    """
    if not running_anomalib_cli():
        return False
    if not getattr(sys.excepthook, "anogen_cli_error_hook", False):
        hook = cli_error_hook(sys.excepthook)
        hook.anogen_cli_error_hook = True  # type: ignore[attr-defined]
        sys.excepthook = hook
    return True
