"""Random bit errors: the shared, seeded pattern definition (shared/design/bit-error-patterns.md).

Pattern ``k`` (k = 0 .. patterns-1) uses seed ``base_seed + k`` and is exactly

    kernels.random_flip(qm.codes, p, p10, seed=base_seed + k, bits=qm.bits, protected=qm.protected)

over the whole flat memory with global word offsets: every model with the same layout meets the same faulty cells
(the same "chip"), and the bits flipped at a lower rate are a subset of those flipped at a higher rate.

A protected memory (``rquant+secded``: :class:`defenses.protection.ProtectedModel`) is drawn over its whole image:
the data words exactly as above, then every stored check region with the same rule and seed at its global offset
(``kernels.random_flip(region.words, p, p10, seed=..., bits=region.bits, offset=region.offset)``). With ``layers``
and for ``random_msb`` only data words flip (the check bits stay as stored).

Spec forms::

    random_p0.01                 1% of the attackable bits flip (0->1 and 1->0)
    random_p0.01:p10=0.005       separate 1->0 rate
    random_p0.01:layers=conv*|features.0.*    only these tensors (fnmatch patterns separated by '|')
    random_msb_p0.01             only the most significant attackable bit (m-1) of each word may flip
"""

from __future__ import annotations

import torch

from bitbench import kernels
from bitbench.configs.registries import register_attack
from bitbench.configs.spec import SpecError
from bitbench.configs.suite import MAX_PATTERNS

from .base import Attack, Perturbation, check_indices, check_int, check_out, check_rate

__all__ = ["RandomBitErrors", "RandomMSBErrors", "layer_patterns"]

_RATE = r"(?P<p>[+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"


def layer_patterns(layers) -> list[str] | None:
    """``'conv*|fc.weight'`` -> ``['conv*', 'fc.weight']`` (None: every tensor)."""
    if layers is None:
        return None
    if isinstance(layers, (list, tuple)):
        pats = [str(s).strip() for s in layers]
    else:
        pats = [s.strip() for s in str(layers).split("|")]
    pats = [s for s in pats if s]
    if not pats:
        raise SpecError(f"layers must name at least one fnmatch pattern (separated by '|'), got {layers!r}")
    return pats


@register_attack("random", pattern=r"random_p" + _RATE,
                 pattern_help="random_p{p} (p: bit error rate as a fraction, random_p0.01 = 1%)")
class RandomBitErrors(Attack):
    """Random bit errors at rate p (the shared seeded pattern definition; pattern k uses seed base_seed + k).

    Args:
        p: bit error rate as a fraction in [0, 1] (0.01 = 1%); the 0->1 rate when p10 is given.
        p10: 1->0 rate (fraction); none = the same as p.
        patterns: number K of patterns (chips), seeds base_seed .. base_seed + K - 1.
        base_seed: seed of pattern 0 (the paper: 100).
        layers: only flip bits in tensors matching these fnmatch patterns, separated by '|' (none = all).
    """

    kind = "random"
    msb_only = False

    def __init__(self, p: float = 0.01, p10: float | None = None, patterns: int = 50, base_seed: int = 100,
                 layers: str | None = None):
        self.p = check_rate(p, "p")
        self.p10 = check_rate(p10, "p10", allow_none=True)
        self.patterns = check_int(patterns, "patterns", 1, MAX_PATTERNS)
        self.base_seed = check_int(base_seed, "base_seed", 0, (1 << 64) - self.patterns)
        self.layers = layer_patterns(layers)
        self.rate = self.p

    def num_perturbations(self) -> int:
        return self.patterns

    def seed(self, k: int) -> int:
        return self.base_seed + k

    def seeds(self) -> list[int]:
        return [self.seed(k) for k in range(self.patterns)]

    def protected(self, qm) -> int:
        """The constant protected-bit mask for ``qm`` (the scheme's, plus every bit but m-1 for MSB-only)."""
        prot = int(qm.protected)
        if self.msb_only:
            width = kernels.DTYPE_WIDTH[qm.codes.dtype]
            prot |= ((1 << width) - 1) & ~(1 << (qm.bits - 1))
        return prot

    def pattern(self, qm, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The perturbed codes of pattern ``k`` (into ``out`` if given)."""
        seed = self.seed(k)
        prot = self.protected(qm)
        if self.layers is None:
            return kernels.random_flip(qm.codes, self.p, self.p10, seed=seed, bits=qm.bits, protected=prot, out=out)
        if out is None:
            out = torch.empty_like(qm.codes)
        out.copy_(qm.codes)
        for t in qm.select(self.layers):
            o, n = qm.offsets[t], qm.lengths[t]
            if n:
                kernels.random_flip(qm.codes[o:o + n], self.p, self.p10, seed=seed, bits=qm.bits, protected=prot,
                                    offset=o, out=out[o:o + n])
        return out

    def check_pattern(self, qm, k: int, outs: list | None = None) -> list | None:
        """The perturbed check words of pattern ``k`` for a protected memory, one tensor per stored check region
        (into ``outs`` if given); None when the memory has none or only data words flip (``layers``, MSB only)."""
        regions = getattr(qm, "check_regions", None)
        if not regions or self.layers is not None or self.msb_only:
            return None
        seed = self.seed(k)
        outs = outs or [None] * len(regions)
        return [kernels.random_flip(r.words, self.p, self.p10, seed=seed, bits=r.bits, offset=r.offset, out=o)
                for r, o in zip(regions, outs)]

    def perturbations(self, qm, *, model=None, data=None, out=None, indices=None):
        out = check_out(qm, out)
        ks = check_indices(indices, self.patterns)
        if self.layers is not None:
            qm.select(self.layers)  # refuse patterns that match nothing before the first item
        regions = getattr(qm, "check_regions", None) or []
        check_out_ = [torch.empty_like(r.words) for r in regions] if out is not None else None
        for k in ks:
            codes = self.pattern(qm, k, out)
            check = self.check_pattern(qm, k, check_out_)
            info = {"flips": kernels.hamming_total(qm.codes, codes, bits=qm.bits)}
            if check is not None:
                info["check_flips"] = sum(kernels.hamming_total(r.words, c, bits=r.bits)
                                          for r, c in zip(regions, check))
            yield Perturbation(codes=codes, index=k, seed=self.seed(k), info=info, check=check)


@register_attack("random_msb", pattern=r"random_msb_p" + _RATE,
                 pattern_help="random_msb_p{p} (only the most significant bit of each word flips, at rate p)")
class RandomMSBErrors(RandomBitErrors):
    """Random bit errors in the most significant attackable bit (m-1) only; all other bits are protected.

    The same Philox numbers as random_p{p}: its flips are exactly those of random_p{p} that hit bit m-1.

    Args:
        p: rate at which bit m-1 flips (fraction in [0, 1]); the 0->1 rate when p10 is given.
        p10: 1->0 rate (fraction); none = the same as p.
        patterns: number K of patterns, seeds base_seed .. base_seed + K - 1.
        base_seed: seed of pattern 0.
        layers: only flip bits in tensors matching these fnmatch patterns, separated by '|' (none = all).
    """

    msb_only = True
