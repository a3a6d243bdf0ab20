"""The exceptions a user can cause. Everything openmm-cgnn raises for bad input or an unphysical run
derives from :class:`CGNNError`; the command line prints its one-line message and exits with status 2.
Any other exception is a bug and keeps its traceback."""


class CGNNError(Exception):
    """Base class of every error caused by the user's input or by an unphysical simulation."""
