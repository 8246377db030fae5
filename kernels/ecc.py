"""SEC-DED: extended Hamming codes over groups of integer words (bit level; knows nothing of models).

A codeword protects ``g`` consecutive words of ``m`` bits each (``k = g * m`` data bits; bit 0 = LSB of a word) with
``r`` Hamming check bits (the least ``r`` with ``2^r >= k + r + 1``) and one overall parity bit: the
``(k + r + 1, k)`` code, e.g. (72, 64) for eight 8-bit words, (39, 32) for four.

Positions (the textbook construction): the Hamming part has positions ``1 .. k + r``; check bit ``j`` (``j < r``)
sits at position ``2^j``; data bit ``d = s * m + b`` (bit ``b`` of the word in slot ``s`` of the codeword) sits at
the ``d``-th position, in increasing order, that is not a power of two (3, 5, 6, 7, 9, ...); position 0 holds the
overall parity bit.

Check word (an integer of ``c = r + 1`` bits, :attr:`SECDED.check_bits`): bit ``j < r`` is the parity of the data
bits whose position has bit ``j`` set; bit ``r`` is the parity of all ``k`` data bits and the ``r`` check bits, so
that every codeword has even weight.

Syndrome of a received codeword (``c`` bits): bits ``0 .. r-1`` are the xor of the positions of its 1 bits, bit
``r`` the parity of all its bits. It is 0 for a codeword and linear, so the syndrome of a received word is the
syndrome of its error pattern, computed here by table lookups (one table of 256 entries per byte of each slot) and
a bitwise xor over the slots. Decoding a syndrome (:meth:`SECDED.classify`):

* 0: no error (:data:`CLEAN`);
* bit ``r`` set (an odd number of errors), ``s = syndrome & (2^r - 1)``: ``s = 0`` the parity bit or ``s = 2^j``
  check bit ``j`` was hit, the data is intact (:data:`CHECK_FIXED`); ``s`` a data position: that data bit is
  corrected (:data:`DATA_FIXED`); ``s`` past the last position (a shortened code): detected, uncorrectable
  (:data:`UNCORRECTABLE`);
* bit ``r`` clear and ``s != 0``: a double error, detected, uncorrectable.

Three or more errors in one codeword can be miscorrected or pass unseen: applying this decoder to the actual bits
gives what the hardware decoder does, so residual errors are simulated exactly.
"""
from __future__ import annotations

import torch

from ._common import DTYPE_WIDTH, from_pattern, low_mask, to_pattern

__all__ = ["SECDED", "CLEAN", "CHECK_FIXED", "DATA_FIXED", "UNCORRECTABLE", "check_dtype", "xor_reduce"]

CLEAN, CHECK_FIXED, DATA_FIXED, UNCORRECTABLE = 0, 1, 2, 3
_MAX_CHECK_BITS = 16


def check_dtype(bits: int) -> torch.dtype:
    """The storage dtype of ``bits``-bit check words: uint8 up to 8 bits, int16 up to 16, int32 up to 32."""
    for dt in (torch.uint8, torch.int16, torch.int32):
        if bits <= DTYPE_WIDTH[dt]:
            return dt
    raise ValueError(f"{bits}-bit check words are not supported (at most 32 bits)")


def xor_reduce(x: torch.Tensor) -> torch.Tensor:
    """Bitwise xor of ``x`` ([rows, cols] integer tensor) over its columns -> [rows]."""
    while x.shape[1] > 1:
        h = x.shape[1] // 2
        y = x[:, :h] ^ x[:, h:2 * h]
        x = torch.cat([y, x[:, 2 * h:]], 1) if x.shape[1] % 2 else y
    return x[:, 0] if x.shape[1] else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)


def _parity(v: int) -> int:
    return bin(v).count("1") & 1


class SECDED:
    """The extended Hamming code over ``g`` words of ``m`` bits (see the module docstring).

    Attributes:
        m, g: bits per word and words per codeword; k = g * m data bits.
        r: Hamming check bits; check_bits: c = r + 1 bits per check word (with the overall parity bit);
        n: bits per codeword, k + c.
        positions: the Hamming position of each data bit d = slot * m + bit.
    """

    def __init__(self, m: int, g: int):
        if not (isinstance(m, int) and 1 <= m <= 32 and isinstance(g, int) and g >= 1):
            raise ValueError(f"SEC-DED needs words of 1..32 bits and at least one word per codeword, got m={m}, g={g}")
        self.m, self.g = m, g
        self.k = k = g * m
        r = 1
        while (1 << r) < k + r + 1:
            r += 1
        if r + 1 > _MAX_CHECK_BITS:
            raise ValueError(f"a codeword of {k} data bits needs {r + 1} check bits; at most {_MAX_CHECK_BITS}")
        self.r = r
        self.check_bits = r + 1
        self.n = k + r + 1
        pos, p = [], 3
        while len(pos) < k:
            if p & (p - 1):
                pos.append(p)
            p += 1
        self.positions = pos
        self.chunks = (m + 7) // 8
        col = 1 << r  # every data bit counts once in the overall parity
        table = torch.zeros(g * self.chunks, 256, dtype=torch.int32)
        for s in range(g):
            for ch in range(self.chunks):
                row = table[s * self.chunks + ch]
                for v in range(256):
                    acc = 0
                    for j in range(8):
                        b = ch * 8 + j
                        if (v >> j) & 1 and b < m:
                            acc ^= pos[s * m + b] | col
                    row[v] = acc
        self._data_table = table.reshape(-1)
        low = (1 << r) - 1
        c_all = 1 << self.check_bits
        self._check_table = torch.tensor([(v & low) | (_parity(v) << r) for v in range(c_all)], dtype=torch.int32)
        where = {p: d for d, p in enumerate(pos)}
        kind = torch.full((c_all,), UNCORRECTABLE, dtype=torch.int8)
        slot = torch.zeros(c_all, dtype=torch.int64)
        bit = torch.zeros(c_all, dtype=torch.int64)
        for v in range(c_all):
            s, odd = v & low, (v >> r) & 1
            if v == 0:
                kind[v] = CLEAN
            elif odd and (s & (s - 1)) == 0:    # s = 0 (the parity bit) or a power of two (a check bit)
                kind[v] = CHECK_FIXED
            elif odd and s in where:
                kind[v] = DATA_FIXED
                slot[v], bit[v] = divmod(where[s], m)
        self._kind, self._slot, self._bit = kind, slot, bit
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"SECDED(({self.n}, {self.k}), {self.g} x {self.m}-bit words)"

    @property
    def check_dtype(self) -> torch.dtype:
        return check_dtype(self.check_bits)

    def codewords(self, n_words: int) -> int:
        """Codewords that cover ``n_words`` words (the last one holds the remainder)."""
        return -(-n_words // self.g)

    def _on(self, device: torch.device):
        key = str(device)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device) for t in (self._data_table, self._check_table, self._kind,
                                                            self._slot, self._bit))
        return self._cache[key]

    # -- syndromes -------------------------------------------------------------------------------------------------
    def data_syndromes(self, words: torch.Tensor) -> torch.Tensor:
        """int32 ``[codewords]``: the syndrome contribution of the data bits (bits 0..m-1 of every word of the 1-D
        tensor ``words``; missing words of the last codeword count as 0)."""
        n = words.numel()
        full = n - n % self.g
        if full != n:  # the last codeword holds the remainder: its missing words count as 0
            tail = words.reshape(-1)[full:]
            tail = torch.cat([tail, tail.new_zeros(self.g - tail.numel())])
            return torch.cat([self._syndromes(words.reshape(-1)[:full]), self._syndromes(tail)])
        return self._syndromes(words.reshape(-1))

    def _syndromes(self, words: torch.Tensor) -> torch.Tensor:
        """:meth:`data_syndromes` of a whole number of codewords."""
        table = self._on(words.device)[0]
        cw = words.numel() // self.g
        u = to_pattern(words)
        if self.m < DTYPE_WIDTH[words.dtype]:
            u = u & low_mask(self.m)
        if self.chunks == 1:
            idx = u.view(cw, self.g)
        else:
            idx = torch.stack([(u >> (8 * ch)) & 0xFF for ch in range(self.chunks)], 1).view(cw, self.g * self.chunks)
        idx = idx + torch.arange(0, idx.shape[1] * 256, 256, device=u.device)
        return xor_reduce(table[idx])

    def check_syndromes(self, check: torch.Tensor) -> torch.Tensor:
        """int32 ``[codewords]``: the syndrome contribution of check words (1-D, one per codeword)."""
        return self._on(check.device)[1][to_pattern(check.reshape(-1)) & low_mask(self.check_bits)]

    def syndromes(self, data_err: torch.Tensor, check_err: torch.Tensor | None = None) -> torch.Tensor:
        """int32 ``[codewords]``: the syndromes of received codewords given their error patterns (the xor of the
        received and the stored data words, and of the check words; ``None``: no check bit flipped)."""
        s = self.data_syndromes(data_err)
        if check_err is not None:
            s = s ^ self.check_syndromes(check_err)
        return s

    def encode(self, words: torch.Tensor) -> torch.Tensor:
        """The check words (:attr:`check_dtype`, one per codeword) of the 1-D tensor ``words``."""
        d = self.data_syndromes(words).to(torch.int64)
        low = d & ((1 << self.r) - 1)
        par = (self._on(words.device)[1].to(torch.int64)[low] >> self.r) & 1     # parity of the low bits
        top = ((d >> self.r) & 1) ^ par
        return from_pattern(low | (top << self.r), self.check_dtype)

    # -- decoding --------------------------------------------------------------------------------------------------
    def classify(self, syndromes: torch.Tensor):
        """Per syndrome: ``(kind, slot, bit)`` -- kind :data:`CLEAN`, :data:`CHECK_FIXED`, :data:`DATA_FIXED` (the
        corrected data bit is ``bit`` of the word in ``slot``) or :data:`UNCORRECTABLE`; int8 / int64 tensors."""
        _, _, kind, slot, bit = self._on(syndromes.device)
        s = syndromes.to(torch.int64)
        return kind[s], slot[s], bit[s]
