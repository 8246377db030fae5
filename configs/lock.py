"""Per-artefact file locks (pure Python): concurrent identical runs compute an artefact once.

``with FileLock(path + ".lock"):`` around "look for the artefact, compute it if absent, write it": a second process
asking for the same artefact waits, then finds it written and reuses it. The lock is ``fcntl.flock`` on a lock
file next to the artefact (in the cache or results folder). The holder writes ``pid host start-time`` into the lock
file, so a waiting process can say whom it waits for, and the lock file is removed on release.

Lock files are opened with ``O_NOFOLLOW`` and must be regular files: a symbolic link, folder, FIFO or device planted
where a lock file belongs is refused (:class:`LockError`, exit code 2), never followed or written to. A full disk
while creating the lock file is a :class:`~.fileio.DiskFullError`; the owner line is only informative, so a write
of it that fails for lack of space leaves the lock working.

Stale locks: the kernel releases a flock when its process ends, however it ends (``kill -9`` included), so the
lock of a dead process never blocks anyone; the next process takes it over and reports the pid and host of the
process that left it. Where the file system does not support flock (rare network mounts) the lock degrades to no
lock with a warning: every artefact is still written atomically, only duplicate work is no longer prevented.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from typing import Callable

from .errors import UsageError
from .fileio import DiskFullError, is_disk_full

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["FileLock", "LockError", "lock_owner"]

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class LockError(UsageError):
    """A lock file that cannot be used: not a regular file (a planted symbolic link, a folder) or not creatable."""


_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | \
    getattr(os, "O_NONBLOCK", 0)  # O_NONBLOCK: a planted FIFO never blocks the open; flock ignores the flag


def _open_lock_file(path: str) -> int:
    """The lock file's descriptor: created if missing, never through a symbolic link, a regular file only."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o666)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(path) from None
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise LockError(f"lock file {path} is a symbolic link; it is never followed (remove it, then run the "
                            "same command again)") from None
        if e.errno in (errno.EISDIR, errno.ENXIO, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            raise LockError(f"lock file {path}: cannot open it ({e.strerror}); remove whatever is in its place, "
                            "then run the same command again") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LockError(f"lock file {path} is not a regular file; it is never written to (remove it, then run the "
                        "same command again)")
    return fd


def _parse_owner(text: str) -> dict | None:
    parts = text.split()
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    try:
        since = float(parts[2]) if len(parts) > 2 else None
    except ValueError:
        since = None
    return {"pid": int(parts[0]), "host": parts[1], "since": since}


def lock_owner(path) -> dict | None:
    """``{'pid', 'host', 'since'}`` as written in the lock file ``path`` by its holder (None: empty/unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return _parse_owner(os.pread(fd, 512, 0).decode("utf-8", "replace"))
    except OSError:
        return None
    finally:
        os.close(fd)


def _describe(owner: dict | None) -> str:
    if owner is None:
        return "another process"
    when = ""
    if owner.get("since"):
        when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(owner["since"]))
    return f"pid {owner['pid']} on host {owner['host']}{when}"


class FileLock:
    """An exclusive lock on ``path`` (a lock file; its folder is created if needed). Reentrant: no.

    Args:
        path: the lock file, conventionally ``<artefact>.lock``.
        what: a few words naming the artefact, for messages.
        log: ``log(message)`` for "waiting for ..." and "took over a stale lock ..." (default: silent).

    After :meth:`acquire`, :attr:`took_over` is the owner record (pid, host) of a dead process whose lock file
    was left behind, else None.
    """

    def __init__(self, path, what: str = "", log: Callable[[str], None] | None = None):
        self.path = os.fspath(path)
        self.what = what or os.path.basename(self.path)
        self.log = log or (lambda msg: None)
        self.took_over: dict | None = None
        self.waited = False
        self._fd: int | None = None

    # -- acquire / release ---------------------------------------------------------------------------------------
    def acquire(self) -> "FileLock":
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(folder) from None
            raise LockError(f"lock file {self.path}: cannot create its folder ({e.strerror or e})") from None
        if fcntl is None:  # pragma: no cover
            self._unsupported("no fcntl module on this platform")
            return self
        while True:
            fd = _open_lock_file(self.path)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self.waited = True
                    self.log(f"waiting for {self.what}: being computed by {_describe(lock_owner(self.path))} "
                             f"(lock {self.path})")
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                os.close(fd)
                if e.errno in _UNSUPPORTED:
                    self._unsupported(f"{self.path}: {e.strerror}")
                    return self
                raise
            # The previous holder may have removed the file between our open and our lock: retry on the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        owner = self._read_owner(fd)
        if owner is not None and owner["pid"] != os.getpid():
            # A clean release removes the file: content left in it means its holder died while holding it.
            self.took_over = owner
            self.log(f"took over the stale lock of {_describe(owner)} on {self.what} (that process ended without "
                     "releasing it)")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n".encode(), 0)
        except OSError as e:  # the owner line only informs waiting processes: the lock holds without it
            if not is_disk_full(e):
                raise
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: a waiter then retries on a fresh file (see acquire)
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- helpers ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _read_owner(fd: int) -> dict | None:
        return _parse_owner(os.pread(fd, 512, 0).decode("utf-8", "replace"))

    def _unsupported(self, why: str) -> None:
        self.log(f"warning: file locks are not supported here ({why}); concurrent identical runs may compute "
                 f"{self.what} twice (each result is still written atomically)")
