"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, config, credentials); never a bug."""

    exit_code = 2


class ConfigError(UserError):
    """A config key or value is invalid; the message names the key, value and allowed values."""


class DataError(UserError):
    """Input data is invalid (corrupt image, size mismatch, labels out of range, ...)."""


class StorageError(UserError):
    """A storage location is missing, unreachable or refuses our credentials."""
