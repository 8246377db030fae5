"""T-BFA: targeted bit-flip attack (Rakin et al., TPAMI 2021, "T-BFA: Targeted Bit-Flip Adversarial Weight
Attack"), the progressive bit search of :mod:`.bfa` with a targeted objective.

* ``source=none`` (N-to-1): every input of the attacker's batch should be classified as ``target``; the objective
  maximised is ``-CE(f(x), target)``.
* ``source=c`` (1-to-1, stealthy): inputs of class ``c`` should go to ``target`` while every other input keeps its
  label; the objective is ``-(CE(f(x_c), target) + CE(f(x_rest), y_rest))`` (each a mean over its inputs).

Membership of the source class uses the attacker split's true labels (the attacker chooses whom to target); the
labels the other inputs keep are the clean model's predictions (``labels=true``: the split's labels). The
attacker's accuracy (``acc`` in the trace) is the share of the batch classified as the attacker wants; the search
stops when every source input of the batch goes to the target (``success``) or at the budget.

Evaluation metrics (on the evaluation split, per curve point): ``asr``, the attack success rate -- the share of
source inputs (N-to-1: of inputs whose label is not the target) classified as ``target`` -- and, for 1-to-1,
``other_err``, the error on the inputs of the other classes. ``flips_to_target`` is the first flip count at which
the evaluation ASR reaches ``target_asr``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitbench.configs.errors import UsageError
from bitbench.configs.registries import register_attack
from bitbench.configs.spec import SpecError

from .base import check_int
from .bfa import BFA, DEFAULT_SWEEP

__all__ = ["TargetedBFA"]


@register_attack("tbfa", pattern=r"tbfa_n(?P<n>-?[0-9]+)",
                 pattern_help="tbfa_n{n} (targeted bit search: inputs to class `target`, n flips)")
class TargetedBFA(BFA):
    """Targeted Bit-Flip Attack (T-BFA): flip bits so that the inputs of class `source` (none: all inputs) are
    classified as class `target`; reports the attack success rate after each flip count.

    Args:
        target: the class the inputs should be classified as.
        source: the class whose inputs are attacked (1-to-1, the others keep their labels); none = all (N-to-1).
        n: budget: the most bits to flip.
        k: candidate weights per tensor (largest |gradient|); none = every weight.
        biases: also attack the biases of conv/linear layers.
        layers: only tensors whose names match these fnmatch patterns, separated by '|' (none = all).
        labels: labels the other inputs keep: 'pred' (the clean model's predictions) or 'true'.
        batch: attacker batch size (drawn from the attacker split).
        trials: number of trials; trial t draws its batch with seed seed + t.
        seed: seed of trial 0's batch.
        sweep: flip counts at which the evaluation ASR is recorded, separated by '|' (n is always included).
        target_asr: evaluation ASR whose first crossing is flips_to_target (fraction).
        stop: 'target' (the evaluator says the evaluation ASR reached target_asr), 'success' (every source input of
            the attacker's batch goes to the target: may end before the evaluation ASR reaches it) or 'budget' (no
            stop before the budget; the search still ends when no flip raises the loss, 'no_gain').
        direction: flips the memory cells allow: 'any', '0to1' or '1to0'.
        page: at most one flipped bit per page of this many bytes of the memory image (0 = no limit; 4096).
        errmap: error-map file of the cells the attacker can flip (see attacks.constraints); none = every cell.
        tile: repeat the error map when the memory is larger than it.
    """

    curve_metric = "asr"
    stops = ("budget", "target", "success", "no_candidate", "no_gain")
    stop_modes = ("target", "success", "budget")

    def __init__(self, target: int = 0, source: int | None = None, n: int = 100, k: int | None = None,
                 biases: bool = False, layers: str | None = None, labels: str = "pred", batch: int = 128,
                 trials: int = 5, seed: int = 0, sweep: str = DEFAULT_SWEEP, target_asr: float = 0.9,
                 stop: str = "target", direction: str = "any", page: int = 0, errmap: str | None = None,
                 tile: bool = False):
        super().__init__(n=n, k=k, biases=biases, layers=layers, labels=labels, batch=batch, trials=trials,
                         seed=seed, sweep=sweep, stop=stop, direction=direction, page=page, errmap=errmap,
                         tile=tile)
        self.target = check_int(target, "target", 0)
        self.source = None if source is None else check_int(source, "source", 0)
        if self.source == self.target:
            raise SpecError(f"source and target are the same class ({self.target})")
        if isinstance(target_asr, bool) or not isinstance(target_asr, (int, float)) or not 0 < target_asr <= 1:
            raise SpecError(f"target_asr must be a fraction in (0, 1], got {target_asr!r}")
        self.curve_target = float(target_asr)

    def setup(self, victim, y_true: torch.Tensor) -> None:
        k = victim.num_classes
        if self.target >= k or (self.source is not None and self.source >= k):
            raise UsageError(f"target={self.target}, source={self.source}: the model has {k} classes (0..{k - 1})")
        keep = victim.predictions() if self.labels == "pred" else y_true
        src = (y_true == self.source) if self.source is not None else torch.ones_like(y_true, dtype=torch.bool)
        if not bool(src.any()):
            raise UsageError(f"the attacker batch holds no input of class {self.source}; use a larger batch")
        want = torch.where(src, torch.full_like(keep, self.target), keep)
        victim.source_mask = src
        rest = ~src
        tgt = want[src]

        def objective(logits, y):
            loss = F.cross_entropy(logits[src], tgt)
            if bool(rest.any()):
                loss = loss + F.cross_entropy(logits[rest], y[rest])
            return -loss, (logits.detach().argmax(-1) == y).float().mean().item()

        victim.y = want
        victim.objective = objective

    def reached(self, acc, pred, victim, chance) -> str | None:
        if self.stop == "success" and bool((pred[victim.source_mask] == self.target).all()):
            return "success"
        return None

    def eval_metrics(self, pred: torch.Tensor, y: torch.Tensor) -> dict:
        """``asr``: share of the evaluation inputs to attack (class ``source``, or every class but the target) that
        go to the target; ``asr_all``: share of all evaluation inputs predicted as the target (the reference's
        denominator); ``other_err`` (with a source): error on the other classes."""
        src = (y == self.source) if self.source is not None else (y != self.target)
        out = {"asr": (pred[src] == self.target).sum().item() / max(1, src.sum().item()),
               "asr_all": (pred == self.target).sum().item() / max(1, y.numel())}
        if self.source is not None:
            other = y != self.source
            out["other_err"] = (pred[other] != y[other]).sum().item() / max(1, other.sum().item())
        return out
