"""Errors that mean 'bad usage' (the command line exits with code 2 and prints the message): the core's one type."""

from bitbench.configs.errors import UsageError

__all__ = ["UsageError"]
