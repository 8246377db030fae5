"""A user's model: loading its checkpoint (verified), matching it to the module, and the digests that identify it.

:func:`load_checkpoint` is the one loader of user checkpoints: a path in, a state dict (name -> tensor) out, read
with ``torch.load(weights_only=True)`` (no code in the file ever runs); a missing, truncated, damaged or unsafe file
or one that holds no state dict is a :class:`~bitbench.defenses.io.CheckpointError` (a ``UsageError``: exit code
2) naming the file, the reason and how to recover. :func:`load_weights` puts it into a module after checking keys and shapes (the error names what did
not match). :func:`tensor_digest` is the content digest of named tensors (weights, evaluation data) that result
records and configuration hashes carry.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import sha256_file
from bitbench.defenses.io import CheckpointError, describe_content
from bitbench.defenses.io import load_checkpoint as load_checkpoint_file

__all__ = ["CheckpointError", "load_checkpoint", "load_weights", "tensor_digest", "SuppliedModel", "supplied_model"]


_HINT = "see 'A user's model and checkpoint' in docs/formats.md"


def load_checkpoint(path) -> dict[str, torch.Tensor]:
    """The state dict in the checkpoint file ``path`` (on the CPU), read by the project's one verified loader
    (:func:`bitbench.defenses.io.load_checkpoint`: ``weights_only=True``, the project's own files verified by their
    digest, no code in the file ever runs).

    Accepted: a plain state dict (``torch.save(model.state_dict(), path)``) or a dict that holds one under
    ``"state_dict"`` or ``"model"`` (training checkpoints, including this benchmark's). Refused with a
    :class:`CheckpointError`: a missing, empty, truncated or damaged file, a pickle with Python objects beyond
    tensors and containers (an unsafe pickle, or a whole pickled ``nn.Module``), and anything that is not a dict of
    tensors."""
    obj = load_checkpoint_file(path, require_digest=False, hint=_HINT)
    state = obj
    if not _is_state_dict(obj):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
                state = obj[key]
                break
    if not _is_state_dict(state):
        raise CheckpointError(path, f"not a state dict: {describe_content(obj)}; expected a dict of parameter name "
                                    "-> tensor, as written by torch.save(model.state_dict(), path)", _HINT)
    return dict(state)


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in d.items())


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
        raise CheckpointError(where, f"does not match the model {model}: " + "; ".join(problems) + hint, _HINT)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(where, f"non-finite values (NaN or inf) in {_names(bad)}", _HINT)
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
