"""AdvBET: adversarial bit error training (Stutz et al., TPAMI 2022), registered as the defense ``advbet``.

RandBET's recipe (RQuant with clipping, averaging the clean gradient and the clipped gradient under bit errors,
with the same curriculum) where the bit-error pattern of each step is computed by the budgeted bit attack
(:class:`attacks.budget.BudgetAttack`, at most ``eps`` flipped bits, one per weight) on the current training batch
and the current quantized weights, instead of a random pattern.

No hook in ``defenses/`` is needed: :class:`AdvBETStep` subclasses :class:`defenses.RandBETStep`; its ``__call__``
remembers the trainer and batch, and its ``pattern(qm, seed)`` runs the attack with them (``seed`` comes from the
step's own generator, so training stays reproducible and never touches the global RNG). The attack restores the
parameters (clean dequantized values of the straight-through pass), buffers and mode before RandBET loads the
returned codes, and it never touches ``.grad``.

The defense registry imports this module on first lookup, so ``advbet`` is always found.
"""

from __future__ import annotations

from bitbench.configs.registries import register_defense
from bitbench.defenses.randbet import RandBETStep
from bitbench.defenses.zoo import BitErrorTraining, resolve_threshold

from .base import check_int
from .budget import BudgetAttack

__all__ = ["AdvBET", "AdvBETStep"]


class AdvBETStep(RandBETStep):
    """The RandBET step with the budgeted attack as the pattern source."""

    name = "advbet"

    def __init__(self, attack: BudgetAttack, *, grad_clip: float = 0.05, threshold: float | None = 1.75,
                 seed: int = 0):
        super().__init__(0.0, grad_clip=grad_clip, threshold=threshold, seed=seed)
        self.attack = attack
        self._batch = None
        self.last_info: dict = {}

    def __call__(self, trainer, x, y) -> dict:
        self._batch = (trainer, x, y)
        try:
            stats = super().__call__(trainer, x, y)
        finally:
            self._batch = None
        if self.last_info:
            stats["adv_flips"] = float(self.last_info.get("flips", 0))
            self.last_info = {}
        return stats

    def pattern(self, qm, seed: int):
        if self._batch is None:
            raise RuntimeError("AdvBETStep.pattern is only available during a training step")
        trainer, x, y = self._batch
        pert = self.attack.run(qm, trainer.model, (x, y), seed=seed, train_mode=trainer.model.training)
        self.last_info = pert.info
        return pert.codes

    def identity(self) -> dict:
        d = super().identity()
        d.update(step=self.name, p=None, attack=dict(getattr(self.attack, "params", {}) or {
            "eps": self.attack.eps, "iterations": self.attack.iterations, "restarts": self.attack.restarts,
            "step": self.attack.step, "momentum": self.attack.momentum}))
        return d


@register_defense("advbet")
class AdvBET(BitErrorTraining):
    """Adversarial bit error training: RandBET with budgeted-attack bit errors (eps flipped bits) each step.

    Args:
        eps: bit budget of the training attack (at most eps flipped bits, one per weight).
        w_max: clipping bound.
        bits: bits per weight (2..16).
        threshold: curriculum loss threshold; 'auto' = 1.75 (10 classes) or 3.5 (100 classes); none = always on.
        grad_clip: the perturbed gradient is clipped elementwise to [-grad_clip, grad_clip].
        iterations: gradient steps of the training attack (kept small for speed).
        granularity: ranges per 'tensor', per output 'channel' or per 'group:g' of g weights.
    """

    def __init__(self, eps: int = 20, w_max: float = 0.1, bits: int = 8, threshold: str = "auto",
                 grad_clip: float = 0.05, iterations: int = 5, granularity: str = "tensor"):
        self._setup(w_max, bits, threshold, grad_clip, granularity=granularity)
        self.eps = check_int(eps, "eps", 0)
        self.iterations = check_int(iterations, "iterations", 0)

    def make_attack(self) -> BudgetAttack:
        # batch=None: the whole training batch; one run from the current (clean) codes
        return BudgetAttack(eps=self.eps, iterations=self.iterations, restarts=1, batch=None)

    def make_step(self, *, seed: int, num_classes: int | None = None):
        return AdvBETStep(self.make_attack(), grad_clip=self.grad_clip,
                          threshold=resolve_threshold(self.threshold, num_classes), seed=2_000_003 + int(seed))
