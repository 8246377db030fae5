"""The declared interfaces of the weight memory: a *memory format* (how a word decodes to a weight) and a *memory*
(a model's words in one flat buffer, as attacks and the evaluator see it).

:class:`MemoryFormat` is implemented by :class:`~.quantization.QuantScheme` (affine integer codes per tensor, channel
or group) and :class:`~.float_formats.FloatFormat` (raw IEEE float bits), and by plug-in formats. :class:`Memory` is
implemented by :class:`~.quantized_model.QuantizedModel` and by the protected memory
(:class:`~.protection.ProtectedModel`: the same words plus check bits, decoded after every pattern), so consumers
never branch on the concrete type: a memory that needs decoding says so (:attr:`Memory.decodes`) and decodes with
:meth:`Memory.recover`; an unprotected memory has no check regions and its recovery is the identity.

Conventions: words are integer tensors of ``dtype``; a word has ``bits`` attackable bits, bit 0 = LSB; ``protected``
is the mask of container bits that never flip; weights decode in ``compute_dtype``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch

__all__ = ["MemoryFormat", "Memory", "Recovery", "MEMORY_MEMBERS"]


class MemoryFormat(abc.ABC):
    """How the words of a flat memory decode to weights (module docstring)."""

    has_context: bool = False  # per-segment parameters (ranges) beside the words

    # -- the word ------------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """The container dtype of a word."""

    @property
    @abc.abstractmethod
    def bits(self) -> int:
        """Attackable bits per word (m; bits 0 .. m-1)."""

    @property
    @abc.abstractmethod
    def protected(self) -> int:
        """Bit mask of the container bits that never flip."""

    @property
    @abc.abstractmethod
    def compute_dtype(self) -> torch.dtype:
        """The float dtype weights are encoded from and decoded to."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short human-readable name (recorded as the record's ``scheme``)."""

    @abc.abstractmethod
    def to_dict(self) -> dict:
        """The format's parameters (JSON), enough to rebuild it (checkpoint keys, quantized-model files)."""

    # -- encoding and decoding -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def layout(self, shapes):
        """The segments (ranges per tensor / channel / group) of tensors of these shapes."""

    @abc.abstractmethod
    def quantize(self, flat: torch.Tensor, segments=None, *, context=None, check: bool = True):
        """``(words, context, decoded)`` of flat weights."""

    @abc.abstractmethod
    def decode(self, words: torch.Tensor, ctx, segments=None, *, dtype=None, out=None, per_word=None):
        """Flat weights of flat words."""

    @abc.abstractmethod
    def decode_cache(self, ctx, segments):
        """Per-word decoding parameters worth keeping across many patterns (or None)."""

    @abc.abstractmethod
    def decode_words(self, words: torch.Tensor, ctx, seg: torch.Tensor) -> torch.Tensor:
        """The weights of a few words (segments ``seg``), bit for bit as :meth:`decode`."""

    # -- code space ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def code_values(self, words: torch.Tensor) -> torch.Tensor:
        """The code value of each word (the weight is monotone in it)."""

    @abc.abstractmethod
    def words_from_code_values(self, z: torch.Tensor) -> torch.Tensor:
        """Words of the valid code values nearest ``z``."""

    @abc.abstractmethod
    def dweight_dcode(self, words: torch.Tensor, ctx, segments) -> torch.Tensor:
        """d(weight)/d(code value) of every word."""


@dataclass
class Recovery:
    """One decoded pattern: ``codes`` (what the model loads), ``failed`` (a protection's policy ``fail`` met a
    detected error), ``stats`` (the decoder's counts), ``seconds`` (decode time)."""

    codes: torch.Tensor
    failed: bool = False
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0


class Memory(abc.ABC):
    """A model's words in one flat buffer (module docstring). Members every memory offers are listed in
    :data:`MEMORY_MEMBERS`; a protected memory adds its check regions and decoding."""

    #: the memory holds check words beside the data words and must decode a pattern before it is loaded
    decodes: bool = False
    #: stored check regions, in image order (words after the data words, at global offsets)
    check_regions: tuple = ()
    #: the protection stages (none for a plain memory)
    stages: tuple = ()
    #: check bits / data bits
    memory_overhead: float = 0.0

    @property
    def image_words(self) -> int:
        """Words bit errors reach: the data words and the stored check words."""
        return self.n_words

    def recover(self, codes: torch.Tensor, check=None, out: torch.Tensor | None = None) -> Recovery:
        """The memory the accelerator computes with after reading ``codes`` (a plain memory: ``codes`` as read)."""
        if out is not None and out.data_ptr() != codes.data_ptr():
            out.copy_(codes)
            codes = out
        return Recovery(codes=codes)

    def describe(self) -> dict | None:
        """The record's ``protection`` object (None: unprotected)."""
        return None


# What a memory offers its consumers (attacks, the evaluator, protections); a protected memory delegates these to the
# memory it protects, explicitly (no attribute forwarding).
MEMORY_MEMBERS = ("scheme", "format", "names", "shapes", "lengths", "offsets", "codes", "context", "segments", "scale",
                  "bits", "protected", "dtype", "device", "n_words", "n_bits", "index", "select", "views", "tensor",
                  "clone_codes", "dequantize", "decode_words", "flip_deltas", "code_values", "words_from_code_values",
                  "dweight_dcode", "dequantize_tensors", "parameters_of", "load_into", "state_dict", "ctx_on")
