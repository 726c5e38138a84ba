"""The two error types that the ``anogen`` CLI turns into a single line: bad input (exit 2), a machine fault (exit 74).

* :class:`AnogenInputError`: what the user handed in (a file, a folder, an option) is wrong; the message names it
  and says what to do. Exit code 2, as argparse's own errors.
* :class:`AnogenFaultError`: the machine failed a command whose input is fine (a full disk, an I/O error, memory
  that ran out); the message names the file or the resource and says how to go on (free space, then the same
  command with ``--resume true``). Exit code 74, ``EX_IOERR`` of BSD's sysexits.h.
"""

INPUT_EXIT_CODE = 2  # bad input, as argparse
FAULT_EXIT_CODE = 74  # EX_IOERR (sysexits.h): the machine failed (disk full, I/O error, out of memory)
INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, as a shell reports a command stopped with Ctrl-C


class AnogenInputError(ValueError):
    """Bad user input (a file, a folder, an option): the message names it and says what to do."""


class BackboneNotFoundError(AnogenInputError):
    """A backbone that is neither built in, nor a local folder, nor in the Hugging Face cache."""


class AnogenFaultError(RuntimeError):
    """The machine failed (disk full, I/O error, out of memory): one line naming the file and how to go on; exit 74."""


class BankWriteError(AnogenFaultError):
    """A bank file could not be written (disk full, I/O error): one line and exit 74; the bank stays resumable."""
