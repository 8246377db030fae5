"""Random bit errors in the activations: the outputs of chosen layers stored in a virtual activation memory.

Pattern ``k`` uses seed ``base_seed + k``: while the evaluation runs, every stored layer output is encoded in the
activation format and its words flip by the one rule of :mod:`bitbench.kernels` at their global indices in the
activation memory (layers, formats, calibration and the word offsets: :mod:`.activations`), then decoded. The
weights stay clean. The clean baseline of these results is the model with quantized activations and no errors
(:attr:`ActRandomErrors.clean_baseline`).

Spec forms::

    act_random_p0.001                        0.1% of the bits of every conv/linear/attention output (int8)
    act_random_p0.001:format=bfloat16        activations stored as bfloat16
    act_random_p0.001:layers=features.*      only the outputs of these modules are stored (fnmatch, '|')
    act_random_p0.001:faulty=classifier.1    all default layers stored, only this one's words take errors
    act_random_p0.001:bit=7                  only bit 7 of every word may flip
    act_random_msb_p0.001                    only the most significant bit (m - 1; a float's sign bit)

Weight and activation errors together: ``random_p0.01:act_p=0.001`` (:mod:`.random_errors`).
"""

from __future__ import annotations

from bitbench.configs.registries import register_attack
from bitbench.configs.suite import MAX_PATTERNS

from .activations import ActivationFaults
from .base import Attack, FixedChips, Perturbation, check_indices, check_int, check_out, check_rate
from .random_errors import _RATE, layer_patterns
from .selection import parse_bit_positions

__all__ = ["ActRandomErrors", "ActRandomMSBErrors"]


@register_attack("act_random", pattern=r"act_random_p" + _RATE,
                 pattern_help="act_random_p{p} (bit errors at rate p in the stored layer outputs)")
class ActRandomErrors(FixedChips, Attack):
    """Random bit errors at rate p in the stored layer outputs (activations); the weights stay clean.

    Pattern k uses seed base_seed + k; the clean error is that of the activation-quantized model.

    Args:
        p: bit error rate of the activation words as a fraction in [0, 1]; the 0->1 rate when p10 is given.
        p10: 1->0 rate (fraction); none = the same as p.
        patterns: number K of patterns (chips), seeds base_seed .. base_seed + K - 1.
        base_seed: seed of pattern 0.
        layers: stored module outputs: fnmatch patterns of module names, '|'-separated (none = conv/linear/attention).
        faulty: only these of the stored modules take errors, patterns separated by '|' (none = all).
        format: activation words: int{m} (calibrated affine codes per layer) or a float format (e.g. bfloat16).
        calib: images of the attacker split the int ranges are calibrated on (its first ones).
        bit: only these bit positions (0 = LSB) may flip, separated by '|' (none = every bit of the word).
    """

    kind = "random"
    msb_only = False

    def __init__(self, p: float = 0.001, p10: float | None = None, patterns: int = 50, base_seed: int = 100,
                 layers: str | None = None, faulty: str | None = None, format: str = "int8", calib: int = 512,
                 bit: str | None = None):
        self.p = check_rate(p, "p")
        self.p10 = check_rate(p10, "p10", allow_none=True)
        self.patterns = check_int(patterns, "patterns", 1, MAX_PATTERNS)
        self.base_seed = check_int(base_seed, "base_seed", 0, (1 << 64) - self.patterns)
        self.layers = layer_patterns(layers)
        self.faulty = layer_patterns(faulty)
        self.bit = parse_bit_positions(bit)
        self.faults = ActivationFaults(format, self.layers, self.faulty, calib, msb_only=self.msb_only,
                                       only_bits=self.bit)
        self.rate = self.p

    def check(self, qm) -> None:
        """Module patterns are checked against the module (:meth:`check_model`), not the memory's tensors."""

    checks_model = True

    def check_model(self, qm, model) -> None:
        self.faults.check_model(model)

    @property
    def clean_baseline(self) -> dict:
        return self.faults.baseline()

    def clean_runtime(self, qm, *, model=None, data=None):
        return self.faults.memory(qm, model, data).runtime(None)

    def perturbations(self, qm, *, model=None, data=None, out=None, indices=None):
        out = check_out(qm, out)
        ks = check_indices(indices, self.patterns)
        mem = self.faults.memory(qm, model, data)
        codes = qm.clone_codes() if out is None else out.copy_(qm.codes)
        for k in ks:
            rt = mem.runtime(self.seed(k), self.p, self.p10, protected=self.faults.protected)
            yield Perturbation(codes=codes, index=k, seed=self.seed(k), info={"flips": 0}, runtime=rt)


@register_attack("act_random_msb", pattern=r"act_random_msb_p" + _RATE,
                 pattern_help="act_random_msb_p{p} (only the most significant bit of each activation word flips)")
class ActRandomMSBErrors(ActRandomErrors):
    """Random bit errors in the most significant bit of the activation words only (m - 1; a float's sign bit).

    The same Philox numbers as act_random_p{p}: its flips are those of act_random_p{p} that hit that bit.

    Args:
        p: rate at which bit m-1 flips (fraction in [0, 1]); the 0->1 rate when p10 is given.
        p10: 1->0 rate (fraction); none = the same as p.
        patterns: number K of patterns, seeds base_seed .. base_seed + K - 1.
        base_seed: seed of pattern 0.
        layers: stored module outputs: fnmatch patterns of module names, '|'-separated (none = conv/linear/attention).
        faulty: only these of the stored modules take errors, patterns separated by '|' (none = all).
        format: activation word format: int{m} (int8 by default) or a float format.
        calib: images of the attacker split the int ranges are calibrated on (its first ones).
        bit: only these bit positions may flip, separated by '|' (none = every bit).
    """

    msb_only = True
