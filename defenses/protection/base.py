"""The protection stage: a defense's weight memory plus check bits, decoded after every bit-error pattern.

A protection (SEC-DED ECC words, RADAR-style checksums) wraps any quantized memory -- a flat memory of ``N`` words
of ``m`` bits that decode to weights -- without changing it: :meth:`Protection.bind` computes the *check words* of
the clean memory, and :meth:`ProtectedModel.recover` turns a perturbed memory (data words, and check words where
errors reach them) into the memory the accelerator computes with: corrected, with detected-uncorrectable words
handled by the stage's ``policy``:

* ``zero``: the words are replaced by the code of weight 0 (the code that decodes nearest to 0: the tensor's zero
  point);
* ``keep``: the words are used as read (detection only);
* ``fail``: the inference fails -- every evaluated input of that pattern counts as misclassified.

Protected image (docs/formats.md): the data words keep their global indices ``0 .. N-1`` (so pattern ``k`` flips
exactly the data bits it flips in the unprotected memory: the same chip); then each stage's stored check region
follows, in stage order, check word ``j`` of a region at global index ``offset + j`` with its ``c`` bits (bit 0 =
LSB). Random bit errors draw every word of the image with the one flip rule of :mod:`bitbench.kernels`. Check words
kept in secure storage (RADAR's golden signatures) are not part of the image; they count in the memory overhead.

A defense spec names protections after ``+`` (``rquant+secded``, ``clip+radar:group=16``); the protected defense
trains exactly as its base (same checkpoint) and only its deployed memory differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bitbench import kernels
from bitbench.configs.spec import SpecError, join_stages

from ..base import Defense
from ..memory import MEMORY_MEMBERS, Memory, Recovery

__all__ = ["POLICIES", "Protection", "Stage", "CheckRegion", "Recovery", "ProtectedModel", "ProtectedDefense", "protect",
           "zero_codes", "check_policy"]

POLICIES = ("zero", "keep", "fail")


def check_policy(policy) -> str:
    if policy not in POLICIES:
        raise SpecError(f"policy must be one of {', '.join(POLICIES)} (what a detected, uncorrectable word does: "
                        f"replaced by weight 0, used as read, or the inference fails), got {policy!r}")
    return policy


def zero_codes(qm) -> torch.Tensor:
    """The word of weight 0 for every word of ``qm``, in its memory format: affine codes are encoded with their
    contexts (the nearest code to 0 inside each segment's range); float formats hold +0.0."""
    flat = torch.zeros(qm.n_words, dtype=qm.scheme.compute_dtype, device=qm.device)
    ctx = qm.ctx_on(qm.device)
    codes, _, _ = qm.scheme.quantize(flat, qm.segments, context=ctx, check=False)
    return codes.to(qm.device)


@dataclass
class CheckRegion:
    """Check words of one stage. ``words``: the clean check words (1-D integer tensor); ``bits``: c bits per word
    (bits 0..c-1); ``stored``: part of the protected image (bit errors reach it) or kept in secure storage;
    ``offset``: global index of its first word in the image (set by :class:`ProtectedModel`; None if not stored)."""

    name: str
    words: torch.Tensor
    bits: int
    stored: bool = True
    offset: int | None = None

    @property
    def n_words(self) -> int:
        return self.words.numel()

    @property
    def n_bits(self) -> int:
        return self.n_words * self.bits


class Stage:
    """A protection bound to one memory: its check region and its decoder. Subclasses implement :meth:`decode`."""

    protection: "Protection"
    region: CheckRegion

    def decode(self, cur: torch.Tensor, check: torch.Tensor | None, clean: torch.Tensor, pm: "ProtectedModel",
               stats: dict) -> bool:
        """Decode in place: ``cur`` (the data words as read) becomes what the accelerator computes with; ``check``
        the check words as read (None: as stored); ``clean`` the stored data. Adds counts to ``stats`` (keys
        prefixed with the stage name) and returns True when the inference fails (policy ``fail``)."""
        raise NotImplementedError


class Protection:
    """Base class of protections (entries of the protection registry). Subclasses implement :meth:`bind`.

    Instances created through the registry carry ``registry_name``, ``params`` and ``spec``.
    """

    registry_name: str = "protection"
    policy: str = "zero"
    reads_raw: bool = False   # decodes the raw memory read (ECC): only as the first stage
    #: the per-pattern counts the stage reports, ``{name: doc}`` (recorded as ``<stage>.<name>``)
    counts: dict = {}
    #: the count of the units (words, groups) the stage flags, if any
    flagged: str | None = None
    #: ratios over all patterns, ``{name: [numerator count, denominator count]}`` (e.g. a detection rate)
    ratios: dict = {}

    def bind(self, qm) -> Stage:
        """The stage for quantized memory ``qm`` (its clean check words computed)."""
        raise NotImplementedError

    def describe(self, stage: Stage) -> dict:
        """Facts of the bound stage for result records (``name``, ``spec``, ``params``, check bits, ...)."""
        r = stage.region
        return {"name": self.registry_name, "spec": getattr(self, "spec", self.registry_name),
                "params": dict(getattr(self, "params", {})), "check_words": r.n_words, "check_bits": r.n_bits,
                "stored": r.stored, "policy": self.policy, "counts": dict(self.counts), "flagged": self.flagged,
                "ratios": {k: list(v) for k, v in self.ratios.items()}}

    def __repr__(self) -> str:
        return f"<protection {getattr(self, 'spec', type(self).__name__)}>"


def _delegate(name: str):
    def get(self):
        return getattr(self.base, name)

    return property(get, doc=f"The protected memory's ``{name}``.")


class ProtectedModel(Memory):
    """A quantized memory with its protection stages (see the module docstring): a :class:`~.memory.Memory`.

    The members every memory offers (:data:`~bitbench.defenses.memory.MEMORY_MEMBERS`: codes, layout, decoding,
    ``flip_deltas``, ``load_into``) are the protected memory's: attacks flip data words as before.
    ``check_regions`` are the stored check regions, in image order; :meth:`recover` decodes a perturbed image
    (its :class:`Recovery` counts: ``flips`` = bits flipped in the whole image, ``residual`` = data bits that differ
    from the stored data after decoding, and each stage's ``<stage>.<count>``).
    """

    decodes = True

    def __init__(self, qm, protections):
        if isinstance(qm, ProtectedModel):
            raise TypeError("the memory is already protected: give all protections at once")
        self.base = qm
        self.protections = list(protections)
        for i, p in enumerate(self.protections):
            if i and getattr(p, "reads_raw", False):
                raise SpecError(f"{getattr(p, 'spec', p.registry_name)!r} decodes the raw memory read: name it first "
                                f"(e.g. rquant+{getattr(p, 'spec', p.registry_name)}+"
                                f"{getattr(self.protections[0], 'spec', '')})")
        self.stages = [p.bind(qm) for p in self.protections]
        offset = qm.n_words
        self.check_regions: list[CheckRegion] = []
        for st in self.stages:
            if st.region.stored:
                st.region.offset = offset
                offset += st.region.n_words
                self.check_regions.append(st.region)
        self._image_words = offset
        self._zero = None

    @property
    def image_words(self) -> int:
        return self._image_words

    def __repr__(self) -> str:
        return f"ProtectedModel({self.base!r} + {self.spec})"

    @property
    def spec(self) -> str:
        """The protection stages as in a defense spec after the defense (``secded:word=32+radar``)."""
        return "+".join(getattr(p, "spec", p.registry_name) for p in self.protections)

    @property
    def zero_codes(self) -> torch.Tensor:
        if self._zero is None or self._zero.device != self.base.codes.device:
            self._zero = zero_codes(self.base)
        return self._zero

    # -- costs -------------------------------------------------------------------------------------------------
    @property
    def data_bits(self) -> int:
        return self.base.n_words * self.base.bits

    @property
    def check_bits(self) -> int:
        """Check bits of every stage (stored in the image or in secure storage)."""
        return sum(st.region.n_bits for st in self.stages)

    @property
    def image_bits(self) -> int:
        """Bits of the protected image that bit errors reach (data and stored check bits)."""
        return self.data_bits + sum(r.n_bits for r in self.check_regions)

    @property
    def memory_overhead(self) -> float:
        """Check bits / data bits (a fraction: 0.125 = 12.5%)."""
        return self.check_bits / self.data_bits if self.data_bits else 0.0

    def describe(self) -> dict:
        """The record's ``protection`` object (docs/formats.md)."""
        return {"spec": self.spec, "data_bits": self.data_bits, "check_bits": self.check_bits,
                "image_bits": self.image_bits, "memory_overhead": self.memory_overhead,
                "stages": [p.describe(st) for p, st in zip(self.protections, self.stages)]}

    # -- decoding ----------------------------------------------------------------------------------------------
    def recover(self, codes: torch.Tensor, check: list | None = None, out: torch.Tensor | None = None) -> Recovery:
        """Decode a perturbed image: ``codes`` the data words as read, ``check`` one tensor per stored check region
        (``check_regions`` order) as read, or None (check bits as stored: an attack that only flips data words).
        Stages decode in the order named (``rquant+secded+radar``: the memory's ECC corrects what it reads, then
        the checksums check the corrected words; ECC decodes the raw read, so name it first). ``codes`` is not
        modified; the result
        is written into ``out`` when given."""
        t0 = time.perf_counter()
        clean = self.base.codes
        if out is None:
            out = codes.clone()
        elif out.data_ptr() != codes.data_ptr():
            out.copy_(codes)
        if check is not None and len(check) != len(self.check_regions):
            raise ValueError(f"check holds {len(check)} tensors, the image has {len(self.check_regions)} check "
                             "regions")
        by_region = {id(r): c for r, c in zip(self.check_regions, check or [])}
        stats: dict = {"flips": kernels.hamming_total(clean, codes, bits=self.base.bits)
                       + sum(kernels.hamming_total(r.words, c, bits=r.bits) for r, c in
                             zip(self.check_regions, check or []))}
        failed = False
        for st in self.stages:
            failed |= bool(st.decode(out, by_region.get(id(st.region)), clean, self, stats))
        stats["residual"] = kernels.hamming_total(clean, out, bits=self.base.bits)
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        return Recovery(codes=out, failed=failed, stats=stats, seconds=time.perf_counter() - t0)

    def to(self, device) -> "ProtectedModel":
        return ProtectedModel(self.base.to(device), self.protections)


for _m in MEMORY_MEMBERS:   # explicit delegation of the memory interface (the protected words are the base's)
    setattr(ProtectedModel, _m, _delegate(_m))


class ProtectedDefense(Defense):
    """A defense whose deployed memory is protected: it trains, and is stored, exactly as its base defense (the
    same checkpoint); :meth:`quantize` returns a :class:`ProtectedModel`."""

    def __init__(self, base: Defense, protections):
        if isinstance(base, ProtectedDefense):
            raise TypeError("the defense is already protected: give all protections at once")
        if not protections:
            raise ValueError("a protected defense needs at least one protection")
        self.base = base
        self.protections = list(protections)
        self.w_max = base.w_max
        self.params = dict(getattr(base, "params", {}))
        self.registry_name = join_stages(getattr(base, "registry_name", type(base).__name__.lower()),
                                         [p.registry_name for p in self.protections])
        self.spec = join_stages(getattr(base, "spec", self.registry_name),
                                [getattr(p, "spec", p.registry_name) for p in self.protections])

    @property
    def protection_spec(self) -> str:
        return "+".join(getattr(p, "spec", p.registry_name) for p in self.protections)

    # the base defense's training and storage
    def scheme(self):
        return self.base.scheme()

    def storage_scheme(self):
        return self.base.storage_scheme()

    @property
    def storage_format(self) -> bool:
        return self.base.storage_format

    def make_step(self, **kw):
        return self.base.make_step(**kw)

    def identity(self) -> dict:
        return self.base.identity()

    def trainer(self, *a, **kw):
        return self.base.trainer(*a, **kw)

    def train(self, *a, **kw):
        return self.base.train(*a, **kw)

    def recipe(self, train=None) -> dict:
        return dict(self.base.recipe(train), protection=self.protection_spec)

    def supplied_recipe(self) -> dict:
        return dict(self.base.supplied_recipe(), protection=self.protection_spec)

    def protect_memory(self, qm) -> ProtectedModel:
        """``qm`` (the base defense's deployed memory) with this defense's protections."""
        return ProtectedModel(qm, self.protections)

    def quantize(self, model, include=None, exclude=None, *, trained_here: bool = False) -> ProtectedModel:
        return self.protect_memory(self.base.quantize(model, include=include, exclude=exclude,
                                                      trained_here=trained_here))


def protect(defense: Defense, protections) -> ProtectedDefense:
    """``defense`` with its deployed memory protected by ``protections`` (the stages after ``+`` in a spec:
    ``rquant+secded``): the defense registry's composer."""
    if isinstance(defense, ProtectedDefense):
        raise SpecError(f"{defense.spec!r} is already protected: name every protection in one spec")
    if not isinstance(defense, Defense):
        raise SpecError(f"{getattr(defense, 'spec', defense)!r} cannot be combined with protections")
    return ProtectedDefense(defense, protections)
