"""User-facing errors: the command line prints their message on one line and exits non-zero."""


class SambookError(Exception):
    """A problem the user can fix (bad argument, missing data, unwritable folder)."""


class ConfigError(SambookError, ValueError):
    """An invalid hyperparameter, method, dataset or profile."""


class DataNotFoundError(SambookError, FileNotFoundError):
    """No usable copy of the dataset was found."""


class NonFiniteLossError(SambookError, FloatingPointError):
    """Training produced a NaN or infinite loss."""
