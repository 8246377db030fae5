"""Which words and bits a random-error pattern may flip: per-layer and per-bit selection (pure functions).

A vulnerability profile runs patterns that reach only one layer and one bit position ("only layer L, only bit b");
these functions say which words and which bits that is, in every region of the memory image: the data words
(tensors of the quantized memory), the metadata words (:mod:`bitbench.defenses.metadata`), the buffer words
(:mod:`bitbench.defenses.buffers`) and the activation slots (:mod:`.activations`). The attacks use them for their
``layers=`` and ``bit=`` parameters; a profile combines them with any rate and seed, and the flips of a selection
are exactly the flips of the full pattern that fall into it (the same Philox numbers at the same global indices).
"""

from __future__ import annotations

import fnmatch

from bitbench.configs.spec import SpecError

__all__ = ["parse_bit_positions", "attackable_bits", "protected_bits", "matching_tensors", "tensor_ranges",
           "metadata_ranges"]


def parse_bit_positions(bit) -> tuple[int, ...] | None:
    """``'7'``, ``'0|1|2'``, ``7`` or ``[6, 7]`` -> sorted distinct bit positions (0 = LSB); None -> None (every
    bit). A :class:`SpecError` names the allowed form."""
    if bit is None or (isinstance(bit, str) and bit.strip().lower() in ("", "none", "all")):
        return None
    parts = bit if isinstance(bit, (list, tuple)) else str(bit).split("|")
    out = set()
    for part in parts:
        text = str(part).strip()
        if isinstance(part, bool) or not text.isdigit() or int(text) > 63:
            raise SpecError(f"bit must be bit positions 0..63 (0 = LSB) separated by '|', e.g. 7 or 0|1, got {bit!r}")
        out.add(int(text))
    return tuple(sorted(out))


def attackable_bits(width: int, m: int, protected: int = 0, *, msb_only: bool = False,
                    only: tuple[int, ...] | None = None) -> int:
    """Bit mask of the bits of a ``width``-bit word with ``m`` attackable low bits (minus ``protected``) that a
    pattern may flip: only bit ``m - 1`` with ``msb_only``, only the positions ``only`` when given."""
    mask = ((1 << m) - 1) & ~int(protected) & ((1 << width) - 1)
    if msb_only:
        mask &= 1 << (m - 1)
    if only is not None:
        mask &= sum(1 << b for b in only if b < width)
    return mask


def protected_bits(width: int, m: int, protected: int = 0, *, msb_only: bool = False,
                   only: tuple[int, ...] | None = None) -> int:
    """The complement of :func:`attackable_bits` within the word: the ``protected`` mask to pass to the kernels."""
    return ((1 << width) - 1) & ~attackable_bits(width, m, protected, msb_only=msb_only, only=only)


def matching_tensors(qm, layers) -> list[int]:
    """Indices of ``qm``'s tensors whose names match any fnmatch pattern of ``layers`` (all for None; may be empty,
    unlike :meth:`QuantizedModel.select`, which refuses a selection that matches nothing)."""
    if layers is None:
        return list(range(len(qm.names)))
    return [i for i, n in enumerate(qm.names) if any(fnmatch.fnmatchcase(n, p) for p in layers)]


def tensor_ranges(qm, tensors) -> list[tuple[int, int]]:
    """``(global offset, words)`` of each tensor of ``tensors`` in the data region."""
    return [(qm.offsets[t], qm.lengths[t]) for t in tensors]


def metadata_ranges(region, tensors) -> list[tuple[int, int]]:
    """``(region-local start, words)`` of the metadata words of each tensor's segments
    (:class:`~bitbench.defenses.metadata.MetadataRegion`; empty for a format without ranges)."""
    if not region.n_words:
        return []
    return [region.segment_range(t) for t in tensors]
