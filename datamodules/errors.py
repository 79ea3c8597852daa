"""Errors shared by the data sources: missing (say what to install) or unreadable (say which file)."""


class SourceUnavailable(RuntimeError):
    """A data source is not installed on this machine; the message says what to install."""


class CorruptSource(ValueError):
    """A data source's files exist but cannot be parsed; the message names the file."""
