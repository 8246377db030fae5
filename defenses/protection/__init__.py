"""Runtime protection of the weight memory: the stages after ``+`` in a defense spec (``rquant+secded``,
``clip+radar:group=16``). See :mod:`.base` for the protected image and the decoding contract; the built-in
protections are SEC-DED ECC words (:mod:`.secded`) and RADAR-style group checksums (:mod:`.radar`). Third-party
protections register with ``bitbench.register_protection`` or the entry-point group ``bitbench.protections``."""

from bitbench.configs.registries import DEFENSES

from .base import (POLICIES, CheckRegion, ProtectedDefense, ProtectedModel, Protection, Recovery, Stage,  # noqa: F401
                   protect, zero_codes)
from .secded import SECDED  # noqa: F401
from .radar import RADAR  # noqa: F401

DEFENSES.set_composer(protect)   # 'defense+protection' specs compose here

__all__ = ["POLICIES", "CheckRegion", "ProtectedDefense", "ProtectedModel", "Protection", "Recovery", "Stage",
           "zero_codes", "protect", "SECDED", "RADAR"]
