"""The errors a user sees as one line (`error: ...`, exit status 2), never as a traceback.  Each names the bad value
or file and what is allowed; the entrypoints catch `UserError` and print it."""
from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix: a bad setting, a corrupt or missing file, a clash with another process."""


class ConfigError(UserError):
    """A bad configuration value (or a combination of values)."""


class DataError(UserError):
    """Data that cannot be read or scored: a missing or malformed file, split, column or label (naming the file and row)."""


class CorruptFile(UserError):
    """A saved adapter, posterior or checkpoint that cannot be used: truncated, of the wrong shape or kind, or holding
    non-finite values (naming the file)."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite: the run stops at that step, keeping its last good checkpoint."""
