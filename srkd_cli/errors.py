"""Errors a user can cause. The CLI prints each as one line and exits non-zero."""

from __future__ import annotations


class SrkdError(Exception):
    """A problem the user can fix: the message names the file or option and the cause."""

    exit_code = 2


class InputError(SrkdError):
    """A bad input file or folder (missing, unreadable, not an image, too large)."""


class CheckpointError(SrkdError):
    """A file that is not a usable checkpoint, or one that does not fit the request."""


class ModelNotFoundError(SrkdError):
    """A model name that the zoo does not know, or weights that cannot be fetched."""


class ConfigError(SrkdError):
    """Options that contradict each other or are out of range."""


class OutputError(SrkdError):
    """An output that cannot be written (exists without --overwrite, unwritable folder)."""
