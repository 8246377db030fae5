"""The quantized model: a module's parameters as one flat memory of words in a memory format.

Layout (docs/patterns.md): the included parameters, in ``named_parameters()`` order, each
flattened in C order, one after the other. Tensor ``t`` starts at global word offset ``offsets[t]``. Attacks act on
the flat ``codes`` buffer (or on per-tensor views of it) and the harness writes decoded values back into the
module's parameters in place.

The *format* (``qm.scheme``) defines the words: their container dtype and width, how a word decodes to a weight,
which bits never flip (``protected``) and, through :meth:`QuantizedModel.flip_deltas`, the exact weight change of
flipping each bit. Two kinds implement the same contract: :class:`~.quantization.QuantScheme` (affine integer
codes, one range per tensor, output channel or group of weights, kept in ``context``) and
:class:`~.float_formats.FloatFormat` (raw IEEE float bits, no context). Every attack works on any format through
``codes``, ``bits``, ``protected``, :meth:`~QuantizedModel.decode_words`, :meth:`~QuantizedModel.flip_deltas` and,
for code-space searches, :meth:`~QuantizedModel.code_values` / :meth:`~QuantizedModel.words_from_code_values` /
:meth:`~QuantizedModel.dweight_dcode`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Sequence

import torch
from torch import nn

from bitbench import kernels
from bitbench.configs.spec import SpecError

from .float_formats import FloatFormat
from .io import CheckpointError, load_checkpoint, save_checkpoint
from .memory import Memory, MemoryFormat
from .quantization import QuantContext, QuantScheme, scheme_from_dict

__all__ = ["QuantizedModel", "select_parameters", "flatten_parameters", "flat_buffer_of", "FORMAT",
           "format_from_dict"]

# /3: a memory format (a quantization scheme with its granularity, or a float format; context per segment or none);
# /2 files (per-tensor schemes) read the same
FORMAT = "bitbench.quantized_model/3"
_READABLE = ("bitbench.quantized_model/2", FORMAT)


class QuantizedModelError(SpecError):
    """A quantized-model file (or state dict) whose content is inconsistent (exit code 2 on the command line)."""


def _scheme_of(d):
    """The memory format of a file's ``scheme`` field (:class:`QuantizedModelError` if it is not one)."""
    if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
        raise QuantizedModelError(f"'scheme' must be an object of the memory format's fields, got {d!r}"[:200])
    allowed = {"float", "flip"} if "float" in d else {f.name for f in dataclasses.fields(QuantScheme)}
    if set(d) - allowed:
        raise QuantizedModelError(f"'scheme' has unknown fields {sorted(set(d) - allowed)}")
    try:
        return format_from_dict(d)
    except (SpecError, ValueError, TypeError) as e:
        raise QuantizedModelError(f"'scheme' is not a memory format: {e}"[:300]) from None


def format_from_dict(d: dict):
    """A memory format from its ``to_dict()``: a :class:`FloatFormat` (``{"float": kind, ...}``) or a
    :class:`QuantScheme`."""
    return FloatFormat.from_dict(d) if "float" in d else scheme_from_dict(d)


def _as_patterns(p) -> list[str] | None:
    if p is None:
        return None
    if isinstance(p, str):
        return [s for s in (x.strip() for x in p.split(",")) if s]
    return list(p)


def select_parameters(module: nn.Module, include=None, exclude=None) -> list[tuple[str, nn.Parameter]]:
    """The parameters that form the quantized memory, in ``named_parameters()`` order.

    By default every parameter (weights, biases, normalization parameters; frozen ones too: a memory holds every
    parameter the model uses, trained or not); buffers (running statistics, fixed whitening layers) are never
    included. ``include`` / ``exclude`` are fnmatch patterns (a list or a comma-separated string) on parameter names.
    """
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    out = []
    for name, p in module.named_parameters():
        if inc is not None and not any(fnmatch.fnmatchcase(name, pat) for pat in inc):
            continue
        if exc is not None and any(fnmatch.fnmatchcase(name, pat) for pat in exc):
            continue
        out.append((name, p))
    if not out:
        names = [n for n, _ in module.named_parameters()]
        raise ValueError(f"no parameter matches include={include!r} exclude={exclude!r}; "
                         f"parameters are: {names[:20]}{' ...' if len(names) > 20 else ''}")
    return out


def flatten_parameters(params: list[torch.Tensor]) -> torch.Tensor:
    """Make ``params`` views into one new contiguous buffer (in order); returns the buffer.

    Afterwards the whole set is updated with single tensor operations on the buffer (no per-tensor copies).
    Gradients, optimizers and ``load_state_dict`` keep working (they act on the same parameter objects).
    """
    if not params:
        raise ValueError("no parameters to flatten")
    with torch.no_grad():
        buf = torch.cat([p.detach().reshape(-1) for p in params])
        o = 0
        for p in params:
            n = p.numel()
            p.data = buf[o:o + n].view(p.shape)
            o += n
    return buf


def flat_buffer_of(params: list[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D view over ``params`` if they lie back to back, in order, in one storage (else None)."""
    if not params:
        return None
    first = params[0]
    st = first.untyped_storage()
    expect = first.data_ptr()
    size = 0
    for p in params:
        if (p.dtype != first.dtype or p.device != first.device or not p.is_contiguous()
                or p.untyped_storage().data_ptr() != st.data_ptr() or p.data_ptr() != expect):
            return None
        expect += p.numel() * p.element_size()
        size += p.numel()
    return first.detach().new_empty(0).set_(st, first.storage_offset(), (size,))


class QuantizedModel(Memory):
    """The words of a module's parameters in one flat buffer, in a memory format (module docstring).

    Attributes:
        scheme: the memory format (:class:`QuantScheme` or :class:`FloatFormat`): how words decode to weights.
        names, shapes, offsets, lengths: the layout (tensor ``t`` is ``codes[offsets[t]:offsets[t]+lengths[t]]``).
        codes: 1-D tensor of ``scheme.dtype`` (the clean memory; never modified by attacks).
        segments: the memory's segments, one context each (per tensor, per output channel or per group).
        context: the per-segment :class:`QuantContext` (range and step of each segment); None for float formats.
        scale: per-segment weight change of one code unit inside the range (dw/dq, see
            :meth:`QuantScheme.code_step`); decoding clamps to the range, so a flip's exact change is
            :meth:`flip_deltas`. Affine formats only.
        bits: m bits per word (bit 0 = LSB); protected: bit mask of storage bits that never flip.
    """

    def __init__(self, scheme, names: Sequence[str], shapes: Sequence[Sequence[int]],
                 codes: torch.Tensor, context: QuantContext | None):
        self.scheme = scheme
        self.names = list(names)
        self.shapes = [torch.Size(s) for s in shapes]
        self.lengths = [int(torch.Size(s).numel()) for s in self.shapes]
        self.offsets = [0]
        for n in self.lengths[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        if codes.dim() != 1 or codes.numel() != sum(self.lengths):
            raise ValueError(f"codes must be 1-D with {sum(self.lengths)} words, got shape {tuple(codes.shape)}")
        if codes.dtype != scheme.dtype:
            raise ValueError(f"codes dtype {codes.dtype} does not match the scheme's {scheme.dtype}")
        self.segments = scheme.layout(self.shapes)
        if scheme.has_context:
            if not isinstance(context, QuantContext) or context.lo.dim() != 1 or len(context) != len(self.segments):
                raise ValueError(f"the context needs one entry per segment ({len(self.segments)} for the "
                                 f"{getattr(scheme, 'granularity', 'tensor')} granularity)")
        elif context is not None:
            raise ValueError(f"format {scheme.name} has no context (got one)")
        self.codes = codes
        self.context = context
        self._decode_cache = None  # per-word parameters of the torch decode path (many patterns)

    @property
    def format(self):
        """The memory format (the same object as :attr:`scheme`)."""
        return self.scheme

    @property
    def scale(self) -> torch.Tensor:
        if self.context is None:
            raise AttributeError(f"format {self.scheme.name} has no code step (no context); see dweight_dcode")
        return self.scheme.code_step(self.context)

    def ctx_on(self, device):
        """The context on ``device`` (None for formats without one)."""
        if self.context is None or self.context.device == torch.device(device):
            return self.context
        return self.context.to(device)

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_module(cls, module: nn.Module, scheme: MemoryFormat, include=None, exclude=None,
                    context: QuantContext | None = None) -> "QuantizedModel":
        """Store the selected parameters of ``module`` (see :func:`select_parameters`) in the memory format
        ``scheme``; ``context`` quantizes with given (e.g. frozen) per-segment ranges instead of the weights' own."""
        params = select_parameters(module, include, exclude)
        names = [n for n, _ in params]
        shapes = [tuple(p.shape) for _, p in params]
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for _, p in params])
            segments = scheme.layout(shapes)
            codes, ctx, _ = scheme.quantize(flat, segments, context=context)
        qm = cls(scheme, names, shapes, codes, ctx)
        qm.segments = segments
        return qm

    # -- layout ------------------------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self.scheme.bits

    @property
    def protected(self) -> int:
        return self.scheme.protected

    @property
    def dtype(self) -> torch.dtype:
        return self.scheme.dtype

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def n_words(self) -> int:
        return self.codes.numel()

    @property
    def n_bits(self) -> int:
        """Attackable bits in the memory (words x the m bits that are not protected)."""
        return self.n_words * bin(((1 << self.bits) - 1) & ~int(self.protected)).count("1")

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (f"QuantizedModel({self.scheme.name}, {len(self.names)} tensors, {self.n_words} words, "
                f"device={self.device})")

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not in the quantized memory; tensors are {self.names}") from None

    def select(self, patterns=None) -> list[int]:
        """Indices of the tensors whose names match any fnmatch pattern (all tensors for None)."""
        pats = _as_patterns(patterns)
        if pats is None:
            return list(range(len(self.names)))
        idx = [i for i, n in enumerate(self.names) if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        # every alternative must match: a misspelt one would silently drop its tensors from the attack
        unmatched = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for n in self.names)]
        if unmatched:  # a user's layers=... pattern (bad input: exit code 2 on the command line)
            shown = "|".join(pats)
            what = "no quantized tensor matches" if not idx else "these alternatives match no quantized tensor:"
            raise SpecError(f"layers={shown}: {what} {'|'.join(unmatched)!r}; tensors are {self.names}")
        return idx

    def views(self, codes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-tensor views (parameter shapes) into ``codes`` (default: the clean memory)."""
        c = self.codes if codes is None else self._check_codes(codes)
        return [c[o:o + n].view(s) for o, n, s in zip(self.offsets, self.lengths, self.shapes)]

    def tensor(self, name: str, codes: torch.Tensor | None = None) -> torch.Tensor:
        i = self.index(name)
        c = self.codes if codes is None else self._check_codes(codes)
        return c[self.offsets[i]:self.offsets[i] + self.lengths[i]].view(self.shapes[i])

    def clone_codes(self) -> torch.Tensor:
        """A fresh copy of the clean memory (never aliases it)."""
        return self.codes.clone()

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a tensor, got {type(codes).__name__}")
        if codes.dtype != self.codes.dtype or codes.numel() != self.n_words:
            raise ValueError(f"codes must hold {self.n_words} words of {self.codes.dtype}, got "
                             f"{codes.numel()} of {codes.dtype}")
        return codes.reshape(-1)

    # -- dequantization ----------------------------------------------------------------------------------------
    def dequantize(self, codes: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                   out: torch.Tensor | None = None, context: QuantContext | None = None) -> torch.Tensor:
        """Flat float values of ``codes`` (default: the clean memory). ``context``: decode with these per-segment
        ranges instead of the stored ones (a pattern whose metadata words took bit errors,
        :mod:`.metadata`), through the reference path (NaN-propagating clamps, any range)."""
        c = self.codes if codes is None else self._check_codes(codes)
        if context is not None:
            if self.context is None or len(context) != len(self.segments):
                raise ValueError(f"context must hold one range per segment ({len(self.segments)}) of a format with "
                                 f"ranges; {self.scheme.name} has {'none' if self.context is None else 'them'}")
            ctx = context.to(c.device)
            return self.scheme.decode(c, ctx, self.segments, dtype=dtype, out=out,
                                      per_word=self.scheme.decode_cache(ctx, self.segments), reference=True)
        ctx = self.ctx_on(c.device)
        if ctx is not None and (self._decode_cache is None or self._decode_cache[0].device != c.device):
            self._decode_cache = None
            if not (c.device.type == "cpu" and dtype == torch.float32 and kernels.fused_quant.supports(self.scheme)):
                self._decode_cache = self.scheme.decode_cache(ctx, self.segments)
        return self.scheme.decode(c, ctx, self.segments, dtype=dtype, out=out, per_word=self._decode_cache)

    def decode_words(self, t: int, idx: torch.Tensor, codes: torch.Tensor, dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
        """The weights that words ``idx`` (flat indices inside tensor ``t``) hold when they store ``codes``.

        The same arithmetic as :meth:`dequantize` / :meth:`load_into` (bit for bit), for a few words: what
        adversarial attacks use to try flips. ``codes`` is 1-D of the memory's dtype, one per index."""
        ctx = self.ctx_on(codes.device)
        seg = self.segments.segment_of(t, idx.to(codes.device))
        return self.scheme.decode_words(codes.reshape(-1), ctx, seg).to(dtype)

    def flip_deltas(self, t: int, idx: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """float64 ``[len(idx), bits]``: the exact change of each weight when bit b of its word is flipped,
        ``decode(word ^ 2^b) - decode(word)`` (0 for protected bits, and where decoding clamps to the range; float
        formats: +-inf or NaN where the flipped word decodes to inf or NaN). ``codes``: the words' current codes
        (default: the clean memory). This is the contract adversarial attacks rank flips by."""
        if codes is None:
            o = self.offsets[t]
            codes = self.codes[o:o + self.lengths[t]][idx.to(self.codes.device)]
        m = self.bits
        before = self.decode_words(t, idx, codes, dtype=torch.float64)
        flipped = torch.stack([kernels.flip_one_bit(codes, torch.full_like(codes, b, dtype=torch.int64))
                               for b in range(m)], 1)                               # [n, m] codes
        after = self.decode_words(t, idx.repeat_interleave(m), flipped.reshape(-1), dtype=torch.float64)
        delta = after.view(-1, m) - before.unsqueeze(1)
        keep = torch.tensor([not (int(self.protected) >> b) & 1 for b in range(m)], device=delta.device)
        return torch.where(keep, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))

    # -- code space (attacks that search over code values) -----------------------------------------------------
    def code_values(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """float64 ``[N]``: the code value of every word (affine: the integer code; floats: the sign-magnitude
        ordinal), in which the weight is monotone."""
        c = self.codes if codes is None else self._check_codes(codes)
        return self.scheme.code_values(c).to(torch.float64)

    def words_from_code_values(self, z: torch.Tensor) -> torch.Tensor:
        """Words (the memory's dtype) of the valid code values nearest ``z`` (float64 ``[N]``)."""
        return self.scheme.words_from_code_values(z)

    def dweight_dcode(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """float64 ``[N]``: d(weight)/d(code value) of every word, the linearization gradient attacks in code space
        use (``dL/dcode = dL/dw * dweight_dcode``): the segment's step for affine formats, the unit in the last
        place of the word for float formats."""
        c = self.codes if codes is None else self._check_codes(codes)
        return self.scheme.dweight_dcode(c, self.ctx_on(c.device), self.segments)

    def dequantize_tensors(self, codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        flat = self.dequantize(codes)
        return {n: flat[o:o + k].view(s) for n, o, k, s in zip(self.names, self.offsets, self.lengths, self.shapes)}

    def parameters_of(self, module: nn.Module) -> list[torch.Tensor]:
        params = dict(module.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"module has no parameters {missing[:5]}: it does not match this quantized model")
        out = [params[n] for n in self.names]
        for n, p, s in zip(self.names, out, self.shapes):
            if p.shape != s:
                raise ValueError(f"parameter {n} has shape {tuple(p.shape)}, quantized model has {tuple(s)}")
        return out

    @torch.no_grad()
    def load_into(self, module: nn.Module, codes: torch.Tensor | None = None,
                  context: QuantContext | None = None) -> nn.Module:
        """Dequantize ``codes`` (clean or perturbed) into ``module``'s parameters, in place; returns ``module``.
        ``context``: per-segment ranges to decode with instead of the stored ones (see :meth:`dequantize`).

        No deep copy, no re-quantization. Parameters that are not part of the memory are untouched.
        """
        params = self.parameters_of(module)
        buf = flat_buffer_of(params)
        if buf is not None and buf.device == self.codes.device:
            # The parameters are views of one buffer (see flatten_parameters): dequantize straight into it.
            self.dequantize(codes, dtype=buf.dtype, out=buf, context=context)
            return module
        flat = self.dequantize(codes, dtype=params[0].dtype, context=context)
        if flat.device != params[0].device:
            flat = flat.to(params[0].device)
        torch._foreach_copy_([p.data for p in params], [t.view(p.shape) for t, p in
                                                         zip(flat.split(self.lengths), params)])
        return module

    # -- persistence -------------------------------------------------------------------------------------------
    def to(self, device) -> "QuantizedModel":
        return QuantizedModel(self.scheme, self.names, self.shapes, self.codes.to(device), self.ctx_on(device))

    def state_dict(self) -> dict:
        return {"format": FORMAT, "scheme": self.scheme.to_dict(), "names": list(self.names),
                "shapes": [list(s) for s in self.shapes], "codes": self.codes.cpu(),
                "context": None if self.context is None else self.context.state_dict()}

    @classmethod
    def from_state_dict(cls, d: dict) -> "QuantizedModel":
        """The model a :meth:`state_dict` describes, every field checked (:class:`QuantizedModelError` names the
        first that is wrong: a file's digest only says that it was not damaged, not that its content makes sense)."""
        if not isinstance(d, dict) or d.get("format") not in _READABLE:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise QuantizedModelError(f"not a quantized model of this version (expected format {FORMAT!r}, got "
                                      f"{got!r}; files of format /1 used the old numerics: quantize the model again)")
        scheme = _scheme_of(d.get("scheme"))
        names, shapes, codes, ctx = d.get("names"), d.get("shapes"), d.get("codes"), d.get("context")
        if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names)):
            raise QuantizedModelError("'names' must be a non-empty list of distinct tensor names")
        if (not isinstance(shapes, (list, tuple)) or len(shapes) != len(names)
                or not all(isinstance(sh, (list, tuple, torch.Size)) and all(isinstance(x, int) and not
                                                                           isinstance(x, bool) and x >= 0 for x in sh)
                           for sh in shapes)):
            raise QuantizedModelError(f"'shapes' must be one list of non-negative sizes per name ({len(names)} names)")
        n = sum(int(torch.Size(sh).numel()) for sh in shapes)
        if not isinstance(codes, torch.Tensor) or codes.dim() != 1 or codes.numel() != n or codes.dtype != scheme.dtype:
            got = (f"{codes.dtype} of shape {list(codes.shape)}" if isinstance(codes, torch.Tensor)
                   else type(codes).__name__)
            raise QuantizedModelError(f"'codes' must be a 1-D {scheme.dtype} tensor of {n} words (the shapes' "
                                      f"sizes), got {got}")
        context = None
        if scheme.has_context:
            n_seg = len(scheme.layout([torch.Size(sh) for sh in shapes]))
            parts = [ctx.get(k) if isinstance(ctx, dict) else None for k in ("lo", "hi", "step")]
            if not all(isinstance(t, torch.Tensor) and t.dtype == scheme.compute_dtype and t.dim() == 1
                       and t.numel() == n_seg for t in parts):
                raise QuantizedModelError(f"'context' must hold 1-D {scheme.compute_dtype} tensors lo, hi, step with "
                                          f"one value per segment ({n_seg})")
            lo, hi, step = parts
            if not all(bool(torch.isfinite(t).all()) for t in parts):
                raise QuantizedModelError("'context' holds NaN or infinite range values")
            if bool((lo > hi).any()) or bool((step < 0).any()):
                raise QuantizedModelError("'context' holds a range with lo > hi or a negative step")
            context = QuantContext(lo, hi, step)
        elif ctx is not None:
            raise QuantizedModelError(f"format {scheme.name} has no ranges, but 'context' is not null")
        return cls(scheme, names, shapes, codes, context)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically with ``torch.save`` (integers + contexts + content digest; loadable with
        ``weights_only=True``)."""
        save_checkpoint(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> "QuantizedModel":
        """Read a file written by :meth:`save`, verified (:class:`defenses.io.CheckpointError` if damaged or if its
        content is not a consistent quantized model)."""
        d = load_checkpoint(path, map_location=map_location)
        try:
            return cls.from_state_dict(d)
        except QuantizedModelError as e:
            raise CheckpointError(path, f"not a valid quantized model: {e}", "quantize the model again "
                                        "(train --save-quantized)") from None
