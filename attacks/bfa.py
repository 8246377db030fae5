"""BFA: the progressive bit search of Rakin, He and Fan (ICCV 2019, "Bit-Flip Attack"), re-implemented from the
facts in shared/design/adversarial.md.

Threat model: the attacker knows the integer codes and has a batch of the attacker split (labels: the true ones or
the model's own predictions); it flips as few bits as possible to destroy accuracy. Each iteration:

1. one forward/backward pass on the attack batch gives dL/dw for every quantized tensor;
2. per tensor, the ``k`` weights with the largest |dL/dw| are candidates; flipping bit ``b`` of code ``q`` changes
   ``w`` by ``(q' - q) * scale`` where ``q'`` is ``q`` with bit ``b`` flipped read in the storage format (``+-2^b``,
   and for two's complement codes the sign bit has weight ``-2^(m-1)``); the first-order loss change is
   ``dL/dw * (q' - q) * scale``. The best bit of each candidate weight is kept if it raises the loss;
3. the best candidate of every tensor is tried (actual loss on the attack batch, then undone) and the tensor whose
   flip gives the highest loss is committed (inter-layer search). If no tensor's flip raises the loss, the best
   two, then three candidate weights of each tensor are tried together (one bit each). If even that does not raise
   the loss the highest-loss trial is committed anyway (documented choice: the attack always spends its budget
   while it has candidates; such steps are marked ``improved: False`` in the trace).

It stops after ``n`` flipped bits, when the attack batch accuracy is at chance (``<= 1 / classes``) or when no
candidate flip exists (all gradients zero). The model runs in eval mode. Every committed flip is recorded in the
trace; ``info['flips']`` equals the Hamming distance between the clean and the attacked codes.
"""

from __future__ import annotations

import torch

from bitbench import kernels
from bitbench.configs.registries import register_attack
from bitbench.configs.spec import SpecError

from .base import Attack, Perturbation, Victim, attack_batch, check_indices, check_int, check_out, guard_module

__all__ = ["BFA", "flip_deltas"]


def flip_deltas(codes: torch.Tensor, bits: int, protected: int = 0) -> torch.Tensor:
    """int64 ``[n, bits]``: the code change ``q' - q`` of flipping bit b of each code (0 for protected bits); see
    :func:`kernels.flip_deltas`."""
    return kernels.flip_deltas(codes, bits, protected)


@register_attack("bfa", pattern=r"bfa_n(?P<n>-?[0-9]+)", pattern_help="bfa_n{n} (progressive bit search, n flips)")
class BFA(Attack):
    """Bit-Flip Attack (progressive bit search, Rakin et al. 2019) with a budget of n flipped bits.

    Args:
        n: budget: number of bits to flip (stops earlier at chance accuracy).
        k: candidate weights per tensor (largest |gradient|).
        batch: attacker batch size (drawn from the attacker split with seed).
        seed: seed of the attacker batch selection.
        labels: 'true' (the attacker split's labels) or 'pred' (the clean model's predictions).
    """

    kind = "adversarial"

    def __init__(self, n: int = 20, k: int = 10, batch: int = 128, seed: int = 0, labels: str = "true"):
        self.n = check_int(n, "n", 0)
        self.k = check_int(k, "k", 1)
        self.batch = check_int(batch, "batch", 1)
        self.seed = check_int(seed, "seed", 0)
        if labels not in ("true", "pred"):
            raise SpecError(f"labels must be 'true' or 'pred', got {labels!r}")
        self.labels = labels
        self.flips = self.n

    def num_perturbations(self) -> int:
        return 1

    # -- candidates -----------------------------------------------------------------------------------------------
    def _candidates(self, qm, cur: torch.Tensor, grads: list[torch.Tensor]):
        """Per tensor: (gains, flat indices, bits) of its candidate flips, best first, gains > 0 only."""
        out = []
        for t, g in enumerate(grads):
            n = qm.lengths[t]
            if n == 0:
                out.append(None)
                continue
            g = g.reshape(-1).to(device=cur.device, dtype=torch.float64)
            kk = min(self.k, n)
            top = torch.topk(g.abs(), kk, sorted=True).indices
            o = qm.offsets[t]
            gain = g[top].unsqueeze(1) * qm.flip_deltas(t, top, cur[o:o + n][top]).to(g.device)
            best_gain, best_bit = gain.max(1)
            order = torch.sort(best_gain, descending=True, stable=True).indices
            keep = order[best_gain[order] > 0]
            if keep.numel() == 0:
                out.append(None)
                continue
            out.append((best_gain[keep], top[keep], best_bit[keep]))
        return out

    def _apply(self, victim: Victim, qm, cur: torch.Tensor, t: int, idx: torch.Tensor, bits: torch.Tensor):
        """Flip bits[i] of word idx[i] of tensor t in cur and in the model; returns the undo information."""
        o = qm.offsets[t]
        view = cur[o:o + qm.lengths[t]]
        old = view[idx].clone()
        new = kernels.flip_one_bit(old, bits)
        view[idx] = new
        victim.set_words(t, idx, new)
        return old

    def _undo(self, victim: Victim, qm, cur: torch.Tensor, t: int, idx: torch.Tensor, old: torch.Tensor):
        o = qm.offsets[t]
        cur[o:o + qm.lengths[t]][idx] = old
        victim.set_words(t, idx, old)

    # -- the search -----------------------------------------------------------------------------------------------
    def run(self, qm, model, data, out: torch.Tensor | None = None, train_mode: bool = False) -> Perturbation:
        if model is None:
            raise ValueError("BFA needs model= (the module whose parameters correspond to qm)")
        x, y = attack_batch(data, self.batch, self.seed)
        cur = qm.codes.clone()
        trace: list[dict] = []
        params = qm.parameters_of(model)
        stop = "budget"
        with guard_module(model, params, train_mode):
            victim = Victim(qm, model, x, y)
            victim.load(cur)
            if self.labels == "pred":
                victim.y = victim.predictions()
            chance = 1.0 / victim.num_classes
            flips = 0
            step = 0
            loss, acc = victim.loss_acc()
            while flips < self.n:
                if acc <= chance:
                    stop = "chance"
                    break
                loss, acc, grads = victim.loss_grad()
                cands = self._candidates(qm, cur, grads)
                if all(c is None for c in cands):
                    stop = "no_candidate"
                    break
                best = None          # (loss, acc, t, idx, bits, improved)
                for j in (1, 2, 3):
                    if flips + j > self.n:
                        break
                    for t, c in enumerate(cands):
                        if c is None or c[1].numel() < j:
                            continue
                        idx, bits = c[1][:j], c[2][:j]
                        old = self._apply(victim, qm, cur, t, idx, bits)
                        trial_loss, trial_acc = victim.loss_acc()
                        self._undo(victim, qm, cur, t, idx, old)
                        if best is None or trial_loss > best[0]:
                            best = (trial_loss, trial_acc, t, idx, bits, trial_loss > loss)
                    if best is not None and best[5]:
                        break
                if best is None:
                    stop = "no_candidate"
                    break
                new_loss, new_acc, t, idx, bits, improved = best
                self._apply(victim, qm, cur, t, idx, bits)
                loss, acc = new_loss, new_acc
                for i, b in zip(idx.tolist(), bits.tolist()):
                    trace.append({"tensor": t, "name": qm.names[t], "index": int(i), "bit": int(b),
                                  "loss": float(loss), "acc": float(acc), "step": step, "improved": bool(improved)})
                flips += len(idx)
                step += 1
            if flips >= self.n and acc <= chance:
                stop = "chance"
        if out is not None:
            out.copy_(cur)
            cur = out
        info = {"flips": flips, "loss": float(loss), "acc": float(acc), "stop": stop, "steps": step,
                "batch": int(x.shape[0]), "seed": self.seed}
        return Perturbation(codes=cur, index=0, seed=None, trace=trace, info=info)

    def perturbations(self, qm, *, model=None, data=None, out=None, indices=None):
        out = check_out(qm, out)
        if 0 not in check_indices(indices, 1):
            return
        yield self.run(qm, model, data, out)
