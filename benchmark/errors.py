"""Errors that mean 'bad usage' (the command line exits with code 2 and prints the message)."""


class UsageError(ValueError):
    """Bad usage: an invalid option value or an incompatible combination of options."""
