"""How a flat memory of words splits into segments, one quantization context (range) each: the granularity.

The memory is the selected parameters in ``named_parameters()`` order, each flattened in C order. A tensor of shape
``(R, ...)`` with two or more dimensions has ``R`` *rows* (output channels, dim 0) of ``C = numel / R`` words each
(the flattened trailing dims: the input dimension of a linear layer, ``in x kh x kw`` of a convolution); a tensor
of fewer dimensions (a bias, a norm scale, a scalar) is one row. Granularities:

* ``tensor``: one segment per tensor (the paper's per-tensor ranges);
* ``channel``: one segment per row (one range per output channel, PyTorch's and TensorRT's per-channel int8;
  a bias or norm vector is one row, so it keeps one range: per-element ranges would store every bias exactly);
* ``group:g``: each row cut into groups of ``g`` consecutive words (``g >= 1``), the last group of a row holding the
  remaining ``C mod g`` words when ``g`` does not divide ``C`` (never groups across rows); one range per group.

Segments follow each other in memory order, so segment ``s`` is ``[starts[s], starts[s+1])`` of the flat memory and
the word -> segment map is arithmetic: word ``j`` of tensor ``t`` is in segment
``first[t] + (j // C) * ceil(C / g) + (j % C) // g``. The ranges themselves are kept outside the attacked memory
(as the per-tensor ranges are), so bit errors hit only the words.
"""

from __future__ import annotations

import math
import re

import torch

from bitbench.configs.spec import SpecError

__all__ = ["Segments", "segment_ids", "segment_starts", "GRANULARITIES", "parse_granularity", "canonical_granularity",
           "rows_of"]

GRANULARITIES = ("tensor", "channel", "group:g")
_GROUP = re.compile(r"group:([0-9]+)")
_MANY = 64  # above this many segments per-word expansion uses one gather instead of per-segment ops


def parse_granularity(text) -> tuple[str, int | None]:
    """``'tensor'`` / ``'channel'`` / ``'group:128'`` -> ``(kind, g)`` (g is None but for groups); a
    :class:`SpecError` names the allowed forms."""
    t = str(text).strip().lower() if isinstance(text, str) else None
    if t in ("tensor", "channel"):
        return t, None
    m = _GROUP.fullmatch(t or "")
    if m and int(m.group(1)) >= 1:
        return "group", int(m.group(1))
    raise SpecError(f"granularity must be 'tensor', 'channel' or 'group:g' with an integer g >= 1 (e.g. group:128), "
                    f"got {text!r}")


def canonical_granularity(text) -> str:
    kind, g = parse_granularity(text)
    return f"group:{g}" if kind == "group" else kind


def rows_of(shape) -> tuple[int, int]:
    """``(rows, row_length)`` of a tensor shape (module docstring: dim 0 for two or more dims, else one row)."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if len(shape) >= 2:
        return shape[0], (n // shape[0] if shape[0] else 0)
    return 1, n


def segment_starts(lengths, device=None) -> torch.Tensor:
    """int64 ``[0, l0, l0 + l1, ..., N]``: segment boundaries of a flat memory."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.long)
    if len(lengths):
        out[1:] = torch.cumsum(torch.as_tensor(list(lengths), dtype=torch.long), 0)
    return out.to(device) if device is not None else out


def segment_ids(lengths, device=None) -> torch.Tensor:
    """Word -> segment index for a flat memory of segments with the given lengths."""
    lengths = torch.as_tensor(list(lengths), dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


class Segments:
    """How a flat memory splits into segments, with per-device caches of the boundaries (int64 ``[S + 1]``) and the
    word -> segment ids (int64 ``[N]``).

    ``Segments(lengths)`` is one segment per tensor; :meth:`of_shapes` builds the segments of a granularity and
    remembers the per-tensor structure, so that :meth:`segment_of` maps a tensor's words to their segments."""

    def __init__(self, lengths, *, tensors: list[tuple[int, int, int, int]] | None = None):
        self.lengths = [int(n) for n in lengths]
        if any(n < 0 for n in self.lengths):
            raise ValueError(f"segment lengths must be >= 0, got {self.lengths}")
        # per tensor: (first segment, row length C, group size g, segments per row); None: segment t = tensor t
        self.tensors = tensors
        self._starts: dict = {}
        self._ids: dict = {}

    @classmethod
    def single(cls, n: int) -> "Segments":
        return cls([n])

    @classmethod
    def of_shapes(cls, shapes, granularity: str = "tensor") -> "Segments":
        """The segments of tensors of ``shapes`` (memory order) at ``granularity`` (module docstring)."""
        kind, g = parse_granularity(granularity)
        sizes = [math.prod(int(s) for s in shape) for shape in shapes]
        if kind == "tensor":
            return cls(sizes)
        lengths, tensors = [], []
        for shape in shapes:
            rows, c = rows_of(shape)
            gs = c if kind == "channel" else min(g, c)
            per_row = -(-c // gs) if c else 0
            tensors.append((len(lengths), c, gs, per_row))
            if per_row:
                row = [gs] * (c // gs) + ([c % gs] if c % gs else [])
                lengths += row * rows
        return cls(lengths, tensors=tensors)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @property
    def many(self) -> bool:
        """Many segments (finer than per tensor): per-word tensors come from gathers, statistics from a scatter."""
        return len(self.lengths) > _MANY

    def starts(self, device="cpu") -> torch.Tensor:
        key = str(torch.device(device))
        if key not in self._starts:
            self._starts[key] = segment_starts(self.lengths, device=device)
        return self._starts[key]

    def ids(self, device="cpu") -> torch.Tensor:
        key = str(torch.device(device))
        if key not in self._ids:
            self._ids[key] = segment_ids(self.lengths, device=device)
        return self._ids[key]

    def segment_of(self, t: int, idx: torch.Tensor) -> torch.Tensor:
        """int64 segment index of words ``idx`` (flat C-order indices inside tensor ``t``)."""
        idx = idx.to(torch.int64)
        if self.tensors is None:
            return torch.full_like(idx, int(t))
        first, c, g, per_row = self.tensors[t]
        return first + torch.div(idx, c, rounding_mode="floor") * per_row + torch.div(idx % c, g,
                                                                                       rounding_mode="floor")

    def expand(self, vals: torch.Tensor) -> torch.Tensor:
        """Per-segment values ``[S]`` -> per-word values ``[N]``: on CPUs with few segments a concatenation of
        expanded scalars (about 2x faster than a gather), otherwise one gather."""
        if vals.device.type == "cpu" and not self.many:
            return torch.cat([v.expand(n) for v, n in zip(vals.unbind(), self.lengths)]) if self.lengths \
                else vals.new_empty(0)
        return vals[self.ids(vals.device)]

    def nonempty(self) -> bool:
        return bool(self.lengths) and min(self.lengths) > 0
