"""Quantization-aware training: the straight-through helper.

Inside :meth:`FlatQuantizer.straight_through` the module's parameters hold dequantized values (clean or
bit-error-perturbed); forward and backward run on them, and on exit the float weights are restored while the
gradients stay: ``optimizer.step()`` then applies the gradient computed at the quantized point to the float weights
(the straight-through estimator).

The whole selected parameter set is handled as one flat memory: one concatenation, per-segment ranges (per tensor,
output channel or group: the scheme's granularity) by segmented reductions, one quantize pass, one dequantize pass,
one multi-tensor copy back.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .quantization import QuantContext, QuantScheme
from .quantized_model import QuantizedModel, flat_buffer_of, flatten_parameters, select_parameters

__all__ = ["FlatQuantizer", "StraightThrough"]


class StraightThrough:
    """Handle yielded by :meth:`FlatQuantizer.straight_through`."""

    def __init__(self, fq: "FlatQuantizer", qm: QuantizedModel):
        self._fq = fq
        self.qm = qm

    def load(self, codes: torch.Tensor | None = None) -> None:
        """Write the dequantized ``codes`` (default: the clean codes) into the parameters."""
        self._fq.write(self.qm.dequantize(codes, dtype=self._fq.buffer.dtype, out=self._fq.buffer))


class FlatQuantizer:
    """Quantizes a module's selected parameters (see :func:`select_parameters`) as one flat memory.

    The selected parameters are made views of one contiguous buffer (:func:`flatten_parameters`), in memory
    layout order, so quantizing reads the buffer once, dequantizing writes it once, and saving/restoring the float
    weights is one copy each. ``flatten=False`` keeps the parameters as they are (then each write is one
    multi-tensor copy).
    """

    def __init__(self, module: nn.Module, scheme: QuantScheme, include=None, exclude=None, flatten: bool = True):
        self.module = module
        self.scheme = scheme
        named = select_parameters(module, include, exclude)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.lengths = [p.numel() for p in self.params]
        self._flat = None
        if flatten:
            self._flat = flat_buffer_of(self.params)
            if self._flat is None:
                self._flat = flatten_parameters(self.params)
        self.segments = scheme.layout(self.shapes)  # one range per tensor, output channel or group
        self._saved = None

    @property
    def buffer(self) -> torch.Tensor:
        """The parameters' flat buffer (a fresh concatenation when they are not flattened)."""
        if self._flat is not None and flat_buffer_of(self.params) is not None:
            return self._flat
        self._flat = None
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    @property
    def datas(self) -> list[torch.Tensor]:
        return [p.data for p in self.params]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(s) for t, s in zip(flat.split(self.lengths), self.shapes)]

    def write(self, flat: torch.Tensor) -> None:
        """Set the parameters from a flat tensor (no-op when ``flat`` is the parameters' own buffer)."""
        if self._flat is not None and flat.data_ptr() == self._flat.data_ptr():
            return
        with torch.no_grad():
            if self._flat is not None:
                self._flat.copy_(flat)
            else:
                torch._foreach_copy_(self.datas, self.split(flat))

    @torch.no_grad()
    def quantize(self, flat: torch.Tensor | None = None, check: bool = True,
                 deq_out: torch.Tensor | None = None, context: QuantContext | None = None) -> tuple:
        """Quantize the current weights (or ``flat``): ``(QuantizedModel, dequantized_written)``.

        ``context``: quantize with these per-tensor ranges (e.g. frozen ones) instead of the weights' own. With
        ``deq_out`` the clean dequantized values are also written there when that can be fused into the same
        pass (CPU, C extension); the flag says whether it happened.
        """
        flat = self.buffer if flat is None else flat
        codes, ctx, done = self.scheme.quantize(flat, self.segments, context=context, check=check,
                                                deq_out=deq_out)
        qm = QuantizedModel(self.scheme, self.names, self.shapes, codes, ctx)
        qm.segments = self.segments
        return qm, done

    @contextmanager
    def straight_through(self, load: bool = True):
        """Quantize the current weights; inside, parameters hold dequantized values; float weights come back
        on exit (gradients are kept). ``load=False`` leaves loading to the caller (``handle.load(codes)``)."""
        with torch.no_grad():
            buf = self.buffer
            if self._saved is None or self._saved.shape != buf.shape or self._saved.device != buf.device:
                self._saved = torch.empty_like(buf)
            saved = self._saved.copy_(buf)
            fused = load and self._flat is not None
            qm, done = self.quantize(buf, check=False, deq_out=buf if fused else None)
            handle = StraightThrough(self, qm)
            if load and not done:
                handle.load()
        try:
            yield handle
        finally:
            with torch.no_grad():
                self.write(saved)

    @torch.no_grad()
    def clip_(self, w_max: float) -> None:
        """Clamp every selected parameter to [-w_max, w_max] in place."""
        if self._flat is not None and flat_buffer_of(self.params) is not None:
            self._flat.clamp_(-w_max, w_max)
        else:
            for d in self.datas:
                d.clamp_(-w_max, w_max)
