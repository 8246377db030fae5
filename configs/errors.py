"""The one error type for mistakes of the user's (bad input).

The command line prints the message of a :class:`UsageError` and exits with code 2; every other exception is a
program bug and shows its traceback (exit code 1). Subclasses name what was wrong: :class:`~.spec.SpecError` (a
defense/attack spec), :class:`~.suite.SuiteError`, :class:`~.entry.EntryError`, the data loaders' ``DataError``.
"""

__all__ = ["UsageError"]


class UsageError(ValueError):
    """Bad input: the message says what was wrong and what is allowed (exit code 2 on the command line)."""
