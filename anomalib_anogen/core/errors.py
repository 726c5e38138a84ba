"""The one error type that the ``anogen`` CLI turns into a single line and exit code 2."""


class AnogenInputError(ValueError):
    """Bad user input (a file, a folder, an option): the message names it and says what to do."""


class BackboneNotFoundError(AnogenInputError):
    """A backbone that is neither built in, nor a local folder, nor in the Hugging Face cache."""


class BankWriteError(AnogenInputError):
    """A bank file could not be written (disk full, permissions): one line and exit 2; the bank stays resumable."""
