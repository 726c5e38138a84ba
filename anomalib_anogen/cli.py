"""The ``anogen`` console script: AnoGen's generation pipeline, on jsonargparse like anomalib's own CLI.

Every subcommand is a function that takes one options dataclass; the dataclass's fields and docstring define
the command's options, so ``--help``, ``--config file.yaml`` and ``--print_config`` come for free (jsonargparse,
as anomalib's CLI), the options are checked when the object is built, and a new command is one more entry in
:data:`COMMANDS`. Every way a command can end is one line on stderr, no traceback:

* bad input (:class:`AnogenInputError`): ``anogen <cmd>: error: ...``, exit code 2, no half-written output;
* a machine fault (:class:`AnogenFaultError`: a full disk, an I/O error; also an ``OSError`` of a full or failing
  disk and a ``MemoryError`` that escaped the commands' own checks): ``anogen <cmd>: error: ...``, exit code 74
  (``EX_IOERR``), the output as it was or resumable, and the line says how to go on;
* Ctrl-C: ``anogen <cmd>: interrupted ...`` with how to go on, exit code 130.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import json
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
    # What is on disk when the command stops half-way (Ctrl-C, a full disk), and how to go on.
    resume: str = "run the same command again"

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
        resume="the defects finished before are kept; run the same command again to learn the others",
    ),
    "import-embedding": Command(
        "anomalib_anogen.learn.command",
        "import_embedding",
        "anomalib_anogen.learn.options:ImportEmbeddingOptions",
        "Convert the AnoGen authors' released embeddings.pt files into anogen's embedding format.",
        resume="the embeddings finished before are kept, none is partial; run the same command with --overwrite true",
    ),
    "generate": Command(
        "anomalib_anogen.generate.command",
        "generate",
        "anomalib_anogen.generate.options:GenerateOptions",
        "Generate anomalies into normal images at sampled boxes and write an anomaly bank.",
        resume="the records written so far are kept; run the same command with --resume true to continue",
    ),
    "show": Command(
        "anomalib_anogen.generate.show",
        "show",
        "anomalib_anogen.generate.show:ShowOptions",
        "Write a contact sheet of an anomaly bank (normal | generated with box | mask per defect type).",
        positional=True,
        resume="no sheet was written; run the same command again",
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
    "deploy-check": Command(
        "anomalib_anogen.deploy.check",
        "deploy_check_command",
        "anomalib_anogen.deploy.check:DeployCheckOptions",
        "Measure the exported model's variants (f32, bf16, INT8) on your images and keep the fastest that decides "
        "the same.",
        positional=True,
        resume="nothing was written; run the same command again",
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


def _list_options(options: type) -> dict[str, bool]:
    """The options of a command that take a list (``--defects``), and whether each takes a single string too."""
    return {
        f"--{f.name}": str(f.type).replace(" ", "").startswith("str|")
        for f in dataclasses.fields(options)
        if "list[" in str(f.type)
    }


def join_list_values(argv: list[str]) -> list[str]:
    """``--defects a b`` (space-separated, as most CLIs take a list) as jsonargparse's ``--defects '["a", "b"]'``.

    jsonargparse reads a list option from one argument (``--defects '[a, b]'``, or ``--defects+ a --defects+ b``);
    the words after a list option, up to the next option, are joined into that one argument, so ``--defects a``
    is ``["a"]`` too. An argument that is already a list (``'[a, b]'``) or ``null``, and a single word for an
    option that also takes a string (``--input x.pt``), stay as they are.
    """
    name = next((word for word in argv if word in COMMANDS), None)
    if name is None:
        return argv
    lists = _list_options(COMMANDS[name].options_class())
    out: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        option, equals, first = word.partition("=")
        index += 1
        if option not in lists:
            out.append(word)
            continue
        values = [first] if equals else []
        while index < len(argv) and not argv[index].startswith("-"):
            values.append(argv[index])
            index += 1
        single = len(values) == 1 and (values[0].lstrip().startswith("[") or values[0] == "null" or lists[option])
        out += [option, *values] if single or not values else [option, json.dumps(values)]
    return out


# The errors of a disk or file system that fails (full, quota, read-only, failing): a machine fault, exit 74.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})


def main(argv: list[str] | None = None) -> int:
    """Parse, run one subcommand; map input errors to exit code 2, machine faults to 74, Ctrl-C to 130."""
    from anomalib_anogen.core.errors import (
        FAULT_EXIT_CODE,
        INPUT_EXIT_CODE,
        INTERRUPT_EXIT_CODE,
        AnogenFaultError,
        AnogenInputError,
    )

    parser = build_parser()
    argv = join_list_values(list(sys.argv[1:] if argv is None else argv))
    config = parser.parse_args(argv)  # argument errors exit 2 here, as argparse does
    name = config.subcommand
    arguments = {k: v for k, v in config[name].as_dict().items() if k not in {"config", "__path__"}}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = _output_of(arguments)
    existed = output is not None and output.exists()
    command = COMMANDS[name]
    message, code = None, 0
    try:
        command.run(command.options_class()(**arguments))
    except AnogenInputError as error:
        message, code = f"error: {error}", INPUT_EXIT_CODE
    except AnogenFaultError as error:
        message, code = f"error: {error}", FAULT_EXIT_CODE
    except KeyboardInterrupt:
        message, code = f"interrupted (Ctrl-C); {command.resume}", INTERRUPT_EXIT_CODE
    except MemoryError as error:
        detail = f" ({error})" if str(error) else ""
        message = (
            f"error: out of memory{detail}; make the work smaller (--batch_size, --resolution), then {command.resume}"
        )
        code = FAULT_EXIT_CODE
    except OSError as error:
        if error.errno not in _DISK_ERRNOS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        message = f"error: {where}{error.strerror or error}; {'free space, then ' if full else ''}{command.resume}"
        code = FAULT_EXIT_CODE
    if message is None:
        return 0
    if output is not None and not existed:
        _remove_if_empty(output)
    print(f"anogen {name}: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message held
    return code


if __name__ == "__main__":
    sys.exit(main())
