"""Errors shared by the data sources: missing (say what to install), unreadable (say which file), or readable but
unfit for what the arguments ask of them (say what is needed, what there is, and which argument changes it)."""


class SourceUnavailable(RuntimeError):
    """A data source is not installed on this machine; the message says what to install."""


class CorruptSource(ValueError):
    """A data source's files exist but cannot be parsed; the message names the file."""


class DataMismatch(ValueError):
    """The data are readable but cannot serve the arguments: fewer speech frames than units, fewer patches than
    codebook entries, fewer sequences than a batch, images the patch does not tile, a setting's modality missing. The
    message says what is needed, what the data give, and which argument lowers the need."""


# What the command-line entry points report as one line (the data's fault, not the code's).
DATA_ERRORS = (SourceUnavailable, CorruptSource, DataMismatch)
