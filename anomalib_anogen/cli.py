"""The ``anogen`` console script: AnoGen's generation pipeline, on jsonargparse like anomalib's own CLI.

Every subcommand is a function that takes one options dataclass; the dataclass's fields and docstring define
the command's options, so ``--help``, ``--config file.yaml`` and ``--print_config`` come for free (jsonargparse,
as anomalib's CLI), the options are checked when the object is built, and a new command is one more entry in
:data:`COMMANDS`. Bad input (:class:`AnogenInputError`) ends with one ``error:`` line on
stderr and exit code 2, no traceback, and no half-written output.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser


@dataclass(frozen=True)
class Command:
    """A subcommand: the function that runs it, the options dataclass it takes, and its one-line help."""

    module: str
    function: str
    options: str  # "module:Class" of the options dataclass (its fields and docstring are the command's options)
    help: str
    positional: bool = False  # required options are positional (``anogen show BANK``)

    def options_class(self) -> type:
        """The options dataclass (imported on demand)."""
        module, name = self.options.split(":")
        return getattr(importlib.import_module(module), name)

    def run(self, options: Any) -> Any:
        """Run the command with a built options object (imports the command's module now)."""
        return getattr(importlib.import_module(self.module), self.function)(options)


COMMANDS: dict[str, Command] = {
    "learn": Command(
        "anomalib_anogen.learn.command",
        "learn",
        "anomalib_anogen.learn.options:LearnOptions",
        "Learn one anomaly embedding per defect type from a few real anomalies (masked textual inversion).",
    ),
    "import-embedding": Command(
        "anomalib_anogen.learn.command",
        "import_embedding",
        "anomalib_anogen.learn.options:ImportEmbeddingOptions",
        "Convert the AnoGen authors' released embeddings.pt files into anogen's embedding format.",
    ),
    "generate": Command(
        "anomalib_anogen.generate.command",
        "generate",
        "anomalib_anogen.generate.options:GenerateOptions",
        "Generate anomalies into normal images at sampled boxes and write an anomaly bank.",
    ),
    "show": Command(
        "anomalib_anogen.generate.show",
        "show",
        "anomalib_anogen.generate.show:ShowOptions",
        "Write a contact sheet of an anomaly bank (normal | generated with box | mask per defect type).",
        positional=True,
    ),
    "check": Command(
        "anomalib_anogen.generate.check",
        "check",
        "anomalib_anogen.generate.check:CheckOptions",
        "Measure an anomaly bank's quality (visibility, on_object, leak) and judge it, without rewriting it.",
        positional=True,
    ),
    "evaluate": Command(
        "anomalib_anogen.evaluate.command",
        "evaluate",
        "anomalib_anogen.evaluate.options:EvaluateOptions",
        "Judge an anomaly bank: train a small U-Net on it alone and test it on real anomalies (pixel AP, PRO, AUROC).",
        positional=True,
    ),
}


def build_parser() -> ArgumentParser:
    """The ``anogen`` parser with one subparser per command, its options read from the command's dataclass."""
    parser = ArgumentParser(prog="anogen", description="AnoGen: few-shot anomaly generation for anomalib.")
    subcommands = parser.add_subcommands(dest="subcommand", required=True)
    for name, command in COMMANDS.items():
        sub = ArgumentParser(description=command.help)
        sub.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
        sub.add_class_arguments(
            command.options_class(), as_group=False, as_positional=command.positional, instantiate=False
        )
        subcommands.add_subcommand(name, sub, help=command.help)
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
    command = COMMANDS[name]
    try:
        command.run(command.options_class()(**arguments))
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
