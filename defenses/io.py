"""Atomic file writes: a file is either absent or complete, never half-written."""

from __future__ import annotations

import json
import os
import tempfile

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save"]


def _atomic(path, write) -> None:
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
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
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, **kw) -> None:
    kw.setdefault("indent", 2)
    kw.setdefault("sort_keys", False)
    atomic_write_text(path, json.dumps(obj, **kw) + "\n")


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through a temporary file in the same folder, then an atomic rename."""
    import torch

    _atomic(path, lambda f: torch.save(obj, f))
