"""Errors a user can act on: the message names the problem and the fix, and the CLI prints it without a trace."""


class SeerError(Exception):
    """Base class for user-facing errors (bad input, bad config, missing object)."""


class ConfigError(SeerError, ValueError):
    """A config key, type or value is invalid."""


class StorageError(SeerError, OSError):
    """An object-storage operation failed in a way the user can fix."""


class NotFoundError(StorageError, FileNotFoundError):
    """A bucket, key or path does not exist."""
