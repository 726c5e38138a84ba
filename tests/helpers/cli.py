"""Running the console scripts in tests: in a fresh process, or in process expecting one error line."""

import atexit
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from anomalib_anogen.cli import main as cli_main

from .cli_server import CliServer

# The environment the tests started with: a command run under another one (a test set a variable) gets a fresh
# interpreter, as modules read some variables once at import (huggingface_hub's HF_HUB_OFFLINE).
_STARTING_ENVIRONMENT = dict(os.environ)
# Set in this process by the libraries while tests run (pytest's current test, Lightning's seed_everything) and
# read only at run time: a fork gets them with the rest of the environment, as a new process would.
_SET_AT_RUN_TIME = ("PYTEST_", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")
_servers: list[CliServer] = []


def _changed_at_import() -> set[str]:
    """Variables that differ from the suite's start, except those read only at run time (:data:`_SET_AT_RUN_TIME`)."""
    now, start = os.environ, _STARTING_ENVIRONMENT
    changed = {key for key in now.keys() | start.keys() if now.get(key) != start.get(key)}
    return {key for key in changed if not key.startswith(_SET_AT_RUN_TIME)}


def cli_server() -> CliServer:
    """The suite's one :class:`CliServer` (started on first use, ended when the tests end)."""
    if not _servers:
        _servers.append(CliServer(_STARTING_ENVIRONMENT))
        atexit.register(_servers[0].close)
    return _servers[0]


def run_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a console script of the test environment (``anomalib`` or ``anogen``) as a user would, in a new process.

    ``anomalib`` and ``anogen`` commands run in a fork of :func:`cli_server` (a new process without ~15 s of
    imports); another console script, or a command under a changed environment, in a new interpreter.
    """
    if args[0] in CliServer.commands and not _changed_at_import():
        with tempfile.TemporaryDirectory(prefix="cli_") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            return cli_server().run(args, cwd, out, timeout, err, env=dict(os.environ))
    executable = Path(sys.executable).with_name(args[0])
    return subprocess.run(
        [str(executable), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def error_line(args: list[str], capsys: pytest.CaptureFixture, command: str = "generate", code: int = 2) -> str:
    """Run the CLI, expect exit ``code`` and a single ``error:`` line (no traceback); return that line.

    ``code`` is 2 for bad input, 74 for a machine fault (a full disk).
    """
    capsys.readouterr()
    assert cli_main(args) == code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(err) == 1 and err[0].startswith(f"anogen {command}: error:"), err
    return err[0]
