"""Budgeted bit attack (Stutz et al., TPAMI 2022), re-implemented from its published description; the protocol: docs/adversarial.md.

Maximise the cross-entropy on the attacker's batch over perturbed codes that differ from the clean codes in at most
``eps`` bits, at most one bit per word. Projected gradient ascent, run in code space (the gradient w.r.t. the codes
is ``dL/dq = dL/dw * dw/dq``, the quantized model's linearization :meth:`QuantizedModel.dweight_dcode`). Code space
is the format's (:meth:`QuantizedModel.code_values`): the integer codes of affine formats, the sign-magnitude
ordinals of float formats (their code range ``2^m`` is the ordinals of the finite values; ``dw/dq`` the ulp):

1. gradient ``g = dL/dq`` at the current (projected) codes, normalised by its largest magnitude; momentum
   ``v <- momentum * v + g``;
2. step ``z = q + step * 2^m * v / max|v|`` (``step`` is a fraction of the code range, so the strongest component
   moves by ``step * 2^m`` levels), re-quantized: rounded and clamped to the code range;
3. projection (:func:`kernels.budget_projection`): the ``eps`` words whose codes moved most (ranked by ``|z - q0|``)
   keep only their most significant changed bit that the threat model allows (:mod:`.constraints`: direction,
   error map; at most one word per page), every other word is reset to its clean code;
4. backtracking: the projected point is accepted if the attacker loss does not decrease, else it is rejected and
   the step is halved.

Restart 0 starts from the clean codes, restart ``r >= 1`` from ``eps`` random allowed single-bit flips (seeded by
the trial's seed and ``r``). The perturbation with the highest attacker loss over all restarts and iterations is
kept. The model runs in eval mode; the trace lists every flipped bit (all with the final loss/accuracy, the flips
act together). Trials: trial ``t`` draws its batch (and restarts) with seed ``seed + t``.

One run per budget: a search under budget eps shares nothing with one under another eps but the first gradient, so
``budget_e10``, ``budget_e40`` and ``budget_e160`` are separate runs (each with its own curve point at eps).
"""

from __future__ import annotations

import torch

from bitbench import kernels
from bitbench.configs.registries import register_attack
from bitbench.configs.spec import SpecError

from .base import (SEED_MAX, Attack, Perturbation, Victim, attack_batch, check_indices, check_int, check_out,
                   guard_module)
from .constraints import FlipConstraints

__all__ = ["BudgetAttack"]


@register_attack("budget", pattern=r"budget_e(?P<eps>-?[0-9]+)",
                 pattern_help="budget_e{eps} (projected-gradient attack, at most eps flipped bits, one per weight)")
class BudgetAttack(Attack):
    """Budgeted projected-gradient bit attack: at most eps flipped bits, at most one per weight, with restarts.

    Args:
        eps: budget: the most bits (= weights) that may differ from the clean codes.
        iterations: gradient steps per restart.
        restarts: number of runs (the first from the clean codes, the others from random eps-bit perturbations).
        step: initial step, a fraction of the code range 2^m (top component moves step*2^m levels; halved if loss drops)
        momentum: momentum of the normalised gradient.
        seed: seed of trial 0's attacker batch and random restarts (trial t: seed + t).
        batch: attacker batch size (drawn from the attacker split with the trial's seed).
        labels: 'true' (the attacker split's labels) or 'pred' (the clean model's predictions).
        trials: number of trials (attacker batches).
        direction: flips the memory cells allow: 'any', '0to1' or '1to0'.
        page: at most one flipped bit per page of this many bytes of the memory image (0 = no limit; 4096).
        errmap: error-map file of the cells the attacker can flip (see attacks.constraints); none = every cell.
        tile: repeat the error map when the memory is larger than it.
    """

    kind = "adversarial"
    stops = ("budget",)

    def __init__(self, eps: int = 40, iterations: int = 20, restarts: int = 1, step: float = 1.0,
                 momentum: float = 0.9, seed: int = 0, batch: int = 128, labels: str = "true", trials: int = 5,
                 direction: str = "any", page: int = 0, errmap: str | None = None, tile: bool = False):
        self.eps = check_int(eps, "eps", 0)
        self.iterations = check_int(iterations, "iterations", 0)
        self.restarts = check_int(restarts, "restarts", 1)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 16:
            raise SpecError(f"step must be a fraction of the code range 2^m in (0, 16], got {step!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise SpecError(f"momentum must be in [0, 1), got {momentum!r}")
        self.step = float(step)
        self.momentum = float(momentum)
        self.seed = check_int(seed, "seed", 0, SEED_MAX - 1024)  # restarts and trials add to it
        self.batch = None if batch is None else check_int(batch, "batch", 1)
        if labels not in ("true", "pred"):
            raise SpecError(f"labels must be 'true' or 'pred', got {labels!r}")
        self.labels = labels
        self.trials = check_int(trials, "trials", 1)
        self.constraints = FlipConstraints(direction, page, errmap, tile)
        self.flips = self.eps
        self.sweep = [self.eps] if self.eps >= 1 else []

    def num_perturbations(self) -> int:
        return self.trials

    def input_digests(self) -> dict:
        return self.constraints.input_digests()

    def check(self, qm) -> None:
        """Refuse, before any training, constraints that do not fit ``qm``."""
        self.constraints.check(qm)

    def _random_init(self, clean: torch.Tensor, allowed: torch.Tensor, groups, m: int,
                     g: torch.Generator) -> torch.Tensor:
        """``eps`` random allowed single-bit flips of distinct words (distinct groups where given)."""
        cand = torch.nonzero(allowed.cpu() != 0, as_tuple=True)[0]
        words = cand[torch.randperm(cand.numel(), generator=g)]
        if groups is not None:
            words = words[kernels.first_per_group(groups.cpu(), words)]
        words = words[: self.eps]
        ok = kernels.to_bits(allowed.cpu()[words], m).to(torch.float64)
        bits = torch.multinomial(ok, 1, generator=g).view(-1) if words.numel() else words
        out = clean.clone()
        w = words.to(clean.device)
        out[w] = kernels.flip_one_bit(clean[w], bits)
        return out

    def _trace(self, qm, clean: torch.Tensor, codes: torch.Tensor, loss: float, acc: float) -> list[dict]:
        d = kernels.bit_xor(clean, codes).cpu()
        words = torch.nonzero(d, as_tuple=True)[0]
        offs = torch.tensor(qm.offsets, dtype=torch.int64)
        ts = torch.searchsorted(offs, words, right=True) - 1
        bits = kernels.to_bits(d[words])
        trace = []
        for w, t, row in zip(words.tolist(), ts.tolist(), bits.tolist()):
            for b, on in enumerate(row):
                if on:
                    trace.append({"tensor": t, "name": qm.names[t], "index": w - qm.offsets[t], "bit": b,
                                  "loss": float(loss), "acc": float(acc)})
        return trace

    def run(self, qm, model, data, out: torch.Tensor | None = None, *, seed: int | None = None,
            train_mode: bool = False) -> Perturbation:
        """The attack on ``qm`` loaded into ``model`` with the attacker's ``data = (x, y)``.

        ``seed`` overrides :attr:`seed` (AdvBET draws one per training step); ``train_mode`` runs the model in
        training mode (buffers such as batch-norm statistics are restored afterwards).
        """
        if model is None:
            raise ValueError("the budgeted attack needs model= (the module whose parameters correspond to qm)")
        seed = self.seed if seed is None else int(seed)
        x, y = attack_batch(data, self.batch, seed)
        clean = qm.codes
        dev = clean.device
        q0 = qm.code_values()  # float64 code values (affine: the integer codes; floats: sign-magnitude ordinals)
        dw_dq = qm.dweight_dcode().to(device=dev, dtype=torch.float64)
        allowed = groups = None                 # unconstrained: every attackable bit, no page limit
        if self.constraints.active:
            bound = self.constraints.bind(qm)
            words = torch.arange(qm.n_words, device=dev)
            allowed = bound.allowed(words, clean, clean)
            groups = bound.page_of(words) if bound.page_words else None
        levels = float(qm.scheme.code_max - qm.scheme.code_min + 1)  # the code range (2^m for affine codes)
        params = qm.parameters_of(model)
        best_codes, best_loss, best_acc, best_restart = clean.clone(), None, None, 0
        evals = 0
        with guard_module(model, params, train_mode):
            victim = Victim(qm, model, x, y)
            victim.load(clean)
            if self.labels == "pred":
                victim.y = victim.predictions()
            for r in range(self.restarts):
                g = torch.Generator().manual_seed((seed * 1_000_003 + r) % (1 << 63))
                if r == 0:
                    cur = clean.clone()
                else:
                    ok = allowed if allowed is not None else kernels.flippable(clean, bits=qm.bits,
                                                                               protected=int(qm.protected))
                    cur = self._random_init(clean, ok, groups, qm.bits, g)
                victim.load(cur)
                loss, acc, grads = victim.loss_grad()
                evals += 1
                if best_loss is None or loss > best_loss:
                    best_codes, best_loss, best_acc, best_restart = cur.clone(), loss, acc, r
                v = torch.zeros(qm.n_words, dtype=torch.float64, device=dev)
                step = self.step * levels
                for _ in range(self.iterations):
                    gq = torch.cat([gr.reshape(-1) for gr in grads]).to(device=dev, dtype=torch.float64) * dw_dq
                    gmax = float(gq.abs().max()) if gq.numel() else 0.0
                    if gmax == 0.0:
                        break
                    v.mul_(self.momentum).add_(gq / gmax)
                    z = qm.code_values(cur) + (step / float(v.abs().max())) * v
                    q = qm.words_from_code_values(z)  # rounded and clamped to the code range, as words
                    cand = kernels.budget_projection(clean, q, self.eps, bits=qm.bits, score=(z - q0).abs(),
                                                     allowed=allowed, groups=groups)
                    if torch.equal(cand, cur):
                        continue
                    victim.load(cand)
                    c_loss, c_acc, c_grads = victim.loss_grad()
                    evals += 1
                    if c_loss >= loss:
                        cur, loss, acc, grads = cand, c_loss, c_acc, c_grads
                        if loss > best_loss:
                            best_codes, best_loss, best_acc, best_restart = cur.clone(), loss, acc, r
                    else:
                        victim.load(cur)
                        step *= 0.5
        flips = kernels.hamming_total(clean, best_codes, bits=qm.bits)
        trace = self._trace(qm, clean, best_codes, best_loss, best_acc)
        if out is not None:
            out.copy_(best_codes)
            best_codes = out
        info = {"flips": flips, "loss": float(best_loss), "acc": float(best_acc), "restart": best_restart,
                "evaluations": evals, "batch": int(x.shape[0]), "seed": seed, "stop": "budget"}
        return Perturbation(codes=best_codes, index=0, seed=seed, trace=trace, info=info)

    def perturbations(self, qm, *, model=None, data=None, out=None, indices=None):
        out = check_out(qm, out)
        for t in check_indices(indices, self.trials):
            p = self.run(qm, model, data, out, seed=self.seed + t)
            p.index = t
            yield p
