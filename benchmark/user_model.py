"""A user's model: loading its checkpoint (verified), matching it to the module, and the digests that identify it.

:func:`load_checkpoint` is the one loader of user checkpoints: a path in, a state dict (name -> tensor) out, read
with ``torch.load(weights_only=True)`` (no code in the file ever runs); a missing, truncated, damaged or unsafe file
or one that holds no state dict is a :class:`CheckpointError` (a ``UsageError``: exit code 2) naming the file and
the reason. :func:`load_weights` puts it into a module after checking keys and shapes (the error names what did
not match). :func:`tensor_digest` is the content digest of named tensors (weights, evaluation data) that result
records and configuration hashes carry.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
from dataclasses import dataclass

import torch
from torch import nn

from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import sha256_file

__all__ = ["CheckpointError", "load_checkpoint", "load_weights", "tensor_digest", "SuppliedModel", "supplied_model"]


class CheckpointError(UsageError):
    """A checkpoint file that cannot be used: ``<file>: <reason>``."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0].split(". ")[0].rstrip(".")[:160] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_checkpoint(path) -> dict[str, torch.Tensor]:
    """The state dict in the checkpoint file ``path`` (on the CPU).

    Accepted: a plain state dict (``torch.save(model.state_dict(), path)``) or a dict that holds one under
    ``"state_dict"`` or ``"model"`` (training checkpoints, including this benchmark's). Refused with a
    :class:`CheckpointError`: a missing file, a truncated or damaged one, a pickle with Python objects beyond
    tensors and containers (an unsafe pickle, or a whole pickled ``nn.Module``), and anything that is not a dict of
    tensors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a file (expected a checkpoint written by torch.save(model.state_dict(), "
                              "path))")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m:
            what = m.group(1)
            hint = (" (a whole pickled model: save model.state_dict() instead)" if what.startswith("torch.nn.")
                    else " (an unsafe pickle, or a pickled object of your code: save model.state_dict())")
            raise CheckpointError(f"{path}: refused: the file holds the Python object {what}, which a weights-only "
                                  f"load does not create{hint}") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (a damaged file or a pickle with "
                              "content beyond tensors and containers)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or damaged "
                              f"({_first_line(e)})") from None
    state = obj
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
                state = obj[key]
                break
    if not isinstance(state, dict) or not state or not _is_state_dict(state):
        raise CheckpointError(f"{path}: not a state dict: {_describe(obj)}; expected a dict of parameter name -> "
                              "tensor, as written by torch.save(model.state_dict(), path)")
    return dict(state)


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _describe(obj) -> str:
    if isinstance(obj, dict):
        if not obj:
            return "it holds an empty dict"
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        return (f"it holds a dict whose entry {str(bad[0])!r} is a {type(obj[bad[0]]).__name__}, not a tensor"
                if bad else "it holds a dict with non-string keys")
    if isinstance(obj, torch.Tensor):
        return f"it holds a single tensor of shape {list(obj.shape)}"
    return f"it holds a {type(obj).__name__}"


def _names(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], *, where: str, model: str) -> nn.Module:
    """Load ``state`` into ``module`` (in place) after checking that keys and shapes match exactly and that every
    value is finite; a mismatch is a :class:`CheckpointError` naming the keys and shapes that differ."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {list(state[k].shape)}, model {list(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys (in the model, not in the file): {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys (in the file, not in the model): {_names(unexpected)}")
    if shapes:
        problems.append("wrong shapes: " + "; ".join(shapes[:4]) + (f" (+{len(shapes) - 4} more)"
                                                                    if len(shapes) > 4 else ""))
    if problems:
        prefixed = [k for k in unexpected if k.startswith("module.")]
        hint = (" (the file's keys start with 'module.': saved from DataParallel/DistributedDataParallel? "
                "save model.module.state_dict())" if prefixed and len(prefixed) == len(unexpected) else "")
        raise CheckpointError(f"{where}: does not match the model {model}: " + "; ".join(problems) + hint)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{where}: non-finite values (NaN or inf) in {_names(bad)}")
    module.load_state_dict(state, strict=True)
    return module


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of named tensors, in sorted name order: for each, ``name``, dtype and shape (NUL-separated),
    then its raw bytes in C order. Equal digests mean bit-identical values."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class SuppliedModel:
    """A model the harness evaluates without training it.

    ``module`` is a float32 copy with the weights (never modified: each format quantizes a copy of it); ``name``
    and ``options`` are recorded as the result's ``model`` / ``model_options``; ``source`` is ``"user"`` (the user's
    weights: the defense spec names only the storage format) or ``"trained"`` (trained by this benchmark with the
    defense's recipe, e.g. a leaderboard entry's checkpoint: the defense's scheme applies); ``weights_sha256`` is
    :func:`tensor_digest` of its state dict."""

    module: nn.Module
    name: str
    options: dict
    source: str = "user"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    weights_sha256: str = ""

    def __post_init__(self):
        if self.source not in ("user", "trained"):
            raise ValueError(f"source must be 'user' or 'trained', got {self.source!r}")
        if not self.weights_sha256:
            self.weights_sha256 = tensor_digest(self.module.state_dict())


def supplied_model(module: nn.Module, *, name: str | None = None, options: dict | None = None,
                   checkpoint=None, source: str = "user") -> SuppliedModel:
    """Wrap a user's module (copied: the caller's module is never changed; floats become float32). With
    ``checkpoint`` (a path), its state dict is loaded into the copy first (:func:`load_checkpoint`,
    :func:`load_weights`) and the file's SHA-256 is recorded."""
    if not isinstance(module, nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got a {type(module).__name__}")
    name = name or f"{type(module).__module__}.{type(module).__qualname__}"
    copy_ = copy.deepcopy(module).float()
    digest = None
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        state = load_checkpoint(checkpoint)
        load_weights(copy_, state, where=checkpoint, model=name)
        digest = sha256_file(checkpoint)
    return SuppliedModel(copy_, name, dict(options or {}), source, checkpoint, digest)
