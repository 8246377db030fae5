"""SEC-DED ECC words: an extended Hamming code over every ``word`` data bits of the memory.

Codeword ``j`` holds the ``g = floor(word / m)`` consecutive memory words ``j*g .. j*g + g - 1`` (``m`` bits each;
the last codeword holds the remainder) and their ``c`` check bits (:mod:`bitbench.kernels.ecc`): (72, 64) for
``word=64`` with 8-bit codes, (39, 32) for ``word=32``. Check word ``j`` sits at image index ``offset + j``.
Decoding corrects every single-bit error of a codeword (data or check bit), detects every double error, and may
miscorrect or miss three or more; detected words follow the ``policy``.
"""

from __future__ import annotations

import torch

from bitbench import kernels
from bitbench.configs.registries import register_protection
from bitbench.configs.spec import SpecError
from bitbench.kernels.ecc import CHECK_FIXED, DATA_FIXED, SECDED as _Code, UNCORRECTABLE

from .base import CheckRegion, Protection, Stage, check_policy

__all__ = ["SECDED", "SECDEDStage"]


@register_protection("secded")
class SECDED(Protection):
    """SEC-DED ECC words (extended Hamming): single-bit errors corrected, double errors detected.

    Args:
        word: data bits per codeword (64: the (72, 64) code; 32: (39, 32)); a codeword holds floor(word / m) whole
            m-bit words.
        policy: detected, uncorrectable codewords: 'keep' (used as read, the memory controller's default: the error
            is reported, the data delivered), 'zero' (their words hold weight 0) or 'fail' (the inference fails:
            every input of the pattern counts as misclassified). On the embedded default 'keep' beats 'zero' at every
            rate (zeroing all the words of a codeword costs more than two bit errors in it).
    """

    reads_raw = True   # the syndromes are those of the raw read: the first stage
    counts = {"corrected": "codewords with one error, corrected", "detected": "codewords with a detected, "
              "uncorrectable error", "silent": "codewords whose data is wrong after decoding without detection "
              "(miscorrected or missed)"}
    flagged = "detected"

    def __init__(self, word: int = 64, policy: str = "keep"):
        if isinstance(word, bool) or not isinstance(word, int) or not 1 <= word <= 1024:
            raise SpecError(f"word must be the data bits per codeword, an integer in 1..1024 (64: the (72, 64) "
                            f"code), got {word!r}")
        self.word = int(word)
        self.policy = check_policy(policy)

    def code(self, m: int) -> _Code:
        if self.word < m:
            raise SpecError(f"secded:word={self.word} is smaller than one {m}-bit word of the memory; use "
                            f"word >= {m}")
        return _Code(m, self.word // m)

    def bind(self, qm) -> "SECDEDStage":
        return SECDEDStage(self, qm)

    def describe(self, stage) -> dict:
        c = stage.code
        return dict(super().describe(stage), code=[c.n, c.k], words_per_codeword=c.g)


class SECDEDStage(Stage):
    """SEC-DED bound to one memory. Counts: ``secded.corrected`` (codewords with one error, corrected),
    ``secded.detected`` (detected, uncorrectable), ``secded.silent`` (codewords whose data differs from the stored
    data after decoding without being detected: miscorrected or missed)."""

    def __init__(self, protection: SECDED, qm):
        self.protection = protection
        self.code = protection.code(qm.bits)
        self.n_words = qm.n_words
        self.region = CheckRegion("secded", self.code.encode(qm.codes), self.code.check_bits)

    def decode(self, cur, check, clean, pm, stats) -> bool:
        code, g, n = self.code, self.code.g, self.n_words
        err = kernels.bit_xor(cur, clean)
        err_words = torch.nonzero(err).view(-1)
        cerr = None if check is None else kernels.bit_xor(check, self.region.words)
        # Only a codeword with a flipped bit (data or check) can have a nonzero syndrome (the code is linear):
        # syndromes of those codewords alone, not of the whole memory.
        parts = [torch.div(err_words, g, rounding_mode="floor")]
        if cerr is not None:
            parts.append(torch.nonzero(cerr).view(-1))
        touched = torch.unique(torch.cat(parts))
        cw_idx = (touched.unsqueeze(1) * g + torch.arange(g, device=cur.device)).view(-1)   # their words
        ok = cw_idx < n
        cw_err = torch.zeros(cw_idx.numel(), dtype=err.dtype, device=err.device)   # the tail past n counts as 0
        cw_err[ok] = err[cw_idx[ok]]
        syn = code.syndromes(cw_err, None if cerr is None else cerr[touched])
        nz = syn != 0
        hit, syn = touched[nz], syn[nz]
        kind, slot, bit = code.classify(syn)
        fix = kind == DATA_FIXED
        words = hit[fix] * g + slot[fix]
        inside = words < n                       # a correction into the missing tail of the last codeword
        words, bits = words[inside], bit[fix][inside]
        if words.numel():
            cur[words] = kernels.flip_one_bit(cur[words], bits)
        bad = torch.cat([hit[kind == UNCORRECTABLE], hit[fix][~inside]])
        if bad.numel() and self.protection.policy == "zero":
            idx = (bad.unsqueeze(1) * g + torch.arange(g, device=bad.device)).view(-1)
            idx = idx[idx < n]
            cur[idx] = pm.zero_codes[idx]
        # codewords whose data may differ now: those with errors (a zero syndrome can hide >= 4) or a correction
        # (both among ``touched``: a correction needs a nonzero syndrome)
        differs = torch.zeros(cw_idx.numel(), dtype=torch.bool, device=cur.device)
        differs[ok] = cur[cw_idx[ok]] != clean[cw_idx[ok]]
        cw_wrong = touched[differs.view(-1, g).any(1)]
        flagged = torch.zeros(code.codewords(n), dtype=torch.bool, device=cur.device)
        flagged[bad] = True
        stats["secded.corrected"] = int(words.numel()) + int((kind == CHECK_FIXED).sum())
        stats["secded.detected"] = int(bad.numel())
        stats["secded.silent"] = int((~flagged[cw_wrong]).sum())
        return bool(bad.numel()) and self.protection.policy == "fail"
