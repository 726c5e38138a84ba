"""The ``anogen`` console script: AnoGen's generation pipeline, on jsonargparse like anomalib's own CLI.

Every subcommand is a plain function whose signature and docstring define its options, so ``--help``,
``--config file.yaml`` and ``--print_config`` come for free and a new stage (``generate``, ``show``) is one
more entry in :data:`COMMANDS`. Bad input (:class:`AnogenInputError`) ends with one ``error:`` line on
stderr and exit code 2, no traceback, and no half-written output.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

# name -> (module, function, one-line help); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "learn": (
        "anomalib_anogen.learn.command",
        "learn",
        "Learn one anomaly embedding per defect type from a few real anomalies (masked textual inversion).",
    ),
    "import-embedding": (
        "anomalib_anogen.learn.command",
        "import_embedding",
        "Convert the AnoGen authors' released embeddings.pt files into anogen's embedding format.",
    ),
    "generate": (
        "anomalib_anogen.generate.command",
        "generate",
        "Generate anomalies into normal images at sampled boxes and write an anomaly bank.",
    ),
    "show": (
        "anomalib_anogen.generate.show",
        "show",
        "Write a contact sheet of an anomaly bank (normal | generated with box | mask per defect type).",
    ),
    "deploy-check": (
        "anomalib_anogen.deploy.check",
        "deploy_check_command",
        "Measure the exported model's variants (f32, bf16, INT8) on your images and keep the fastest that decides "
        "the same.",
    ),
}


# Commands whose required arguments are positional (``anogen show BANK``); the others take ``--name value``.
POSITIONAL: frozenset[str] = frozenset({"show", "deploy-check"})


def _command(name: str) -> Callable[..., Any]:
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


def build_parser() -> ArgumentParser:
    """The ``anogen`` parser with one subparser per command."""
    parser = ArgumentParser(prog="anogen", description="AnoGen: few-shot anomaly generation for anomalib.")
    subcommands = parser.add_subcommands(dest="subcommand", required=True)
    for name, (_, _, help_text) in COMMANDS.items():
        sub = ArgumentParser(description=help_text)
        sub.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
        sub.add_function_arguments(_command(name), as_group=False, as_positional=name in POSITIONAL)
        subcommands.add_subcommand(name, sub, help=help_text)
    return parser


def _output_of(arguments: dict[str, Any]) -> Path | None:
    output = arguments.get("output")
    return Path(output).expanduser() if output else None


def _remove_if_empty(output: Path) -> None:
    """Leave no empty ``--output`` behind when the command that created it failed."""
    if output.is_dir() and not any(output.iterdir()):
        with contextlib.suppress(OSError):  # something appeared in it meanwhile: keep it
            output.rmdir()


def main(argv: list[str] | None = None) -> int:
    """Parse, run one subcommand, map input errors to exit code 2."""
    from anomalib_anogen.core.errors import AnogenInputError

    parser = build_parser()
    config = parser.parse_args(argv)  # argument errors exit 2 here, as argparse does
    name = config.subcommand
    arguments = {k: v for k, v in config[name].as_dict().items() if k not in {"config", "__path__"}}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = _output_of(arguments)
    existed = output is not None and output.exists()
    try:
        _command(name)(**arguments)
    except AnogenInputError as error:
        if output is not None and not existed:
            _remove_if_empty(output)
        print(f"anogen {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"anogen {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
