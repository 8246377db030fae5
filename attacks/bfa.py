"""BFA: the progressive bit search of Rakin, He and Fan (ICCV 2019, "Bit-Flip Attack"), as its reference
implementation runs it, re-implemented from its published description; the protocol: docs/adversarial.md.

Threat model: the attacker knows the integer codes and has a batch of the attacker split; it flips as few bits as
possible to destroy accuracy. Defaults follow the reference's main script: every weight of a layer is a candidate
(``k`` = none), only conv/linear weights are attacked (``biases=true`` adds their biases, ``layers=`` restricts by
name), and the batch is labelled with the clean model's own predictions (``labels=true``: the attacker split's
labels). Each step:

1. one forward/backward pass on the batch gives dL/dw of every attacked tensor;
2. the first-order loss change of flipping bit ``b`` of word ``i`` is ``dL/dw_i * delta_ib`` with ``delta_ib`` the
   exact weight change of that flip (:meth:`QuantizedModel.flip_deltas`: decode(word ^ 2^b) - decode(word); on a
   float format a flip that makes the weight inf or NaN has no first-order gain and is not a candidate: the
   largest finite changes, an exponent bit's, rank first);
   only flips with a positive gain that the threat model allows (:mod:`.constraints`; a bit is never flipped twice)
   are candidates; with ``k`` set, only the ``k`` weights of the tensor with the largest |dL/dw|. The ranking is
   one pass over the attacked memory: the weight changes of every bit are cached and only the words a step changed
   are recomputed;
3. the best candidate of every tensor is tried (its loss on the batch; only the layers from that tensor on are
   re-evaluated, :mod:`.partial_forward`), then undone; the tensor whose flip gives the highest loss is committed
   (inter-layer search). If no tensor's flip raises the loss, the ``j = 2, 3, ...`` best candidates of each tensor
   are tried together (as the reference does), up to the remaining budget; if none raises it either, the search
   stops (``no_gain``).

Ties go to the lower index: within a tensor the lower (word, bit), across tensors the earlier tensor. The search
stops after ``n`` flipped bits, at chance (batch accuracy <= 1 / classes; for a language model, whose units are
tokens, the share of the batch's most frequent label: :meth:`Task.chance_accuracy`), when the model collapses onto one class
(every batch prediction the same class: its accuracy is then that class's share, which can stay above 1 / classes),
or when no candidate is left. The model runs in eval mode.

Trials: trial ``t`` draws its batch from the attacker split with seed ``seed + t``; the benchmark averages over
``trials`` of them. Every committed flip is in the trace; ``info['flips']`` is the Hamming distance between the
clean and the attacked codes.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from bitbench import kernels
from bitbench.configs.errors import UsageError
from bitbench.configs.registries import register_attack
from bitbench.configs.spec import SpecError

from .base import (SEED_MAX, Attack, Perturbation, Victim, attack_batch, check_indices, check_int, check_out,
                   guard_module, parse_sweep)
from .constraints import FlipConstraints
from .random_errors import layer_patterns

__all__ = ["BFA", "flip_deltas", "attacked_tensors", "DEFAULT_SWEEP"]

DEFAULT_SWEEP = "1|2|5|10|20|50|100"


def flip_deltas(codes: torch.Tensor, bits: int, protected: int = 0) -> torch.Tensor:
    """int64 ``[n, bits]``: the code change ``q' - q`` of flipping bit b of each code (0 for protected bits); see
    :func:`kernels.flip_deltas`."""
    return kernels.flip_deltas(codes, bits, protected)


def _is_linear_map(mod: nn.Module) -> bool:
    """Conv and linear layers, and transformers' ``Conv1D`` (GPT-2's linear layer with a transposed weight)."""
    return isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)) or type(mod).__name__ == "Conv1D"


def attacked_tensors(qm, model: nn.Module, layers=None, biases: bool = False) -> list[int]:
    """Indices (into ``qm.names``) of the weights of conv and linear modules (their biases too with ``biases``)
    whose names match ``layers`` (fnmatch patterns; None: all). Normalization parameters are never attacked. A
    weight shared by several modules (an embedding tied to a linear output head) counts when any of them is a
    linear map; it is named as the memory names it (its first name)."""
    kinds = set()
    for mod in model.modules():
        if _is_linear_map(mod):
            for pname, p in mod.named_parameters(recurse=False):
                if pname == "weight" or (biases and pname == "bias"):
                    kinds.add(id(p))
    pats = layer_patterns(layers)
    params = qm.parameters_of(model)
    out = [t for t, name in enumerate(qm.names) if id(params[t]) in kinds
           and (pats is None or any(fnmatch.fnmatchcase(name, p) for p in pats))]
    if not out:
        raise UsageError(f"no quantized tensor to attack: conv/linear weights{' and biases' if biases else ''}"
                         f"{f' matching {layers!r}' if layers else ''}; the quantized tensors are {qm.names}")
    return out


def _finite(deltas: torch.Tensor) -> torch.Tensor:
    """Weight changes with the non-finite ones (a float word flipped to inf or NaN) set to 0: not candidates."""
    return torch.where(torch.isfinite(deltas), deltas, torch.zeros((), dtype=deltas.dtype, device=deltas.device))


class _Memory:
    """The attacked part of the memory during a search: current codes, the exact weight change of flipping every bit
    where the threat model allows it (0 elsewhere; a bit never flips twice), cached and refreshed only for the words
    a step changes, and the gains of a step, all flat over the attacked words (tensor by tensor, in memory order)."""

    def __init__(self, qm, tensors: list[int], cur: torch.Tensor, constraints):
        self.qm, self.tensors, self.cur, self.c = qm, tensors, cur, constraints
        dev = cur.device
        self.starts = [0]
        for t in tensors:
            self.starts.append(self.starts[-1] + qm.lengths[t])
        self.words = torch.cat([torch.arange(qm.offsets[t], qm.offsets[t] + qm.lengths[t], device=dev)
                                for t in tensors])
        self.m = qm.bits
        deltas = torch.cat([_finite(qm.flip_deltas(t, torch.arange(qm.lengths[t], device=dev),
                                                   cur[qm.offsets[t]:qm.offsets[t] + qm.lengths[t]]).to(dev))
                            for t in tensors])
        self.deltas = deltas * self._allowed(self.words)   # 0 where a flip is not allowed

    def _allowed(self, words: torch.Tensor) -> torch.Tensor:
        """float64 0/1 [len(words), m]: the bits of these words that may flip now."""
        ok = self.c.allowed(words, self.cur[words], self.qm.codes[words])
        return kernels.to_bits(ok, self.m).to(torch.float64)

    def local(self, words: torch.Tensor) -> torch.Tensor:
        """Positions in the attacked memory of global words (all attacked)."""
        return torch.searchsorted(self.words, words)

    def refresh(self, j: int, changed: torch.Tensor) -> None:
        """After a commit in attacked tensor ``j``: update the cached deltas and the allowed bits (``changed``:
        global word indices)."""
        t = self.tensors[j]
        pos = self.local(changed)
        d = _finite(self.qm.flip_deltas(t, changed - self.qm.offsets[t], self.cur[changed]).to(self.deltas))
        self.deltas[pos] = d * self._allowed(changed)
        page_words = self.c.mark(changed)
        if page_words is not None:
            pos = self.local(page_words)
            hit = pos < self.words.numel()
            pos, page_words = pos[hit], page_words[hit]
            hit = self.words[pos] == page_words
            if bool(hit.any()):
                self.deltas[pos[hit]] = 0

    def gains(self, grads: list[torch.Tensor], k: int | None) -> torch.Tensor:
        """float64 ``[words, m]``: first-order loss gain of every allowed flip (0 where not allowed or not positive;
        with ``k``, only the k words of each tensor with the largest |gradient|)."""
        g = torch.cat([gr.reshape(-1) for gr in grads]).to(device=self.deltas.device, dtype=torch.float64)
        gain = (g.unsqueeze(1) * self.deltas).clamp_(min=0)
        if k is not None:
            keep = torch.zeros(g.numel(), dtype=torch.bool, device=g.device)
            for j in range(len(self.tensors)):
                a, b = self.starts[j], self.starts[j + 1]
                if b - a > k:
                    top = torch.sort(g[a:b].abs(), descending=True, stable=True).indices[:k]
                    keep[a + top] = True
                else:
                    keep[a:b] = True
            gain[~keep] = 0
        return gain

    def best(self, gain: torch.Tensor, j: int, count: int):
        """The ``count`` best candidate flips of attacked tensor ``j`` as (global words, bits), or None if it has
        fewer; one per page where pages are limited."""
        a, b = self.starts[j], self.starts[j + 1]
        view = gain[a:b].reshape(-1)
        if count == 1:
            v, i = view.max(0)
            if not float(v) > 0:
                return None
            idx = i.view(1)
        else:
            vals, order = torch.sort(view, descending=True, stable=True)
            order = order[vals > 0]
            if self.c.page_words:
                order = order[kernels.first_per_group(self.c.page_of(self.words[a:b]), order // self.m)]
            if order.numel() < count:
                return None
            idx = order[:count]
        return self.words[a + idx // self.m], idx % self.m

    def apply(self, words: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip ``bits[i]`` of word ``words[i]`` in the current codes (a word may repeat); returns (unique words,
        their previous codes)."""
        uniq = torch.unique(words)
        old = self.cur[uniq].clone()
        for w, b in zip(words.tolist(), bits.tolist()):
            self.cur[w:w + 1] = kernels.flip_one_bit(self.cur[w:w + 1], torch.tensor([b]))
        return uniq, old


@register_attack("bfa", pattern=r"bfa_n(?P<n>-?[0-9]+)",
                 pattern_help="bfa_n{n} (progressive bit search: error after n flips, and the curve on the way)")
class BFA(Attack):
    """Bit-Flip Attack (progressive bit search, Rakin et al. 2019): the error after each flip count of a sweep and
    the flips needed to reach chance, over trials on attacker batches.

    Args:
        n: budget: the most bits to flip.
        k: candidate weights per tensor (largest |gradient|); none = every weight (the reference as run).
        biases: also attack the biases of conv/linear layers (the reference: weights only).
        layers: only tensors whose names match these fnmatch patterns, separated by '|' (none = all).
        labels: 'pred' (the clean model's predictions on the batch, as the reference) or 'true' (the split's labels).
        batch: attacker batch size (drawn from the attacker split).
        trials: number of trials; trial t draws its batch with seed seed + t.
        seed: seed of trial 0's batch.
        sweep: flip counts at which the evaluation error is recorded, separated by '|' (n is always included).
        target_err: evaluation error that counts as reached for flips_to_target (none = chance - 0.01, 0.89 for 10).
        stop: when a trial ends before the budget: 'target' (the evaluator says the test error reached the target --
            the attacker never sees the evaluation data --; without an evaluator, as 'budget'), 'chance' (the
            attacker's own batch reaches chance accuracy or collapses onto one class: such a trial may end before
            the test error reaches the target) or 'budget' (no stop before the budget; the search still ends when
            no flip raises the loss, 'no_gain').
        direction: flips the memory cells allow: 'any', '0to1' or '1to0'.
        page: at most one flipped bit per page of this many bytes of the memory image (0 = no limit; 4096).
        errmap: error-map file of the cells the attacker can flip (see attacks.constraints); none = every cell.
        tile: repeat the error map when the memory is larger than it.
    """

    kind = "adversarial"
    observes = True
    curve_metric = "err"
    stops = ("budget", "target", "chance", "collapse", "no_candidate", "no_gain")
    stop_modes = ("target", "chance", "budget")

    def __init__(self, n: int = 100, k: int | None = None, biases: bool = False, layers: str | None = None,
                 labels: str = "pred", batch: int = 128, trials: int = 5, seed: int = 0, sweep: str = DEFAULT_SWEEP,
                 target_err: float | None = None, stop: str = "target", direction: str = "any", page: int = 0,
                 errmap: str | None = None, tile: bool = False):
        self.n = check_int(n, "n", 0)
        self.k = None if k is None else check_int(k, "k", 1)
        self.biases = bool(biases)
        self.layers = layer_patterns(layers)
        if labels not in ("true", "pred"):
            raise SpecError(f"labels must be 'pred' (the model's predictions) or 'true', got {labels!r}")
        self.labels = labels
        self.batch = check_int(batch, "batch", 1)
        self.trials = check_int(trials, "trials", 1)
        self.seed = check_int(seed, "seed", 0, SEED_MAX - self.trials)  # trial t's batch: seed + t
        self.sweep = parse_sweep(sweep, self.n)
        if target_err is not None and (isinstance(target_err, bool) or not isinstance(target_err, (int, float))
                                       or not 0 < target_err <= 1):
            raise SpecError(f"target_err must be an error fraction in (0, 1] or none (chance), got {target_err!r}")
        self.curve_target = None if target_err is None else float(target_err)
        if stop not in self.stop_modes:
            raise SpecError(f"stop must be one of {', '.join(self.stop_modes)} (target: the evaluator's target ends "
                            f"a trial; budget: no stop before the budget), got {stop!r}")
        self.stop = stop
        self.constraints = FlipConstraints(direction, page, errmap, tile)
        self.flips = self.n

    def num_perturbations(self) -> int:
        return self.trials

    def input_digests(self) -> dict:
        return self.constraints.input_digests()

    def check(self, qm) -> None:
        """Refuse, before any training, constraints that do not fit ``qm`` or ``layers`` that match no tensor."""
        self.constraints.check(qm)
        if self.layers is not None:
            qm.select(self.layers)

    # -- objective (T-BFA overrides these) ----------------------------------------------------------------------
    def setup(self, victim: Victim, y_true: torch.Tensor) -> None:
        """Set the victim's labels and objective for a trial (clean model loaded)."""
        if self.labels == "pred":
            victim.y = victim.predictions()

    def reached(self, acc: float, pred: torch.Tensor, victim: Victim, chance: float) -> str | None:
        """Why the search stops at this state on the attacker's side (None: go on)."""
        if self.stop != "chance":
            return None
        if acc <= chance:
            return "chance"
        flat = pred.reshape(-1)   # every unit (example, or token of a language model) one class
        if flat.numel() and bool((flat == flat[0]).all()):
            return "collapse"
        return None

    def candidates(self, mem: _Memory, gain: torch.Tensor, grads: list, jt: int, count: int, left: int) -> list:
        """The flips of attacked tensor ``jt`` to try at this step, each ``(global words, bits)``: the ``count`` best
        (``left``: flips left in the budget). The adaptive BFA (:mod:`.bfa_adaptive`) overrides it."""
        cand = mem.best(gain, jt, count)
        return [] if cand is None else [cand]

    # -- the search -----------------------------------------------------------------------------------------------
    def run(self, qm, model, data, out: torch.Tensor | None = None, *, trial: int = 0, observe=None,
            train_mode: bool = False) -> Perturbation:
        """Trial ``trial`` of the attack on ``qm`` loaded into ``model`` with the attacker's ``data = (x, y)``."""
        if model is None:
            raise ValueError(f"{type(self).__name__} needs model= (the module whose parameters correspond to qm)")
        seed = self.seed + int(trial)
        x, y = attack_batch(data, self.batch, seed)
        tensors = attacked_tensors(qm, model, self.layers, self.biases)
        params = qm.parameters_of(model)
        cur = qm.codes.clone()
        trace: list[dict] = []
        flips = steps = 0
        with guard_module(model, [params[t] for t in tensors], train_mode):
            victim = Victim(qm, model, x, y, tensors=tensors, partial=True)
            victim.load(cur)
            self.setup(victim, y)
            chance, classes = victim.chance_accuracy(), victim.num_classes
            mem = _Memory(qm, tensors, cur, self.constraints.bind(qm))
            loss, acc, pred = victim.evaluate()
            done = observe(trial, cur, {"flips": 0, "loss": loss, "acc": acc}) if observe is not None else False
            stop = ("target" if done and self.stop == "target" else None) or self.reached(acc, pred, victim, chance) \
                or "budget"
            while stop == "budget" and flips < self.n:
                loss, acc, grads = victim.loss_grad()
                gain = mem.gains(grads, self.k)
                best, j = None, 1                 # best: (loss, acc, pred, tensor index, words, bits)
                while flips + j <= self.n:
                    tried = False
                    for jt, t in enumerate(tensors):
                        for words, bits in self.candidates(mem, gain, grads, jt, j, self.n - flips):
                            tried = True
                            uniq, old = mem.apply(words, bits)
                            victim.set_words(t, uniq - qm.offsets[t], cur[uniq])
                            t_loss, t_acc, t_pred = victim.evaluate(t)
                            cur[uniq] = old
                            victim.set_words(t, uniq - qm.offsets[t], old)
                            if best is None or t_loss > best[0]:
                                best = (t_loss, t_acc, t_pred, jt, words, bits)
                    if not tried or best[0] > loss:
                        break
                    j += 1
                if best is None:
                    stop = "no_candidate"
                    break
                if not best[0] > loss:
                    stop = "no_gain"
                    break
                loss, acc, pred, jt, words, bits = best
                t = tensors[jt]
                uniq, _ = mem.apply(words, bits)
                victim.set_words(t, uniq - qm.offsets[t], cur[uniq])
                mem.refresh(jt, uniq)
                flips += len(words)
                for w, b in zip(words.tolist(), bits.tolist()):
                    trace.append({"tensor": t, "name": qm.names[t], "index": int(w - qm.offsets[t]), "bit": int(b),
                                  "loss": float(loss), "acc": float(acc), "step": steps})
                steps += 1
                done = observe(trial, cur, {"flips": flips, "loss": loss, "acc": acc, "tensors": [t]}) \
                    if observe is not None else False
                stop = ("target" if done and self.stop == "target" else None) or \
                    self.reached(acc, pred, victim, chance) or "budget"
        if out is not None:
            out.copy_(cur)
            cur = out
        info = {"flips": flips, "loss": float(loss), "acc": float(acc), "stop": stop, "steps": steps,
                "batch": int(x.shape[0]), "seed": seed, "trial": int(trial), "classes": int(classes)}
        return Perturbation(codes=cur, index=int(trial), seed=seed, trace=trace, info=info)

    def perturbations(self, qm, *, model=None, data=None, out=None, indices=None, observe=None):
        out = check_out(qm, out)
        for t in check_indices(indices, self.trials):
            yield self.run(qm, model, data, out, trial=t, observe=observe)
