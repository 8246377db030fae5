"""The one error type for mistakes of the user's (bad input).

The command line prints the message of a :class:`UsageError` and exits with code 2; every other exception is a
program bug and shows its traceback (exit code 1). Subclasses name what was wrong: :class:`~.spec.SpecError` (a
defense/attack spec), :class:`~.suite.SuiteError`, :class:`~.entry.EntryError`, the data loaders' ``DataError``.
"""

__all__ = ["UsageError", "load_failure_text"]


class UsageError(ValueError):
    """Bad input: the message says what was wrong and what is allowed (exit code 2 on the command line)."""


_UNSAFE_ADVICE = ("allow_pickle", "weights_only", "pickle", "Pickle")


def load_failure_text(e: BaseException) -> str:
    """A library's reason for refusing a file, in words fit for the user: where it advises unsafe loading
    (numpy's ``allow_pickle=True``, torch's ``weights_only=False``) the reason is that the file holds pickled Python
    objects, which this project never loads -- the advice is never passed on."""
    text = f"{type(e).__name__}: {e}"
    if any(w in text for w in _UNSAFE_ADVICE):
        return "it holds pickled Python objects, which are never loaded (refused without running any of it)"
    return text[:300]
