"""Threat-model constraints of adversarial bit flips (Rowhammer-style attackers), shared by BFA, T-BFA and the
budgeted attack.

*Memory image*: the quantized model's flat code memory -- the quantized parameters in ``named_parameters()``
order, each flattened in C order (:class:`defenses.QuantizedModel`), every tensor included, also those an attack
does not touch. Word ``i`` starts at byte ``i * word_bytes``, ``word_bytes`` = the storage dtype's size (uint8 and
int8: 1, int16: 2, int32: 4). Page ``p`` is bytes ``[p * page, (p + 1) * page)``, i.e. words
``[p * page / word_bytes, (p + 1) * page / word_bytes)``.

* ``direction``: ``any``, ``0to1`` (only bits stored as 0 may flip, to 1) or ``1to0``;
* ``page``: page size in bytes (``0``: no limit; DeepHammer: 4096): at most one flipped bit per page, i.e. the
  Hamming distance between the clean and the attacked memory is at most 1 on every page;
* ``errmap``: an error-map file (format: :mod:`attacks.error_map`) of the cells the attacker can flip; word ``i``
  of the memory sits in map word ``i`` (``tile``: the map repeats). A cell may flip 0->1 iff its ``p01 > 0``
  (probability maps) or it is stuck at 1 (stuck-at maps: the cell an attacker can drive to 1), 1->0 iff
  ``p10 > 0`` or it is stuck at 0.

All three combine. An attack never flips a bit twice (a flipped bit stays flipped), so the number of flips it
reports is the Hamming distance between the clean and the attacked memory.
"""

from __future__ import annotations

import torch

from bitbench import kernels
from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import sha256_file
from bitbench.configs.spec import SpecError

from .error_map import ErrorMapError, _bits_to_mask, load_error_map

__all__ = ["FlipConstraints", "BoundConstraints", "DIRECTIONS"]

DIRECTIONS = ("any", "0to1", "1to0")


class FlipConstraints:
    """Which bits an attack may flip (see the module docstring); :meth:`bind` applies them to a quantized model."""

    def __init__(self, direction: str = "any", page: int = 0, errmap: str | None = None, tile: bool = False):
        if direction not in DIRECTIONS:
            raise SpecError(f"direction must be one of {', '.join(DIRECTIONS)} (which flips the memory cells "
                            f"allow), got {direction!r}")
        if isinstance(page, bool) or not isinstance(page, int) or page < 0:
            raise SpecError(f"page must be a page size in bytes (e.g. 4096; 0 = no per-page limit), got {page!r}")
        self.direction = direction
        self.page = int(page)
        self.errmap = None if errmap in (None, "", "none") else str(errmap)
        self.tile = bool(tile)
        self.map = load_error_map(self.errmap) if self.errmap is not None else None
        self.sha256 = None if self.map is None else (getattr(self.map, "sha256", None)
                                                     or "sha256:" + sha256_file(self.errmap))

    def input_digests(self) -> dict:
        """``{'errmap': 'sha256:...'}``: the results depend on the map's content, not its path."""
        return {} if self.sha256 is None else {"errmap": self.sha256}

    def check(self, qm) -> None:
        """Refuse (a usage error) a map or page size that does not fit ``qm``, before any attack runs."""
        self.bind(qm)

    @property
    def active(self) -> bool:
        return self.direction != "any" or self.page > 0 or self.map is not None

    def describe(self) -> dict:
        return {"direction": self.direction, "page": self.page, "errmap": self.errmap, "tile": self.tile}

    def _map_masks(self, qm, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 [n] per-word masks of the cells that may flip 0->1 / 1->0 according to the error map."""
        mp, m = self.map, qm.bits
        if mp.bits < m:
            raise ErrorMapError(f"error map {self.errmap} has {mp.bits} bit columns per word but the model's words "
                                f"have {m} attackable bits")
        if not self.tile and n > mp.words:
            raise ErrorMapError(f"error map {self.errmap} holds {mp.words} words but the model's memory has {n}; "
                                "use a larger map or tile=true to repeat it")
        j = torch.arange(n, dtype=torch.int64) % mp.words
        if mp.kind == "prob":
            up = torch.from_numpy(mp.p01[:, :m] > 0)[j]
            down = torch.from_numpy(mp.p10[:, :m] > 0)[j]
        else:
            s = torch.from_numpy(mp.stuck[:, :m])[j]
            up, down = s == 1, s == 0
        return _bits_to_mask(up).to(device), _bits_to_mask(down).to(device)

    def bind(self, qm) -> "BoundConstraints":
        return BoundConstraints(self, qm)


class BoundConstraints:
    """The constraints on one quantized model's memory: per-word direction masks and the page of every word.

    Attributes:
        up, down: None (no restriction) or int64 ``[n_words]`` patterns of the bits allowed to flip 0->1 / 1->0.
        page_words: words per page (0: no page limit).
    """

    def __init__(self, c: FlipConstraints, qm):
        self.c = c
        n, dev = qm.n_words, qm.codes.device
        self.n_words = n
        width = kernels.DTYPE_WIDTH[qm.codes.dtype]
        self.bits, self.protected = qm.bits, int(qm.protected)
        up = down = None
        if c.map is not None:
            up, down = c._map_masks(qm, n, dev)
        if c.direction == "0to1":
            down = torch.zeros(n, dtype=torch.int64, device=dev)
        elif c.direction == "1to0":
            up = torch.zeros(n, dtype=torch.int64, device=dev)
        self.up, self.down = up, down
        self.page_words = 0
        if c.page:
            word_bytes = width // 8
            if c.page % word_bytes:
                raise UsageError(f"page={c.page} bytes is not a whole number of {word_bytes}-byte words "
                                 f"({qm.codes.dtype})")
            self.page_words = c.page // word_bytes
        self.used = None
        if self.page_words:
            self.used = torch.zeros((n + self.page_words - 1) // self.page_words, dtype=torch.bool, device=dev)

    def allowed(self, words: torch.Tensor, codes: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Bits (codes' dtype) that words ``words`` (global indices) holding ``codes`` may flip now: the
        direction/map rule, never a bit already flipped (differs from ``clean``), nothing on a used page."""
        up = None if self.up is None else self.up[words]
        down = None if self.down is None else self.down[words]
        ok = kernels.flippable(codes, up, down, bits=self.bits, protected=self.protected)
        ok = kernels.clear_bits(ok, kernels.bit_xor(codes, clean))
        if self.used is not None:
            ok = torch.where(self.used[self.page_of(words)], torch.zeros_like(ok), ok)
        return ok

    def page_of(self, words: torch.Tensor) -> torch.Tensor:
        """Page index of global word indices (all 0 without a page limit)."""
        if not self.page_words:
            return torch.zeros_like(words)
        return torch.div(words, self.page_words, rounding_mode="floor")

    def mark(self, words: torch.Tensor) -> torch.Tensor | None:
        """Pages of ``words`` become used; returns the global indices of every word on them (None: no limit)."""
        if self.used is None:
            return None
        pages = torch.unique(self.page_of(words))
        self.used[pages] = True
        n = self.n_words
        span = torch.arange(self.page_words, device=words.device)
        w = (pages.unsqueeze(1) * self.page_words + span).reshape(-1)
        return w[w < n]
