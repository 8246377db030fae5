"""The attack contract and helpers shared by the attacks.

An :class:`Attack` turns a quantized model (:class:`defenses.QuantizedModel`) into a sequence of perturbed integer
memories (:class:`Perturbation`). Random attacks draw seeded bit-error patterns (one per pattern index ``k``, seed
``base_seed + k``); adversarial attacks search for bit flips with the attacker's data and yield one perturbation.

Rules every attack follows:

* ``qm.codes`` (the clean memory) is never modified;
* an adversarial attack may load candidate codes into ``model`` but gives the module back exactly as it got it
  (parameter values, buffers, train/eval mode, ``requires_grad`` flags and ``.grad`` are untouched) before it yields;
* an adversarial attack only sees ``data`` (the attacker split), never the evaluation data;
* every hyperparameter has a default (the registry requires it) and a fixed seed makes the result reproducible.

Curves (adversarial attacks that set :attr:`Attack.sweep`): the evaluation measures the error on the evaluation
split after every flip count of the sweep, and the flips needed to reach a target, per trial. The search never sees
those numbers: an attack with :attr:`Attack.observes` calls ``observe(index, codes, point)`` after each committed
step (``codes``: its current memory, which ``model`` then holds; ``point``: ``{'flips', 'loss', 'acc'}`` on the
attacker's batch, and ``'tensors'``: the tensors (indices into ``qm.names``) the step changed, so the observer may
re-run only the layers from there on) and ignores what the observer returns; the observer (the harness's
evaluator) may run ``model`` in eval mode under ``torch.inference_mode`` and must leave its parameters holding
``codes``.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bitbench.configs.spec import SpecError
from bitbench.defenses.tasks import task_for

from .partial_forward import PartialForward

__all__ = ["Perturbation", "Attack", "FixedChips", "Victim", "check_rate", "check_int", "SEED_MAX", "check_indices", "attack_batch",
           "guard_module", "cross_entropy_objective", "parse_sweep"]


@dataclass
class Perturbation:
    """One perturbed memory.

    Attributes:
        codes: flat perturbed codes (same dtype and size as ``qm.codes``); may be a reused buffer that is only
            valid until the next item is requested.
        index: pattern index k.
        seed: pattern seed (random attacks; None for deterministic or adversarial ones).
        trace: adversarial attacks: every committed flip as ``{tensor, name, index, bit, loss, acc}`` (tensor: index
            into ``qm.names``; index: flat C-order index inside that tensor; bit: 0 = LSB; loss/acc: attacker loss
            and accuracy after the flip was committed).
        info: extra facts, e.g. ``{'flips': number of bits that differ from the clean codes}``.
        check: for a protected memory (:class:`defenses.protection.ProtectedModel`), the perturbed check words, one
            tensor per stored check region (``qm.check_regions``); None: the check bits are as stored (an attack
            that flips only data words).
        context: the per-segment ranges the memory decodes with when its metadata words took bit errors (a
            :class:`~bitbench.defenses.quantization.QuantContext`, :mod:`bitbench.defenses.metadata`); None: the
            stored ranges. The evaluator loads ``qm.load_into(model, codes, context=context)``.
        runtime: faults outside the weight memory while the model runs (activations, buffers): a
            :class:`~.runtime.Runtime` the evaluator enters around the pattern's forward passes and tells the global
            index of every batch's first input (contract: :mod:`.runtime`); None: none.
    """

    codes: torch.Tensor
    index: int
    seed: int | None
    trace: list[dict] | None = None
    info: dict = field(default_factory=dict)
    check: list | None = None
    context: object | None = None
    runtime: object | None = None


class Attack:
    """Base class of attacks. Subclasses set :attr:`kind` and implement :meth:`perturbations`.

    Instances created through the registry also carry ``registry_name``, ``params`` (every parameter, defaults
    filled in) and ``spec`` (canonical spec string).
    """

    kind: str = "random"          # 'random', 'adversarial' or 'analysis' (a search over other cells: tolerable)
    registry_name: str = "attack"
    rate: float | None = None      # bit error rate (random attacks), for result records
    flips: int | None = None       # bit-flip budget (adversarial attacks), for result records
    sweep: list[int] | None = None  # flip counts at which the evaluation records the curve (None: no curve)
    observes: bool = False         # perturbations() takes observe= (calls it after every committed step)
    curve_metric: str = "err"      # evaluation metric that flips_to_target is measured on ('err' or 'asr')
    curve_target: float | None = None   # its target value; None with 'err': chance, 1 - 1/classes

    def num_perturbations(self) -> int:
        return 1

    def perturbations(self, qm, *, model: nn.Module | None = None, data=None, out: torch.Tensor | None = None,
                      indices: Iterable[int] | None = None) -> Iterator[Perturbation]:
        """Yield the perturbed memories of ``qm``.

        Args:
            qm: the :class:`defenses.QuantizedModel` (its clean codes are never modified).
            model: the module whose parameters correspond to ``qm`` (needed by adversarial attacks).
            data: ``(x, y)`` of the attacker split only, on the model's device (adversarial attacks).
            out: optional preallocated buffer (``qm.codes``' dtype and size), reused for every item.
            indices: only these pattern indices (sharding); default ``range(num_perturbations())``.

        Attacks whose :attr:`observes` is set also take ``observe=`` (see the module docstring: curves).
        """
        raise NotImplementedError

    def check(self, qm) -> None:
        """Refuse (:class:`SpecError`) a model this attack cannot run on, e.g. ``layers`` patterns that match no
        tensor; the harness calls it on the untrained model, before any training or attacking, then
        :meth:`check_model` where :attr:`checks_model` is set."""
        layers = getattr(self, "layers", None)
        if layers is not None:
            qm.select(layers)

    checks_model: bool = False   # check_model() has something to check (module names: activations, buffers)

    def check_model(self, qm, model: nn.Module) -> None:
        """Refuse (:class:`SpecError`) a module this attack cannot run on (e.g. activation ``layers`` patterns that
        match no module); called after :meth:`check` where :attr:`checks_model` is set."""

    @property
    def clean_baseline(self) -> dict | None:
        """What the clean error of this attack's results is measured on: None for the clean quantized model (every
        weight attack), or a description (JSON values) of another fault-free deployment, e.g. activations quantized
        without errors (``{"activations": {...}}``)."""
        return None

    def clean_runtime(self, qm, *, model=None, data=None):
        """The :class:`~.runtime.Runtime` of the clean baseline (:attr:`clean_baseline`), entered around the clean
        predictions; None: the clean quantized model as loaded."""
        return None

    def input_digests(self) -> dict:
        """``{parameter: "sha256:..."}`` for parameters that name input files (e.g. an error map's ``file``): the
        numbers depend on the file's content, so configuration hashes use the digest instead of the path."""
        return {}

    def eval_metrics(self, pred: torch.Tensor, y: torch.Tensor) -> dict:
        """Extra evaluation metrics of perturbed predictions ``pred`` on the evaluation labels ``y`` (fractions),
        recorded with each curve point; the evaluator calls it, the search never does."""
        return {}

    def __repr__(self) -> str:
        return f"<attack {getattr(self, 'spec', type(self).__name__)}>"


# -- argument checks -------------------------------------------------------------------------------------------------
def check_rate(p, name: str = "p", allow_none: bool = False) -> float | None:
    """A bit error rate as a fraction in [0, 1] (``0.01`` = 1%)."""
    if p is None and allow_none:
        return None
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or math.isnan(float(p)) or not 0.0 <= float(p) <= 1.0:
        raise SpecError(f"{name} must be a bit error rate as a fraction in [0, 1] (0.01 = 1%), got {p!r}")
    return float(p)


SEED_MAX = (1 << 62) - 1  # the largest seed of an attacker batch (torch generators take 64-bit seeds)


def check_int(v, name: str, lo: int = 0, hi: int | None = None) -> int:
    """An integer in [lo, hi] (floats with an integral value are accepted)."""
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if not ok and isinstance(v, float) and v.is_integer():
        v, ok = int(v), True
    if not ok or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SpecError(f"{name} must be an integer {rng}, got {v!r}")
    return int(v)


def check_indices(indices, n: int) -> list[int]:
    """Pattern indices to produce (default: all ``n``); each must be in [0, n)."""
    if indices is None:
        return list(range(n))
    out = []
    for k in indices:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= int(k) < n:
            raise ValueError(f"pattern index {k!r} is outside 0..{n - 1}")
        out.append(int(k))
    return out


def check_out(qm, out: torch.Tensor | None) -> torch.Tensor | None:
    if out is None:
        return None
    if not isinstance(out, torch.Tensor) or out.dtype != qm.codes.dtype or out.numel() != qm.n_words \
            or out.device != qm.codes.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of {qm.n_words} words of {qm.codes.dtype} on "
                         f"{qm.codes.device}")
    if out.data_ptr() == qm.codes.data_ptr():
        raise ValueError("out must not alias qm.codes (the clean memory is never modified)")
    return out.view(-1)


def parse_sweep(sweep, budget: int, name: str = "sweep") -> list[int]:
    """``'1|2|5|10'`` (or a list) -> sorted distinct flip counts >= 1, those above ``budget`` dropped and ``budget``
    itself always last; ``none``: ``[budget]``."""
    if sweep is None or (isinstance(sweep, str) and sweep.strip().lower() in ("", "none")):
        pts = []
    else:
        parts = sweep if isinstance(sweep, (list, tuple)) else str(sweep).split("|")
        pts = []
        for part in parts:
            try:
                v = check_int(int(str(part).strip()), name, 1)
            except (ValueError, SpecError):
                raise SpecError(f"{name} must be flip counts >= 1 separated by '|' (e.g. 1|2|5|10), got "
                                f"{sweep!r}") from None
            pts.append(v)
    return sorted({v for v in pts if v < budget} | ({budget} if budget >= 1 else set()))


def attack_batch(data, batch: int | None, seed: int):
    """The attacker's batch: ``batch`` examples of ``data = (x, y)`` drawn by ``seed`` (all if fewer)."""
    if data is None:
        raise ValueError("this adversarial attack needs data=(x, y) from the attacker split")
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ValueError("data must be a pair (x, y) of tensors from the attacker split") from None
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape[0] != y.shape[0]:
        raise ValueError("data must be a pair (x, y) of tensors with the same number of examples")
    n = x.shape[0]
    if n == 0:
        raise ValueError("the attacker split is empty")
    if batch is None or batch >= n:
        return x, y
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n, generator=g)[:batch].sort().values.to(x.device)
    return x.index_select(0, idx), y.index_select(0, idx.to(y.device))


@contextmanager
def guard_module(model: nn.Module, params: list[torch.Tensor], train_mode: bool = False):
    """Run an attack on ``model``: eval mode (or train mode), ``params`` requiring grad; on exit every parameter
    value, buffer, the mode and the ``requires_grad`` flags are restored exactly."""
    saved_params = [p.detach().clone() for p in model.parameters()]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in params]
    try:
        model.train(train_mode)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved_params):
                p.copy_(s)
            for b, s in zip(model.buffers(), saved_buffers):
                b.copy_(s)
        for m, t in zip(model.modules(), modes):
            m.training = t
        for p, f in zip(params, flags):
            p.requires_grad_(f)


NONFINITE_LOSS = 1e39  # the loss of an input whose logits (or cross-entropy) are not finite: above any float32 loss


def cross_entropy_objective(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The untargeted objective: the mean cross-entropy on labels ``y`` (to maximise) and the accuracy on them,
    over the task's units (examples; the tokens of a language model: logits ``[B, T, V]`` and labels ``[B, T]`` are
    flattened, :mod:`bitbench.defenses.tasks`).

    An input whose logits hold NaN/inf or overflow the cross-entropy (a float format's exponent flip) counts as
    wrong with the loss :data:`NONFINITE_LOSS` (the mean then in float64, finite); its gradient is 0 (see
    :meth:`Victim.loss_grad`). Finite inputs give exactly the plain cross-entropy."""
    logits, y = task_for(y).flatten(logits, y)
    loss = F.cross_entropy(logits, y)
    if bool(torch.isfinite(loss)):
        return loss, (logits.detach().argmax(1) == y).float().mean().item()
    bad = ~torch.isfinite(logits.detach()).all(1)
    rows = F.cross_entropy(torch.where(bad.unsqueeze(1), torch.zeros_like(logits), logits), y, reduction="none")
    bad = bad | ~torch.isfinite(rows.detach())
    rows = torch.where(bad, torch.full_like(rows, 0.0), rows).double()
    loss = (rows + bad.double() * NONFINITE_LOSS).mean()
    acc = ((logits.detach().argmax(1) == y) & ~bad).float().mean().item()
    return loss, acc


class FixedChips:
    """For attacks whose perturbations are ``patterns`` fixed chips: chip k is drawn with seed ``base_seed + k``
    (the same seeds for every model, so models meet the same chips)."""

    patterns: int
    base_seed: int

    def num_perturbations(self) -> int:
        return self.patterns

    def seed(self, k: int) -> int:
        return self.base_seed + k

    def seeds(self) -> list[int]:
        return [self.seed(k) for k in range(self.patterns)]


class Victim:
    """The attacked model during an adversarial search: loads codes (whole memory or a few words), measures the
    attacker's objective on its batch and its gradient w.r.t. the attacked tensors.

    Args:
        tensors: indices (into ``qm.names``) of the tensors whose gradients :meth:`loss_grad` returns (default all).
        objective: ``(logits, y) -> (loss tensor to maximise, accuracy)``; default cross-entropy.
        partial: evaluate a change of one tensor by a partial forward (:class:`PartialForward`, verified).

    Word-level writes give exactly the values ``qm.load_into`` would write (same dequantization arithmetic).
    """

    def __init__(self, qm, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, tensors=None, objective=None,
                 partial: bool = False):
        self.qm = qm
        self.model = model
        self.params = qm.parameters_of(model)
        if x.is_inference() or y.is_inference():  # called under torch.inference_mode: autograd needs normal tensors
            with torch.inference_mode(False):
                x, y = x.clone(), y.clone()
        self.x = x
        self.y = y
        self.task = task_for(y)
        self.dtype = self.params[0].dtype
        self.tensors = list(range(len(self.params))) if tensors is None else list(tensors)
        self.objective = objective or cross_entropy_objective
        self._pos = {t: j for j, t in enumerate(self.tensors)}
        self.partial = PartialForward(model, [self.params[t] for t in self.tensors]) if partial else None

    def load(self, codes: torch.Tensor | None = None) -> None:
        self.qm.load_into(self.model, codes)

    @torch.no_grad()
    def set_words(self, t: int, idx: torch.Tensor, codes: torch.Tensor) -> None:
        """Write the weights of ``codes`` at flat indices ``idx`` of tensor ``t`` into the parameter (the values
        ``qm.load_into`` would write, see :meth:`QuantizedModel.decode_words`)."""
        p = self.params[t]
        p.data.view(-1)[idx.to(p.device)] = self.qm.decode_words(t, idx, codes, dtype=self.dtype).to(p.device)

    @torch.no_grad()
    def evaluate(self, tensor: int | None = None) -> tuple[float, float, torch.Tensor]:
        """``(loss, acc, predictions)`` of the current weights on the batch. ``tensor``: only tensor ``tensor``
        changed since the last :meth:`loss_grad`, so a partial forward suffices (where it is enabled; its first use
        per tensor is checked against the full forward)."""
        pf, j = self.partial, self._pos.get(tensor)
        if pf is not None and j is not None and pf.usable(j):
            with pf.serving(j):
                logits = self.model(self.x)
            if pf.verified[j] is None:
                full = self.model(self.x)
                if not pf.verify(j, full, logits):
                    logits = full
        else:
            logits = self.model(self.x)
        loss, acc = self.objective(logits, self.y)
        return loss.item(), acc, logits.argmax(-1)

    def loss_acc(self) -> tuple[float, float]:
        loss, acc, _ = self.evaluate()
        return loss, acc

    def loss_grad(self) -> tuple[float, float, list[torch.Tensor]]:
        """Loss, accuracy and dL/dw per tensor of ``tensors`` (``.grad`` of the parameters is not touched). The
        forward is recorded for partial evaluations."""
        params = [self.params[t] for t in self.tensors]
        with torch.inference_mode(False), torch.enable_grad():
            with self.partial.recording() if self.partial is not None else nullcontext():
                logits = self.model(self.x)
            loss, acc = self.objective(logits, self.y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        # non-finite entries (activations made inf/NaN by a float format's flips) carry no first-order information
        grads = [torch.zeros_like(p) if g is None else torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0)
                 for g, p in zip(grads, params)]
        return loss.item(), acc, grads

    @torch.no_grad()
    def predictions(self) -> torch.Tensor:
        """Predicted labels on the batch (shape: the labels', e.g. ``[B]`` or ``[B, T]``)."""
        return self.task.predictions(self.model(self.x))

    @property
    def num_classes(self) -> int:
        """Classes of the output (the vocabulary of a language model): the logits' last dimension."""
        with torch.no_grad():
            return int(self.model(self.x[:1]).shape[-1])

    def chance_accuracy(self) -> float:
        """The batch accuracy of a destroyed model under the current labels (:meth:`Task.chance_accuracy`)."""
        return self.task.chance_accuracy(self.y, self.num_classes)
