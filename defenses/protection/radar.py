"""RADAR-style checksums (after Li et al., DATE 2021, "RADAR: Run-time Adversarial Weight Attack Detection and
Accuracy Recovery"): a small signature per group of weights, checked before inference; flagged groups are zeroed.

Groups: within each tensor, a secret permutation (seeded by ``key`` and the tensor's index) interleaves the words,
and every ``group`` consecutive words of the permuted order form a group (the last group of a tensor holds the
remainder), so neighbouring words of one memory row fall into different groups. Group ``G`` of tensor ``t`` has
global index ``(groups of the tensors before t) + G``.

Signature: ``S = (sum over the group's words i of s_i * b_i) mod 2^bits``, where ``b_i`` is the covered bit of
word ``i`` (default the most significant attackable bit, ``m - 1``) and ``s_i`` is +1 or -1 by the secret key.
One flip of a covered bit in a group changes ``S`` (always detected); two flips in one group cancel when their
signed changes cancel (a pair the attacker chooses knowing the key, or by chance); a flip of any other bit is never
seen. The golden signatures live in secure storage (``secure=true``, RADAR's assumption: bit errors never reach
them) or in the protected image (``secure=false``: random errors there raise false alarms).
"""

from __future__ import annotations

import torch

from bitbench import kernels
from bitbench.configs.registries import register_protection
from bitbench.configs.spec import SpecError

from .base import CheckRegion, Protection, Stage, check_policy

__all__ = ["RADAR", "RADARStage"]


def _positive_int(v, name: str, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (hi is not None and v > hi):
        rng = f"in 1..{hi}" if hi else ">= 1"
        raise SpecError(f"{name} must be an integer {rng}, got {v!r}")
    return int(v)


@register_protection("radar")
class RADAR(Protection):
    """RADAR-style group checksums: a keyed MSB signature per group of interleaved weights.

    Groups whose signature mismatches before inference are zeroed (RADAR's recovery) under the default policy.

    Args:
        group: words per group (the memory overhead is bits / (group * m)).
        bits: signature bits (2 in RADAR): the signed sum of the covered bits modulo 2^bits.
        bit: the covered bit of each word (none: the most significant attackable bit, m - 1; bit 0 = LSB).
        key: the secret key (seed of the interleaving permutations and of the signs).
        secure: the golden signatures are kept in secure storage (bit errors never reach them); false: they are
            stored in the protected image.
        policy: flagged groups: 'zero' (their words hold weight 0, RADAR's recovery), 'keep' (detection only) or
            'fail' (the inference fails).
    """

    counts = {"flagged": "groups whose signature mismatched", "flips": "data bits flipped",
              "detected_flips": "flipped data bits inside flagged groups"}
    flagged = "flagged"
    ratios = {"detection": ["detected_flips", "flips"]}

    def __init__(self, group: int = 16, bits: int = 2, bit: int | None = None, key: int = 0, secure: bool = True,
                 policy: str = "zero"):
        self.group = _positive_int(group, "group")
        self.bits = _positive_int(bits, "bits", 16)
        if bit is not None and (isinstance(bit, bool) or not isinstance(bit, int) or bit < 0):
            raise SpecError(f"bit must be a bit index >= 0 (0 = LSB) or none (the MSB), got {bit!r}")
        self.bit = None if bit is None else int(bit)
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 1 << 62:
            raise SpecError(f"key must be an integer in [0, 2^62), got {key!r}")
        self.key = int(key)
        self.secure = bool(secure)
        self.policy = check_policy(policy)

    def bind(self, qm) -> "RADARStage":
        return RADARStage(self, qm)

    def describe(self, stage) -> dict:
        return dict(super().describe(stage), groups=stage.n_groups, covered_bit=stage.bit)


class RADARStage(Stage):
    """RADAR bound to one memory: ``group_of`` (int32 [N], each word's global group), ``sign`` (int8 [N], +1/-1),
    golden signatures in ``region.words``. Counts: ``radar.flagged`` (groups whose signature mismatches),
    ``radar.flips`` (data bits that differ from the stored data when the check runs) and ``radar.detected_flips``
    (those inside flagged groups; detection rate = detected_flips / flips).

    Size and speed: 5 bytes of state per word (the group index and the sign); the check of a pattern updates the
    clean signatures with the words read differently from the stored ones only (the signature is a sum), so it
    costs one comparison pass over the memory plus work in the changed words."""

    def __init__(self, protection: RADAR, qm):
        self.protection = protection
        m = qm.bits
        self.bit = m - 1 if protection.bit is None else protection.bit
        if self.bit >= m:
            raise SpecError(f"radar:bit={self.bit} is not one of the memory's attackable bits 0..{m - 1}")
        dev = qm.codes.device
        g = protection.group
        group_of = torch.empty(qm.n_words, dtype=torch.int32)
        base = 0
        for t, (o, n) in enumerate(zip(qm.offsets, qm.lengths)):
            gen = torch.Generator().manual_seed((protection.key * 1_000_003 + t) % (1 << 63))
            perm = torch.randperm(n, generator=gen)
            group_of[o + perm] = (base + torch.div(torch.arange(n), g, rounding_mode="floor")).to(torch.int32)
            base += -(-n // g)
        gen = torch.Generator().manual_seed((protection.key * 1_000_003 + 999_983) % (1 << 63))
        # int8 draws: the same numbers as int64 draws of the generator, a quarter of the memory
        self.sign = (torch.randint(0, 2, (qm.n_words,), generator=gen, dtype=torch.int8) * 2 - 1).to(dev)
        self.group_of = group_of.to(dev)
        self.n_groups = base
        self.mod = 1 << protection.bits
        golden = self.signatures(qm.codes)
        self.clean_signatures = golden
        self.region = CheckRegion("radar", golden.to(kernels.ecc.check_dtype(protection.bits)), protection.bits,
                                  stored=not protection.secure)

    def signatures(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 [groups]: the signature of every group of ``codes``."""
        return self._signed_sums(codes, self.group_of, self.sign, torch.zeros(self.n_groups, dtype=torch.int64,
                                                                              device=codes.device))

    def _signed_sums(self, codes, groups, sign, into: torch.Tensor) -> torch.Tensor:
        """``into`` plus the signed covered bits of ``codes`` added to their ``groups``, modulo 2^bits."""
        b = ((codes.to(torch.int64) >> self.bit) & 1) * sign.to(torch.int64)
        return torch.remainder(into.index_add_(0, groups, b), self.mod)

    def decode(self, cur, check, clean, pm, stats) -> bool:
        golden = self.region.words if check is None else check
        changed = torch.nonzero(cur != clean).view(-1)       # the words read differently from the stored ones
        grp, sgn = self.group_of[changed], self.sign[changed]
        # the signatures of ``cur``: the clean ones plus each changed word's new covered bit minus its old one
        sig = self._signed_sums(cur[changed], grp, sgn, self.clean_signatures.clone())
        sig = self._signed_sums(clean[changed], grp, -sgn, sig)
        bad = sig != kernels.to_pattern(golden)
        flips = kernels.popcount(kernels.bit_xor(cur[changed], clean[changed]), bits=pm.bits).to(torch.int64)
        stats["radar.flagged"] = int(bad.sum())
        stats["radar.flips"] = int(flips.sum())
        stats["radar.detected_flips"] = int(flips[bad[grp]].sum())
        if self.protection.policy == "zero" and bool(bad.any()):
            in_bad = bad[self.group_of]
            cur[in_bad] = pm.zero_codes[in_bad]
        return self.protection.policy == "fail" and bool(bad.any())
