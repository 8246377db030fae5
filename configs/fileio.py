"""Atomic file writing and content digests (pure Python).

A file written here is either absent or complete, never half-written: the content goes to a temporary file in the
same folder, is flushed to disk, and replaces the target with one ``os.replace``. Files get the usual permissions
of the user's umask (0644 typically), not the 0600 of a temporary file. :func:`check_writable` finds an unwritable
or full folder before the work that would write into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable

from .errors import UsageError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "canonical_json",
           "sha256_bytes", "sha256_file", "check_writable"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a binary file object (the folder is created if needed)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, **kw) -> None:
    kw.setdefault("indent", 2)
    kw.setdefault("sort_keys", False)
    atomic_write_text(path, json.dumps(obj, **kw) + "\n")


def canonical_json(obj, *, allow_nan: bool = False) -> bytes:
    """The canonical JSON bytes of ``obj`` (sorted keys, no spaces, no NaN unless allowed): equal content, equal
    bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=allow_nan, default=str).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def check_writable(folder, what: str, *, option: str | None = None, need_bytes: int = 0) -> None:
    """Fail before the work: ``folder`` (created if missing) must accept a new file and have ``need_bytes`` free.

    Raises :class:`UsageError` naming ``what`` (e.g. "results folder"), the folder, the problem and the option
    that chooses another folder. Writes nothing that stays: the probe file is removed at once.
    """
    folder = os.fspath(folder)
    hint = f"; choose another with {option}" if option else ""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"the {what} {folder} is not writable ({e.strerror or e}){hint}") from None
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise UsageError(f"the {what} {folder} has {_mib(free)} free, less than the {_mib(need_bytes)} "
                             f"needed{hint}")
