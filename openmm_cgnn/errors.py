"""The exceptions a user can cause. Everything openmm-cgnn raises for bad input or an unphysical run
derives from :class:`CGNNError`; the command line prints its one-line message and exits with status 2.
Any other exception is a bug and keeps its traceback.

The stage modules keep their own subclasses (``ReferenceRunError``, ``MappingError``, ``DatasetFormatError``,
``CGSystemError``, ``StatePointError``, ``CGSimulationBlowUpError`` ...); each also derives from the built-in
exception it replaced (``ValueError``, ``RuntimeError``, ``FileNotFoundError`` ...), so ``except ValueError``
keeps working.
"""


class CGNNError(Exception):
    """Base class of every error caused by the user's input or by an unphysical simulation."""


class ConfigError(CGNNError, ValueError):
    """A setting of a run configuration is out of range or inconsistent with another one.

    ``field`` names the configuration field (e.g. ``"production"``), so that the command line can name
    its option (``--ns``); None where the message names it already.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class InputFileError(CGNNError, ValueError):
    """An input file is empty, truncated or not of the expected kind; the message names the file and
    what was expected."""


class MissingInputError(CGNNError, FileNotFoundError):
    """An input file or folder does not exist."""


class OutputExistsError(CGNNError, FileExistsError):
    """An output path exists and the caller did not ask to overwrite it."""


class OutputPathError(CGNNError, OSError):
    """An output cannot be written where it was asked for (no permission, a file in the way ...)."""
