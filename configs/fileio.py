"""Atomic file writing and content digests (pure Python).

A file written here is either absent or complete, never half-written: the content goes to a temporary file in the
same folder, is flushed to disk, and replaces the target with one ``os.replace``. Files get the usual permissions
of the user's umask (0644 typically), not the 0600 of a temporary file. :func:`check_writable` finds an unwritable
or full folder before the work that would write into it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from typing import Callable

from .errors import UsageError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "canonical_json",
           "sha256_bytes", "sha256_file", "check_writable", "safe_name", "SAFE_NAME_RE", "DiskFullError",
           "is_disk_full",
           "read_json", "JSONFileError"]

# A name that is used as a file or folder name as it is: letters, digits, '.', '_', '=', '-', not starting with a
# dot or a dash (no hidden files, no '..', no option-like names), at most _NAME_MAX characters.
SAFE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=-]*")
_NAME_MAX = 80


def safe_name(text: str, max_len: int = _NAME_MAX) -> str:
    """The file or folder name that stands for ``text`` (a spec, a model or dataset name) inside its folder.

    ``text`` itself where it is a plain name (:data:`SAFE_NAME_RE`, at most ``max_len`` characters); otherwise a
    readable slug of it (``:`` -> ``__``, ``,`` -> ``_``, any other character outside the plain set -> ``_``, no
    leading dots or dashes, at most ``max_len`` characters) plus ``-`` and the first 10 hex digits of the SHA-256 of
    ``text``. Never empty, never a path (no separator, never ``.`` or ``..``), and injective: two texts never get
    the same name (``errmap:file=a_b.npz`` and ``errmap:file=a/b.npz`` differ by their digests)."""
    text = str(text)
    if SAFE_NAME_RE.fullmatch(text) and len(text) <= max_len:
        return text
    slug = re.sub(r"[^A-Za-z0-9._=-]", "_", text.replace(":", "__").replace(",", "_")).lstrip("._-=")[:max_len]
    return f"{slug or 'name'}-{sha256_bytes(text.encode('utf-8', 'surrogatepass'))[:10]}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFullError(UsageError):
    """The disk (or the user's quota) is full: ``disk full: <path>`` (exit code 2). Nothing half-written is left;
    finished files are kept, so the same command resumes once there is room."""

    def __init__(self, path):
        self.path = os.fspath(path)
        super().__init__(f"disk full: {self.path} (no space left on the device or quota exceeded; nothing "
                         "half-written was kept: free some space and run the same command again, finished results "
                         "and checkpoints are kept)")


def is_disk_full(e: BaseException) -> bool:
    """An ``OSError`` of a full disk or quota (ENOSPC, EDQUOT)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def atomic_write(path, write: Callable) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a binary file object (the folder is created if needed).

    A full disk raises :class:`DiskFullError` (nothing is left behind); a folder where the file should be is a
    :class:`UsageError` naming it (``os.replace`` cannot put a file in its place)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(path) from None
        raise UsageError(f"cannot write {path}: {e.strerror or e} (in folder {d})") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(path) and not os.path.islink(path):
            raise UsageError(f"cannot write {path}: a folder is in its place (move or remove it, then run the "
                             "same command again)")
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if is_disk_full(e):
            raise DiskFullError(path) from None
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR,
                                                   errno.ENOTDIR, errno.ENAMETOOLONG):
            raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
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


class JSONFileError(UsageError):
    """A JSON file that cannot be read: ``reason`` says why (not UTF-8, not valid JSON, nested too deeply, an I/O
    error); ``path`` names the file."""

    def __init__(self, path, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


def read_json(path):
    """The parsed content of the JSON file ``path``; :class:`JSONFileError` for anything that is not a readable
    UTF-8 JSON document (a damaged or hostile file is bad input, never a traceback)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a planted FIFO never blocks the read
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise JSONFileError(path, "not a regular file")
            raw = f.read()
    except OSError as e:
        raise JSONFileError(path, f"cannot read it ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONFileError(path, f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONFileError(path, f"not valid JSON ({e})") from None
    except RecursionError:
        raise JSONFileError(path, "not a valid file of this project: its JSON is nested too deeply") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _size(n: int, other: int) -> str:
    """``n`` bytes in words, precise enough to differ from ``other`` (``2.4 MiB`` against ``2.5 MiB``; bytes where
    rounding would make them look equal)."""
    if n >= 2**20:
        for digits in (0, 1, 2):
            a, b = f"{n / 2**20:,.{digits}f}", f"{other / 2**20:,.{digits}f}"
            if a != b:
                return f"{a} MiB"
    return f"{n:,} bytes"


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
            raise UsageError(f"the {what} {folder} has {_size(free, need_bytes)} free, less than the "
                             f"{_size(need_bytes, free)} needed{hint}")
