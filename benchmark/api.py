"""The Python API: evaluate any trained ``nn.Module`` under a storage format and an attack, in one call.

    import bitbench
    rec = bitbench.evaluate_model(model, (x, y), format="rquant", attack="random_p0.01")
    rec.clean_err, rec.rerr.mean, rec.per_pattern_rerr          # fractions in [0, 1]

It runs the harness's own code path (the one ``python -m benchmark run --model ... --checkpoint ...`` runs), so
for the same weights, data, format, attack and protocol it returns the same :class:`ResultRecord`, numbers and
configuration hash alike. The caller's module is never modified (a float32 copy is quantized); every parameter
(convolution, linear, embedding, norm, attention, free ``nn.Parameter``) is part of the quantized memory, buffers
are not.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import torch
from torch import nn

from bitbench.configs.errors import UsageError
from bitbench.configs.record import ResultRecord
from bitbench.configs.registries import ATTACKS

from . import builtin_entries  # noqa: F401  (the built-in entries)
from bitbench.configs.suite import Suite, load_suite

from .data import Dataset
from .harness import Harness, RunOptions
from .user_model import supplied_model

__all__ = ["evaluate_model", "as_dataset"]


def _pair(obj, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return obj[0], obj[1]
    if isinstance(obj, Iterable) and not isinstance(obj, (torch.Tensor, str, bytes, dict)):
        xs, ys = [], []
        for i, batch in enumerate(obj):
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor)
                    and isinstance(batch[1], torch.Tensor)):
                raise UsageError(f"{what}: batch {i} is a {type(batch).__name__}, expected (inputs, labels) tensors")
            xs.append(batch[0].detach().cpu())
            ys.append(batch[1].detach().cpu())
        if not xs:
            raise UsageError(f"{what}: the data loader yielded no batches")
        return torch.cat(xs), torch.cat(ys)
    raise UsageError(f"{what}: expected a bitbench Dataset, an (inputs, labels) pair of tensors or an iterable of "
                     f"(inputs, labels) batches (a DataLoader), got a {type(obj).__name__}")


def _check(x: torch.Tensor, y: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() < 1 or x.shape[0] < 1:
        raise UsageError(f"{what}: no examples (inputs of shape {list(x.shape)})")
    tokens = y.dim() == 2 and tuple(y.shape) == tuple(x.shape)   # next-token labels of token windows [N, T]
    if not tokens and (y.dim() != 1 or y.shape[0] != x.shape[0]):
        raise UsageError(f"{what}: labels of shape {list(y.shape)} for inputs of shape {list(x.shape)} (expected "
                         "[N], or [N, T] next tokens for token windows [N, T])")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise UsageError(f"{what}: labels must be integer class indices, got {y.dtype}")
    if int(y.min()) < 0:
        raise UsageError(f"{what}: labels must be >= 0, found {int(y.min())}")
    return x.detach(), y.detach().long()


def as_dataset(data, attack_data=None, *, name: str | None = None) -> Dataset:
    """``data`` (a :class:`Dataset`, an ``(inputs, labels)`` pair or an iterable of such batches) as a
    :class:`Dataset` whose evaluation split is all of it; ``attack_data`` (same forms) is the attacker's split
    (default: a Dataset's own, else none). Inputs may be any tensors the model takes (images, token ids)."""
    if isinstance(data, Dataset):
        if attack_data is None and name is None:
            return data
        ds = dataclasses.replace(data, name=name or data.name)
        if attack_data is not None:
            ds.attack_x, ds.attack_y = _check(*_pair(attack_data, "attack_data"), "attack_data")
        return ds
    x, y = _check(*_pair(data, "data"), "data")
    if attack_data is not None:
        ax, ay = _check(*_pair(attack_data, "attack_data"), "attack_data")
    else:
        ax, ay = x[:0], y[:0]
    k = int(max(int(y.max()), int(ay.max()) if ay.numel() else 0)) + 1
    return Dataset(name=name or "tensors", train_x=x[:0], train_y=y[:0], test_x=x, test_y=y, attack_x=ax,
                   attack_y=ay, num_classes=max(k, 2), mean=(), std=(),
                   info={"source": "tensors (Python API)", "eval_split": f"all {x.shape[0]} given examples"})


def evaluate_model(model: nn.Module, data, *, format: str = "rquant", attack: str = "random_p0.01", attack_data=None,
             checkpoint: str | os.PathLike | None = None, suite: str | Suite = "default", patterns: int | None = None,
             base_seed: int | None = None, bits: int | None = None, device: str = "auto", name: str | None = None,
             dataset: str | None = None, progress: bool = False, results_dir: str | None = None,
             metrics=()) -> ResultRecord:
    """Quantize ``model`` in ``format``, run ``attack`` on it and return the :class:`ResultRecord`.

    Args:
        model: the trained module (not modified); with ``checkpoint``, a state dict file loaded into a copy of it.
        data: the evaluation examples: a :class:`~bitbench.data.Dataset` (its evaluation split), an
            ``(inputs, labels)`` pair of tensors, or an iterable of such batches (a ``DataLoader``); for a causal
            language model, token windows ``[N, T]`` with their next tokens ``[N, T]`` (the ``text`` dataset).
        format: the storage format, a defense spec that is only a quantization scheme (``normal``, ``rquant``,
            ``quant:bits=4,signed=true``, ...; training recipes such as ``clip`` or ``randbet`` are refused).
        attack: an attack spec (``random_p0.01``, ``random_msb_p0.001``, ``bfa_n20``, ...).
        attack_data: the attacker's examples for adversarial attacks (same forms as ``data``; default: a
            Dataset's attacker split), disjoint from ``data``.
        suite: the protocol (patterns, base_seed, bits) of this suite (name, TOML path or :class:`Suite`);
            ``patterns``, ``base_seed`` and ``bits`` override it.
        device: 'cpu', 'cuda', 'cuda:N' or 'auto'.
        name: the model's name in the record (default: its class, ``module.QualName``).
        dataset: the dataset's name in the record (default: the Dataset's name, else 'tensors').
        results_dir: also write the record there, as the command line does (and reuse a matching one).
        metrics: plug-in metric specs measured besides the built-ins (``["changed", "topk_err:k=5"]``; see
            :func:`bitbench.register_metric`); their values are in ``rec.per_pattern(name)`` and
            ``rec.clean_value(name)``.
    """
    s = suite if isinstance(suite, Suite) else load_suite(suite)
    ds = as_dataset(data, attack_data, name=dataset)
    over = {"dataset": ds.name, "n_eval": None, "data_dir": None}
    for k, v in (("patterns", patterns), ("base_seed", base_seed), ("bits", bits)):
        if v is not None:
            over[k] = v
    sm = supplied_model(model, name=name, checkpoint=checkpoint)
    s = s.replace(model=sm.name, model_options={}, **over)
    a = ATTACKS.create(attack)
    if getattr(a, "kind", "random") != "random" and ds.attack_y.numel() == 0:
        raise UsageError(f"attack {attack!r} is adversarial: give attack_data (the attacker's examples, disjoint "
                         "from the evaluation data) or a Dataset with an attacker split")
    opt = RunOptions(results_dir=results_dir or "results", device=device, progress=progress,
                     write_results=results_dir is not None)
    return Harness(s, opt, supplied=sm, dataset=ds, metrics=list(metrics)).run_cell(format, attack)
