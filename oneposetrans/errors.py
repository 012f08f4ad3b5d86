"""Errors that end one case or one command with a single readable line.

The CLI prints ``str(error)`` and exits with ``exit_code``; no traceback reaches the user.
"""


class OnePoseTransError(Exception):
    """Base class: the message is one line meant for the user."""

    exit_code = 1


class BadInputError(OnePoseTransError):
    """One input file (image, list, keypoints) cannot be used; the message names the file."""


class CaseError(OnePoseTransError):
    """One case failed while running (out of memory, a numerical failure); the others go on."""


class MissingModelError(OnePoseTransError):
    """A model folder or file is absent from the models directory."""

    exit_code = 3


class EnvironmentProblem(OnePoseTransError):
    """The machine cannot do what was asked (no such device, an output that cannot be written)."""

    exit_code = 2


class NotBuiltError(OnePoseTransError):
    """What was asked for is not built yet; the message says which issue builds it."""

    exit_code = 2


class CaseFailures(OnePoseTransError):
    """Some cases of a batch failed; each one's reason is in the stage log and in ``reasons``."""

    def __init__(self, message: str, reasons: list[str] | None = None):
        super().__init__(message)
        self.reasons = reasons or [message]
