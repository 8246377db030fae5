"""Random bit errors: the shared, seeded pattern definition (docs/patterns.md).

Pattern ``k`` (k = 0 .. patterns-1) uses seed ``base_seed + k`` and is exactly

    kernels.random_flip(qm.codes, p, p10, seed=base_seed + k, bits=qm.bits, protected=qm.protected)

over the whole flat memory with global word offsets: every model with the same layout meets the same faulty cells
(the same "chip"), and the bits flipped at a lower rate are a subset of those flipped at a higher rate.

A protected memory (``rquant+secded``: :class:`defenses.protection.ProtectedModel`) is drawn over its whole image:
the data words exactly as above, then every stored check region with the same rule and seed at its global offset
(``kernels.random_flip(region.words, p, p10, seed=..., bits=region.bits, offset=region.offset)``). With ``layers``
and for ``random_msb`` only data words flip (the check bits stay as stored).

Beyond the weight words, with the same seed and rule at their own global indices (so every region's errors are
independent of the others' and a chip stays one chip):

* ``meta=exposed``: the quantization metadata (per-segment ranges, :mod:`bitbench.defenses.metadata`) as float32
  words after the data and check words; a pattern decodes the codes with the flipped ranges. ``meta=only``: only the
  metadata words take errors (the data words stay clean). Default ``protected``: the ranges are kept in hardened
  storage, as before. Formats without ranges (the float formats) have no metadata words.
* ``include_buffers=true``: the model's floating-point buffers (batch-norm running statistics, ...) as the raw bits
  of their dtype after the metadata words (:mod:`bitbench.defenses.buffers`), applied while the pattern runs.
* ``act_p=q``: the activations too, at rate q (:mod:`.activations`; ``act_layers``, ``act_format``,
  ``act_calib`` as ``layers``, ``format``, ``calib`` of ``act_random``); the clean baseline is then the
  activation-quantized model.
* ``bit=b``: only bit position b (or ``b1|b2``) of every word the pattern reaches may flip.

Spec forms::

    random_p0.01                 1% of the attackable bits flip (0->1 and 1->0)
    random_p0.01:p10=0.005       separate 1->0 rate
    random_p0.01:layers=conv*|features.0.*    only these tensors (fnmatch patterns separated by '|')
    random_msb_p0.01             only the most significant attackable bit (m-1) of each word may flip
    random_p0.01:meta=exposed    the ranges take errors too
    random_p0.01:act_p=0.001     weight errors at 1% and activation errors at 0.1% in one pattern
    random_p0.01:bit=7           only bit 7
"""

from __future__ import annotations

import torch

from bitbench import kernels
from bitbench.configs.registries import register_attack
from bitbench.configs.spec import SpecError
from bitbench.configs.suite import MAX_PATTERNS
from bitbench.defenses.buffers import buffer_region
from bitbench.defenses.metadata import metadata_region

from .activations import ActivationFaults
from .base import Attack, FixedChips, Perturbation, check_indices, check_int, check_out, check_rate
from .runtime import BufferRuntime, combine
from .selection import (attackable_bits, matching_tensors, metadata_ranges, parse_bit_positions, protected_bits,
                        tensor_ranges)

__all__ = ["RandomBitErrors", "RandomMSBErrors", "layer_patterns", "META_MODES"]

_RATE = r"(?P<p>[+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
META_MODES = ("protected", "exposed", "only")


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
class RandomBitErrors(FixedChips, Attack):
    """Random bit errors at rate p (the shared seeded pattern definition; pattern k uses seed base_seed + k).

    Args:
        p: bit error rate as a fraction in [0, 1] (0.01 = 1%); the 0->1 rate when p10 is given.
        p10: 1->0 rate (fraction); none = the same as p.
        patterns: number K of patterns (chips), seeds base_seed .. base_seed + K - 1.
        base_seed: seed of pattern 0 (the paper: 100).
        layers: only flip bits in tensors matching these fnmatch patterns, separated by '|' (none = all).
        meta: the quantization ranges: 'protected' (no errors), 'exposed' (errors at rate p too) or 'only'.
        include_buffers: the float buffers (batch-norm statistics, ...) take errors at rate p too.
        bit: only these bit positions (0 = LSB) of every word may flip, separated by '|' (none = all).
        act_p: bit error rate of the activations in the same patterns (none = no activation errors).
        act_layers: stored module outputs for act_p (as act_random's layers; none = conv/linear/attention).
        act_format: activation words for act_p: int{m} (calibrated per layer, int8) or a float format.
        act_calib: attacker-split images the activation ranges are calibrated on.
    """

    kind = "random"
    msb_only = False

    def __init__(self, p: float = 0.01, p10: float | None = None, patterns: int = 50, base_seed: int = 100,
                 layers: str | None = None, meta: str = "protected", include_buffers: bool = False,
                 bit: str | None = None, act_p: float | None = None, act_layers: str | None = None,
                 act_format: str = "int8", act_calib: int = 512):
        self.p = check_rate(p, "p")
        self.p10 = check_rate(p10, "p10", allow_none=True)
        self.patterns = check_int(patterns, "patterns", 1, MAX_PATTERNS)
        self.base_seed = check_int(base_seed, "base_seed", 0, (1 << 64) - self.patterns)
        self.layers = layer_patterns(layers)
        if meta not in META_MODES:
            raise SpecError(f"meta must be one of {', '.join(META_MODES)} (whether the quantization ranges take "
                            f"bit errors: never, too, or alone), got {meta!r}")
        self.meta = meta
        if not isinstance(include_buffers, bool):
            raise SpecError(f"include_buffers must be true or false, got {include_buffers!r}")
        self.include_buffers = include_buffers
        self.bit = parse_bit_positions(bit)
        self.act_p = check_rate(act_p, "act_p", allow_none=True)
        self.act = None
        if self.act_p is not None:
            self.act = ActivationFaults(act_format, layer_patterns(act_layers), None, act_calib,
                                        msb_only=self.msb_only, only_bits=self.bit, param="act_layers")
        elif act_layers is not None or act_format != "int8" or act_calib != 512:
            raise SpecError("act_layers, act_format and act_calib configure the activation errors of act_p: set "
                            "act_p too (e.g. random_p0.01:act_p=0.001,act_format=bfloat16)")
        self.rate = self.p

    @property
    def data_errors(self) -> bool:
        """The data words take errors (all but ``meta=only``)."""
        return self.meta != "only"

    def protected(self, qm) -> int:
        """The constant protected-bit mask of the data words of ``qm`` (the scheme's, plus every bit but m-1 for
        MSB-only, plus every bit but those of ``bit``)."""
        width = kernels.DTYPE_WIDTH[qm.codes.dtype]
        return protected_bits(width, qm.bits, int(qm.protected), msb_only=self.msb_only, only=self.bit)

    def region_protected(self, width: int) -> int:
        """The protected mask of a word of ``width`` bits outside the data region (metadata, buffers): none but
        for MSB-only (all bits but the top one) and ``bit``."""
        return protected_bits(width, width, 0, msb_only=self.msb_only, only=self.bit)

    def tensors(self, qm) -> list[int]:
        """The data tensors whose words take errors (indices into ``qm.names``)."""
        return matching_tensors(qm, self.layers)

    def check(self, qm) -> None:
        """Refuse ``layers`` that match no tensor of the memory (with ``include_buffers``, no tensor and no buffer:
        checked by :meth:`check_model`) and ``bit`` positions outside every reached word."""
        if self.layers is not None and not self.include_buffers:
            qm.select(self.layers)
        if self.bit is not None:
            widths = [qm.bits] if self.data_errors else []
            if self.meta != "protected":
                widths.append(32)
            if self.include_buffers:
                widths.append(32)
            if self.act is not None:
                widths.append(self.act.format.bits)
            if not any(b < w for b in self.bit for w in widths):
                raise SpecError(f"bit={'|'.join(map(str, self.bit))}: the words this pattern reaches have bits "
                                f"0..{max(widths, default=0) - 1}")

    @property
    def checks_model(self) -> bool:
        return self.include_buffers or self.act is not None

    def check_model(self, qm, model) -> None:
        if self.include_buffers and self.layers is not None:
            region = buffer_region(model, 0)
            if not matching_tensors(qm, self.layers) and not region.select(self.layers):
                raise SpecError(f"layers={'|'.join(self.layers)}: no quantized tensor and no float buffer matches; "
                                f"tensors are {qm.names}, buffers {region.names}")
        if self.act is not None:
            self.act.check_model(model)

    @property
    def clean_baseline(self) -> dict | None:
        return self.act.baseline() if self.act is not None else None

    def clean_runtime(self, qm, *, model=None, data=None):
        return self.act.memory(qm, model, data).runtime(None) if self.act is not None else None

    def pattern(self, qm, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The perturbed codes of pattern ``k`` (into ``out`` if given)."""
        seed = self.seed(k)
        prot = self.protected(qm)
        if self.layers is None and self.data_errors:
            return kernels.random_flip(qm.codes, self.p, self.p10, seed=seed, bits=qm.bits, protected=prot, out=out)
        if out is None:
            out = torch.empty_like(qm.codes)
        out.copy_(qm.codes)
        if not self.data_errors:
            return out
        for o, n in tensor_ranges(qm, self.tensors(qm)):
            if n:
                kernels.random_flip(qm.codes[o:o + n], self.p, self.p10, seed=seed, bits=qm.bits, protected=prot,
                                    offset=o, out=out[o:o + n])
        return out

    def check_pattern(self, qm, k: int, outs: list | None = None) -> list | None:
        """The perturbed check words of pattern ``k`` for a protected memory, one tensor per stored check region
        (into ``outs`` if given); None when the memory has none or only data words flip (``layers``, MSB only,
        ``bit``, ``meta=only``)."""
        regions = qm.check_regions
        if not regions or self.layers is not None or self.msb_only or self.bit is not None or not self.data_errors:
            return None
        seed = self.seed(k)
        outs = outs or [None] * len(regions)
        return [kernels.random_flip(r.words, self.p, self.p10, seed=seed, bits=r.bits, offset=r.offset, out=o)
                for r, o in zip(regions, outs)]

    def meta_pattern(self, region, qm, k: int) -> torch.Tensor:
        """The perturbed metadata words of pattern ``k`` (``region``: :func:`defenses.metadata.metadata_region`);
        only the words of the selected tensors' segments take errors."""
        seed, prot = self.seed(k), self.region_protected(region.bits)
        if self.layers is None:
            return kernels.random_flip(region.words, self.p, self.p10, seed=seed, bits=region.bits, protected=prot,
                                       offset=region.offset)
        out = region.words.clone()
        for a, n in metadata_ranges(region, self.tensors(qm)):
            if n:
                kernels.random_flip(region.words[a:a + n], self.p, self.p10, seed=seed, bits=region.bits,
                                    protected=prot, offset=region.offset + a, out=out[a:a + n])
        return out

    def buffer_pattern(self, region, k: int) -> dict:
        """``{buffer name: perturbed values}`` of pattern ``k`` for the buffers whose words changed."""
        seed, out = self.seed(k), {}
        for e in region.select(self.layers):
            if not e.n_words:
                continue
            w = kernels.random_flip(e.words, self.p, self.p10, seed=seed, bits=e.bits,
                                    protected=self.region_protected(e.bits), offset=e.offset)
            if not torch.equal(w, e.words):
                out[e.name] = e.values(w)
        return out

    def perturbations(self, qm, *, model=None, data=None, out=None, indices=None):
        out = check_out(qm, out)
        ks = check_indices(indices, self.patterns)
        if self.layers is not None and not self.include_buffers:
            qm.select(self.layers)  # refuse patterns that match nothing before the first item
        meta = metadata_region(qm) if (self.meta != "protected" or self.include_buffers) else None
        bufs = None
        if self.include_buffers:
            if model is None:
                raise ValueError("include_buffers needs model= (the module whose buffers are in the memory)")
            self.check_model(qm, model)
            bufs = buffer_region(model, meta.offset + meta.n_words)
        act = self.act.memory(qm, model, data) if self.act is not None else None
        regions = qm.check_regions
        check_out_ = [torch.empty_like(r.words) for r in regions] if out is not None else None
        for k in ks:
            codes = self.pattern(qm, k, out)
            check = self.check_pattern(qm, k, check_out_)
            info = {"flips": kernels.hamming_total(qm.codes, codes, bits=qm.bits)}
            if check is not None:
                info["check_flips"] = sum(kernels.hamming_total(r.words, c, bits=r.bits)
                                          for r, c in zip(regions, check))
            context = None
            if self.meta != "protected" and meta.n_words:
                words = self.meta_pattern(meta, qm, k)
                info["meta_flips"] = kernels.hamming_total(meta.words, words, bits=meta.bits)
                info["meta_nonfinite"] = meta.nonfinite(words)
                if info["meta_flips"]:
                    context = meta.context(words)
            runtime_parts = []
            if bufs is not None:
                values = self.buffer_pattern(bufs, k)
                info["buffers_changed"] = len(values)
                if values:
                    runtime_parts.append(BufferRuntime(model, values))
            if act is not None:
                runtime_parts.append(act.runtime(self.seed(k), self.act_p, None, protected=self.act.protected))
            yield Perturbation(codes=codes, index=k, seed=self.seed(k), info=info, check=check, context=context,
                               runtime=combine(*runtime_parts))


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
        meta: the quantization ranges: 'protected' (no errors), 'exposed' (their top bit too) or 'only'.
        include_buffers: the float buffers' top bits take errors at rate p too.
        bit: only these bit positions (0 = LSB) of every word may flip, separated by '|' (none = all).
        act_p: rate of the activation words' top bit in the same patterns (none = no activation errors).
        act_layers: stored module outputs for act_p (as act_random's layers; none = conv/linear/attention).
        act_format: activation words for act_p: int{m} (calibrated per layer, int8) or a float format.
        act_calib: attacker-split images the activation ranges are calibrated on.
    """

    msb_only = True
