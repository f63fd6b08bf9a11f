"""Errors a person can act on. The CLI turns each into one line and an exit code, no traceback."""


def first_line(exc: BaseException) -> str:
    """An exception's first line, to quote inside a one-line message (its type when it says nothing)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class TrainlabError(Exception):
    """Base class: the message is shown as is."""

    exit_code = 1


class ConfigError(TrainlabError):
    """Bad config key, value, or file (exit 2)."""

    exit_code = 2


class DataError(TrainlabError):
    """Missing or unreadable data, bad labels (exit 2). The message names the file."""

    exit_code = 2


class UsageError(TrainlabError):
    """Bad command-line arguments (exit 2)."""

    exit_code = 2


class Preempted(TrainlabError):
    """Stopped by a signal after writing a resumable checkpoint (exit 143)."""

    exit_code = 143


class NonFiniteLoss(TrainlabError):
    """watch.on_nonfinite=stop: a NaN/Inf loss stopped the run after a checkpoint (exit 1)."""

    exit_code = 1
