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
from bitbench.defenses.tasks import task_for
from bitbench.defenses.io import load_checkpoint as load_checkpoint_file

from .models.adapters import adapt_model

__all__ = ["CheckpointError", "load_checkpoint", "load_weights", "tensor_digest", "checkpoint_weights_digest",
           "SuppliedModel", "supplied_model",
           "check_outputs", "check_model_fits"]


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
        raise CheckpointError(where, f"does not match the model {model}: " + "; ".join(problems)
                              + prefix_hint(missing, unexpected), _HINT)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(where, f"non-finite values (NaN or inf) in {_names(bad)}", _HINT)
    # values that the module's dtype cannot hold (a float64 weight beyond float32's range would load as inf)
    wide = [f"{k} (|value| up to {float(v.abs().max()):.4g}, {own[k].dtype} holds at most "
            f"{torch.finfo(own[k].dtype).max:.4g})" for k, v in state.items()
            if v.is_floating_point() and own[k].is_floating_point() and v.numel()
            and float(v.abs().max()) > torch.finfo(own[k].dtype).max]
    if wide:
        raise CheckpointError(where, f"values beyond the range of the model's dtype in {'; '.join(wide[:4])}", _HINT)
    module.load_state_dict(state, strict=True)
    return module


def _common_prefix(keys: list[str]) -> str:
    """The longest run of leading dotted components that every key shares (``'vit_model.'``), or ''."""
    parts = [k.split(".")[:-1] for k in keys]
    out = []
    for comps in zip(*parts):
        if len(set(comps)) != 1:
            break
        out.append(comps[0])
    return "".join(c + "." for c in out)


def prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """A hint when the file's keys and the model's differ by a leading prefix (a wrapper saved instead of the
    model, or the other way round): names the prefix and how to fix it; '' otherwise."""
    if not missing or not unexpected:
        return ""
    for extra, lacking, whose in ((unexpected, missing, "file"), (missing, unexpected, "model")):
        prefix = _common_prefix(extra)
        while prefix:
            if {k[len(prefix):] for k in extra} == set(lacking):
                if whose == "file":
                    how = ("saved from DataParallel/DistributedDataParallel? save model.module.state_dict()"
                           if prefix == "module." else
                           f"saved from a wrapper around the model? save the inner module's state_dict() (e.g. "
                           f"wrapper.{prefix[:-1]}.state_dict()) or strip the prefix from the keys")
                    return f" (the checkpoint's keys start with {prefix!r}, the model's do not: {how})"
                return (f" (the model's keys start with {prefix!r}, the checkpoint's do not: give the module the "
                        f"checkpoint was saved from (the inner one, e.g. model.{prefix[:-1]}), or add the prefix "
                        "to the keys)")
            prefix = prefix[:prefix[:-1].rfind(".") + 1] if "." in prefix[:-1] else ""
    return ""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of named tensors, in sorted name order: for each, ``name``, dtype and shape (NUL-separated),
    then its raw bytes in C order. Equal digests mean bit-identical values."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_weights_digest(path) -> str:
    """:func:`tensor_digest` of the state dict in the checkpoint file ``path`` (read by :func:`load_checkpoint`): the
    ``weights_sha256`` of records measured on those weights (e.g. a ``train --save-weights`` file; floating-point
    tensors as the float32 copy the harness evaluates)."""
    return tensor_digest({k: v.float() if v.is_floating_point() else v for k, v in load_checkpoint(path).items()})


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
    copy_ = adapt_model(copy.deepcopy(module).float())  # outputs/inputs as the ecosystem has them (names unchanged)
    digest = None
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        state = load_checkpoint(checkpoint)
        load_weights(copy_, state, where=checkpoint, model=name)
        digest = sha256_file(checkpoint)
    return SuppliedModel(copy_, name, dict(options or {}), source, checkpoint, digest)


def check_outputs(model: nn.Module, ds, name: str, dataset: str, device) -> None:
    """A supplied model must map the evaluation inputs of ``ds`` to logits of the dataset's task (classification:
    ``[N, classes]``; next-token prediction: ``[N, T, vocabulary]``): a clear error otherwise."""
    x = ds.test_x[:2].to(device)
    try:
        with torch.inference_mode():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - the user's model does not fit the data: name both
        raise UsageError(f"model {name} fails on the {dataset} inputs of shape {list(ds.test_x.shape[1:])}: "
                         f"{type(e).__name__}: {str(e).strip()[:300]}") from None
    k = int(max(int(ds.test_y.max()), int(ds.attack_y.max()) if ds.attack_y.numel() else 0)) + 1
    task = task_for(ds.test_y)
    problem = task.check_logits(out, x.shape[0], x.shape[1] if task.label_dims == 2 else None, k)
    if problem is not None:
        raise UsageError(f"model {name} {problem} (the labels of {dataset})")


def check_model_fits(model: nn.Module, ds, name: str, dataset: str) -> None:
    """A model to train maps two training inputs of ``ds`` to logits of the dataset's task: a model for another kind
    of data fails here, before any training, with a clear error."""
    x = ds.train_x[:2]
    try:
        with torch.inference_mode():
            out = model.eval()(x)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - the model does not fit the data: name both
        raise UsageError(f"model {name} fails on the {dataset} inputs of shape {list(x.shape[1:])} ({x.dtype}): "
                         f"{type(e).__name__}: {str(e).strip()[:300]}") from None
    task = ds.task
    problem = task.check_logits(out, x.shape[0], x.shape[1] if task.label_dims == 2 else None, ds.num_classes)
    if problem is not None:
        raise UsageError(f"model {name} {problem} ({dataset}: {task.name})")
