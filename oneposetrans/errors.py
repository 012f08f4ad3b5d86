"""Errors that end one case or one command with a single readable line.

The CLI prints ``str(error)`` and exits with ``exit_code``; no traceback reaches the user.
"""


class OnePoseTransError(Exception):
    """Base class: the message is one line meant for the user."""

    exit_code = 1


class BadInputError(OnePoseTransError):
    """One input file (image, list, keypoints) cannot be used; the message names the file."""


class MissingModelError(OnePoseTransError):
    """A model folder or file is absent from the models directory."""

    exit_code = 3


class NotBuiltError(OnePoseTransError):
    """The stage exists in the original project but is not implemented here yet."""

    exit_code = 2


class CaseFailures(OnePoseTransError):
    """Some cases of a batch failed; each one's reason is in the stage log."""
