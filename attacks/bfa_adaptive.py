"""Adaptive BFA: the progressive bit search of :mod:`.bfa` by an attacker who knows the memory's checksum scheme
(RADAR-style group signatures, :mod:`bitbench.defenses.protection.radar`: the groups, the signs, the covered bit and
the key) and keeps every signature intact, so the checksums see nothing and recover nothing.

Each step considers, in every attacked tensor:

* *invisible* single flips: bits the signature does not cover (every bit but the covered one);
* *cancelling pairs* of covered bits in one group: a signature changes by ``s_i`` when word ``i``'s covered bit goes
  0 -> 1 and by ``-s_i`` when it goes 1 -> 0 (``s_i`` = +-1 by the key), so two flips whose changes are opposite
  leave it unchanged. The first word is the covered flip with the largest first-order gain, its partner the word of
  the same group with the opposite change and the largest gain (possibly negative: the least harmful). A pair costs
  two flips of the budget.

Both are tried by their exact loss on the batch, as BFA tries its candidates; the best is committed. A memory
without a checksum stage is attacked exactly as by ``bfa``; more than one checksum stage is refused. Parameters and
stopping rules are BFA's.
"""

from __future__ import annotations

import inspect

import torch

from bitbench.configs.errors import UsageError
from bitbench.configs.registries import register_attack

from .bfa import BFA

__all__ = ["AdaptiveBFA", "checksum_stage"]


def checksum_stage(qm):
    """The RADAR-style stage of a protected memory (None if it has none); more than one is refused."""
    from bitbench.defenses.protection.radar import RADARStage

    stages = [st for st in qm.stages if isinstance(st, RADARStage)]
    if len(stages) > 1:
        raise UsageError(f"bfa_adaptive knows one checksum stage; the memory has {len(stages)}")
    return stages[0] if stages else None


_DOC = ("Adaptive Bit-Flip Attack: BFA that keeps the memory's checksum signatures intact.\n\nIt flips uncovered "
        "bits and cancelling pairs of covered bits inside a group; on a memory without checksums it is BFA.\n\nArgs:"
        + inspect.getdoc(BFA).split("Args:", 1)[1])


@register_attack("bfa_adaptive", pattern=r"bfa_adaptive_n(?P<n>-?[0-9]+)", doc=_DOC,
                 pattern_help="bfa_adaptive_n{n} (BFA that knows the checksums and keeps them intact, n flips)")
class AdaptiveBFA(BFA):
    __doc__ = _DOC

    def run(self, qm, model, data, out=None, **kw):
        self._stage = checksum_stage(qm)
        try:
            pert = super().run(qm, model, data, out, **kw)
        finally:
            stage, self._stage = self._stage, None
        if stage is not None:
            pert.info["adaptive"] = stage.protection.registry_name
        return pert

    def candidates(self, mem, gain, grads, jt, count, left):
        st = getattr(self, "_stage", None)
        if st is None:
            return super().candidates(mem, gain, grads, jt, count, left)
        b = st.bit
        visible = gain[:, b].clone()
        gain[:, b] = 0                         # a single covered flip would change its group's signature
        try:
            out = super().candidates(mem, gain, grads, jt, count, left)
        finally:
            gain[:, b] = visible
        if count == 1 and left >= 2:
            pair = self._pair(mem, grads, jt, st)
            if pair is not None:
                out.append(pair)
        return out

    @staticmethod
    def _pair(mem, grads, jt, st):
        """The best cancelling pair of covered-bit flips inside one group of tensor ``jt``, or None."""
        a, b = mem.starts[jt], mem.starts[jt + 1]
        bit = st.bit
        g = grads[jt].reshape(-1).to(device=mem.deltas.device, dtype=torch.float64)
        d = mem.deltas[a:b, bit]
        allowed = d != 0
        if int(allowed.sum()) < 2:
            return None
        words = mem.words[a:b]
        raw = torch.where(allowed, g * d, torch.full_like(d, -torch.inf))   # first-order gain of each covered flip
        dev = raw.device
        grp = st.group_of.to(dev)[words].to(torch.int64)
        up = ((mem.cur[words].to(torch.int64) >> bit) & 1) == 0             # the covered bit goes 0 -> 1
        change = torch.where(up, st.sign.to(dev)[words], -st.sign.to(dev)[words])
        key = grp * 2 + (change > 0).to(torch.int64)      # the partner of key q has key q ^ 1 (opposite change)
        nk = 2 * st.n_groups
        best = torch.full((nk,), -torch.inf, dtype=torch.float64, device=dev).scatter_reduce(0, key, raw, "amax")
        n = words.numel()
        pos = torch.arange(n, device=dev)
        first = torch.full((nk,), n, dtype=torch.int64, device=dev).scatter_reduce(   # lowest index of the best
            0, key, torch.where(allowed & (raw == best[key]), pos, torch.full_like(pos, n)), "amin")
        partner = key ^ 1
        total = torch.where(allowed & (first[partner] < n), raw + best[partner], torch.full_like(raw, -torch.inf))
        v, i = total.max(0)
        if not float(v) > 0:
            return None
        j = first[partner[i]]
        return torch.stack([words[i], words[j]]), torch.tensor([bit, bit], device=words.device)
