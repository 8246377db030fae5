"""Torch checkpoints: atomic writes, a content digest, and the one verified loader every checkpoint read goes through.

A checkpoint of this project is a dict with a ``"format"`` of ``"bitbench.<kind>/<n>"`` and a ``"digest"``
(``sha256:<hex>`` of :func:`payload_digest` over every other entry: each tensor's dtype, shape and bytes, every
number, string and container). :func:`save_checkpoint` adds the digest and writes atomically;
:func:`load_checkpoint` reads with ``torch.load(weights_only=True)`` (no code in the file is ever run) and verifies
the digest. A file that is empty, truncated, not a torch file, holds pickled Python objects other than tensors and
plain containers, or whose digest does not match (a bit error on disk, an edit) raises :class:`CheckpointError`
with the file, the reason and how to recover.

Other checkpoints (e.g. a user's ``torch.save(model.state_dict(), path)``) carry no digest; they load through the
same function with ``require_digest=False`` and are returned as read.

The plain-file writers are the core's, :mod:`bitbench.configs.fileio`.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import warnings
import zipfile

from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save", "CheckpointError",
           "payload_digest", "save_checkpoint", "load_checkpoint"]

_DEFAULT_HINT = "delete the file (a cached checkpoint is then trained again) or replace it with an intact copy"


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: ``<path>: <reason>; <how to recover>`` (exit code 2 on the command line).

    Attributes: ``path``, ``reason`` (what is wrong), ``hint`` (what to do).
    """

    def __init__(self, path, reason: str, hint: str | None = None):
        self.path, self.reason, self.hint = os.fspath(path), reason, hint or _DEFAULT_HINT
        super().__init__(f"checkpoint {self.path}: {reason}; {self.hint}")


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through a temporary file in the same folder, then an atomic rename."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


# -- digest ----------------------------------------------------------------------------------------------------------
def _feed(h, obj) -> None:
    """Feed a type-tagged, length-prefixed serialization of ``obj`` into ``h`` (dict keys sorted)."""
    import torch

    def tag(t: bytes, payload: bytes = b"") -> None:
        h.update(t + struct.pack("<Q", len(payload)) + payload)

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        tag(b"T", f"{t.dtype}|{list(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, str(kv[0])))
        tag(b"D", struct.pack("<Q", len(items)))
        for k, v in items:
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        tag(b"L", struct.pack("<Q", len(obj)))
        for v in obj:
            _feed(h, v)
    elif obj is None:
        tag(b"N")
    elif isinstance(obj, bool):
        tag(b"B", b"1" if obj else b"0")
    elif isinstance(obj, int):
        tag(b"I", str(obj).encode())
    elif isinstance(obj, float):
        tag(b"F", obj.hex().encode())
    elif isinstance(obj, str):
        tag(b"S", obj.encode("utf-8"))
    elif isinstance(obj, bytes):
        tag(b"Y", obj)
    elif isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        tag(b"R", repr(obj).encode())
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__} in a checkpoint (tensors, numbers, strings, None "
                        "and dicts/lists of them only)")


def payload_digest(obj: dict) -> str:
    """``sha256:<hex>`` of a checkpoint's content without its ``digest`` entry (see the module docstring)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in obj.items() if k != "digest"})
    return "sha256:" + h.hexdigest()


def save_checkpoint(obj: dict, path) -> None:
    """Write ``obj`` (a dict with a ``"format"``) atomically with its content digest added as ``"digest"``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("format"), str):
        raise TypeError("a checkpoint is a dict with a 'format' string")
    d = {k: v for k, v in obj.items() if k != "digest"}
    d["digest"] = payload_digest(d)
    atomic_torch_save(d, path)


# -- the one loader --------------------------------------------------------------------------------------------------
def _load_failure(e: Exception, path: str, size: int) -> str:
    """What went wrong, in words (never torch's advice to retry with weights_only=False)."""
    text = str(e)
    if size == 0:
        return "the file is empty (0 bytes)"
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        what = m.group(1)
        kind = ("a whole pickled model" if what.startswith("torch.nn.") else
                "pickled Python objects, not only tensors and plain containers")
        return (f"it holds {kind} (it references {what}); it was refused without running any of its code. Save a "
                "state dict instead: torch.save(model.state_dict(), path)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head.startswith(b"PK"):
        return f"the torch archive is truncated or damaged ({size} bytes)"
    return ("not a torch checkpoint: neither a torch archive nor pickled tensors (refused without running any of "
            "it)")


def _damaged_archive_member(path: str) -> str | None:
    """What is damaged in a torch zip archive, checked against the archive's own CRC-32 of every member (torch
    itself does not check them: a flipped byte in the tensor data would load as another number); None for an intact
    archive or a file that is not a zip archive (torch's legacy format: it has no checksums)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return None
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        return f"not a complete zip archive ({e})"
    except (OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:  # truncated or odd members
        return f"cannot read its members ({type(e).__name__}: {e})"
    return f"member {bad!r} does not match its CRC-32 (e.g. bit errors on disk)" if bad else None


def describe_content(obj) -> str:
    """What a loaded file holds, in words (for messages): ``it holds a single tensor of shape [3, 3]``."""
    import torch

    if isinstance(obj, dict):
        if not obj:
            return "it holds an empty dict"
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        return (f"it holds a dict whose entry {str(bad[0])!r} is a {type(obj[bad[0]]).__name__}, not a tensor"
                if bad else "it holds a dict with non-string keys")
    if isinstance(obj, torch.Tensor):
        return f"it holds a single tensor of shape {list(obj.shape)}"
    return f"it holds a {type(obj).__name__}"


def load_checkpoint(path, *, require_digest: bool = True, hint: str | None = None, map_location="cpu") -> dict:
    """Read a checkpoint safely and verify it; returns the dict as saved (its ``digest`` entry included).

    * ``torch.load(weights_only=True)``: only tensors, numbers, strings and containers are unpickled, no code runs;
    * the content must be a dict; a dict with a ``"format"`` ``"bitbench.*"`` must carry a ``"digest"`` that
      matches its content, and so must every checkpoint when ``require_digest`` (the project's own files);
    * anything else raises :class:`CheckpointError` (a :class:`UsageError`) naming the file, the reason and
      ``hint`` (how to recover; default: delete or replace the file).
    """
    import torch

    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(path, "is a folder, not a checkpoint file", hint)
    if not os.path.exists(path):
        raise CheckpointError(path, "does not exist", hint)
    if not os.path.isfile(path):
        raise CheckpointError(path, "is not a regular file", hint)
    try:
        with open(path, "rb"):
            size = os.path.getsize(path)
    except OSError as e:
        raise CheckpointError(path, f"cannot read it ({e.strerror or e})", hint) from None
    damaged = _damaged_archive_member(path)
    if damaged:
        raise CheckpointError(path, f"the torch archive is truncated or damaged: {damaged}", hint)
    try:
        with warnings.catch_warnings():  # e.g. torch's note on unusual pickle protocols: the error says enough
            warnings.simplefilter("ignore")
            d = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse the file is about the file (the only input here)
        raise CheckpointError(path, _load_failure(e, path, size), hint) from None
    if not isinstance(d, dict):
        raise CheckpointError(path, f"{describe_content(d)}, expected a dict (a state dict or a checkpoint)", hint)
    ours = isinstance(d.get("format"), str) and d["format"].startswith("bitbench.")
    if ours or require_digest:
        stored = d.get("digest")
        if not isinstance(stored, str):
            fmt = d.get("format") if isinstance(d.get("format"), str) else "no format"
            raise CheckpointError(path, f"carries no content digest ({fmt}: written by an older version or another "
                                        "program), so its integrity cannot be verified", hint)
        try:
            actual = payload_digest(d)
        except TypeError as e:
            raise CheckpointError(path, f"holds content this project never writes ({e})", hint) from None
        if actual != stored:
            raise CheckpointError(path, "its content does not match its digest: the file is damaged (e.g. bit errors "
                                        "on disk) or was modified", hint)
    return d
