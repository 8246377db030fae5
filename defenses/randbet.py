"""Random bit error training (RandBET): the training step, as the method's implementation runs it.

Per batch:

1. clean forward/backward in train mode on the quantized weights (straight-through) -> gradient ``g_c``;
2. a fresh random bit-error pattern at rate ``p`` (the shared kernels' flip rule; the seed is drawn from a generator
   owned by this step, never the global RNG; protected high bits of low-bit codes never flip) is injected into the
   codes of the current weights. The original quantizes and flips with the model in eval mode; here quantizing does
   not depend on the mode, so the perturbed codes are the clean codes with the pattern applied;
3. perturbed forward/backward in train mode -> ``g_p``, clipped elementwise to ``[-grad_clip, grad_clip]``;
   buffers (batch-norm running statistics) come from the clean pass only: the perturbed pass's updates are undone;
4. the optimizer applies ``(g_c + g_p) / 2``.

Curricula (``curriculum``):

* ``'loss'`` (the paper's default): the bit-error pass starts off. While it is off, the perturbed loss counts as 0.
  After each step it is on for the next step when the clean loss is below ``1.15 * threshold`` and
  ``(clean + perturbed) / 2 <= threshold``, and off otherwise (``threshold`` 1.75 for CIFAR-10 and MNIST, 3.5 for
  CIFAR-100). So it first switches on once the clean loss is below ``1.15 * 1.75 = 2.0125``.
* ``'step'`` (the original's alternative): the same loss gating, and the rate raised in 20 steps over the first
  half of training: with ``s = (E // 2) // 20`` epochs per step (``E`` epochs), the rate after a step taken in epoch
  ``e`` (0-based) is ``(k + 1) * (p / 20)`` with ``k = min(19, e // s)``, or ``p`` at once when ``s = 0`` (fewer than
  40 epochs: no ramp). Like the gating, the rate is set after each step for the next one (the first batch of an
  epoch still uses the previous epoch's rate); before the first step it is ``p``. ``threshold=None``: the ramp
  without gating.
* ``'none'``: always on at rate ``p``.
"""

from __future__ import annotations

import torch

from bitbench import kernels

from .training import QATStep, _accuracy, _loss, all_reduce_mean

__all__ = ["RandBETStep", "curriculum_next", "step_rate", "CURRICULA"]

CURRICULA = ("loss", "step", "none")


def curriculum_next(active: bool, clean_loss: float, perturbed_loss: float | None, threshold: float) -> bool:
    """Whether the bit-error pass runs in the next step under the loss curriculum (module docstring): the
    perturbed loss counts as 0 while the pass is off (or was not measured)."""
    p_loss = perturbed_loss if (active and perturbed_loss is not None) else 0.0
    return clean_loss < 1.15 * threshold and (clean_loss + p_loss) / 2 <= threshold


STEP_RAMP = 20  # the 'step' curriculum's number of rate steps


def step_rate(p: float, epoch: int, epochs: int, steps: int = STEP_RAMP) -> float:
    """The 'step' curriculum's rate set after a step in epoch ``epoch`` (0-based) of ``epochs`` (module
    docstring): ``(k + 1) * (p / steps)``, ``k = min(steps - 1, epoch // ((epochs // 2) // steps))``, or the last
    step's at once when ``(epochs // 2) // steps`` is 0."""
    per = (epochs // 2) // steps
    k = steps - 1 if per == 0 else min(steps - 1, epoch // per)
    return (k + 1) * (p / steps)


class RandBETStep(QATStep):
    """The RandBET step. ``pattern_fn(qm, seed) -> codes`` may replace the random pattern (AdvBET does).

    ``threshold=None`` with ``curriculum='loss'`` means no curriculum (always on), as ``curriculum='none'``; with
    ``curriculum='step'`` the ramp without the loss gating."""

    name = "randbet"

    def __init__(self, p: float = 0.01, *, grad_clip: float = 0.05, threshold: float | None = 1.75,
                 seed: int = 0, p10: float | None = None, pattern_fn=None, curriculum: str = "loss"):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be a rate (fraction) in [0, 1], got {p!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {grad_clip!r}")
        if curriculum not in CURRICULA:
            raise ValueError(f"curriculum must be one of {CURRICULA}, got {curriculum!r}")
        if curriculum == "loss" and threshold is None:
            curriculum = "none"
        self.p = float(p)
        self.p10 = None if p10 is None else float(p10)
        self.grad_clip = grad_clip
        self.curriculum = curriculum
        self.threshold = threshold if curriculum in ("loss", "step") else None
        self.seed = int(seed)
        self.pattern_fn = pattern_fn
        self.active = self.threshold is None  # the loss gating starts off
        self.generator = torch.Generator().manual_seed(self.seed)
        self._rate = self.p
        self._scheduled = self.p  # the 'step' curriculum's rate for the next step

    def draw_seed(self) -> int:
        """The next pattern seed (63-bit) from this step's own generator."""
        return int(torch.randint(0, 2 ** 62, (1,), generator=self.generator).item())

    def rate(self, trainer) -> float:
        """The bit error rate of this step's pattern (the 'step' curriculum: as set after the previous step)."""
        if self.curriculum == "step":
            return self._scheduled
        return self.p

    def pattern(self, qm, seed: int) -> torch.Tensor:
        if self.pattern_fn is not None:
            return self.pattern_fn(qm, seed)
        p = self._rate
        p10 = None if self.p10 is None else self.p10 * (p / self.p if self.p else 1.0)
        return kernels.random_flip(qm.codes, p, p10, seed=seed, bits=qm.bits, protected=qm.protected)

    def __call__(self, trainer, x, y) -> dict:
        if trainer.quantizer is None:
            raise ValueError("RandBET needs a quantization scheme on the trainer")
        model = trainer.forward_model
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        was_active = self.active
        with trainer.quantizer.straight_through() as st:
            logits = model(x)
            loss = _loss(logits, y)
            loss.backward()
            stats = {"loss": loss.item(), "acc": _accuracy(logits.detach(), y), "bet_on": float(was_active)}
            p_loss = None
            if was_active:
                clean_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
                for p in params:
                    p.grad = None
                self._rate = self.rate(trainer)
                stats["p"] = self._rate
                st.load(self.pattern(st.qm, self.draw_seed()))
                # the perturbed pass must not move the running statistics: keep the clean pass's buffers
                buffers = [b for b in trainer.model.buffers()]
                saved = [b.detach().clone() for b in buffers]
                logits_p = model(x)
                loss_p = _loss(logits_p, y)
                loss_p.backward()
                with torch.no_grad():
                    for b, s in zip(buffers, saved):
                        b.copy_(s)
                p_loss = loss_p.item()
                stats["loss_perturbed"] = p_loss
                stats["acc_perturbed"] = _accuracy(logits_p.detach(), y)
                with torch.no_grad():
                    for p, gc in zip(params, clean_grads):
                        gp = p.grad
                        if gp is None and gc is None:
                            continue
                        if gp is None:
                            gp = torch.zeros_like(gc)
                        if self.grad_clip is not None:
                            gp = gp.clamp(-self.grad_clip, self.grad_clip)
                        p.grad = (gp if gc is None else gc + gp) / 2
        if self.threshold is not None:
            # Under torch.distributed every rank decides on the same (rank-averaged) losses.
            losses = all_reduce_mean([stats["loss"], 0.0 if p_loss is None else p_loss], trainer.device)
            self.active = curriculum_next(was_active, losses[0], None if p_loss is None else losses[1],
                                          self.threshold)
        if self.curriculum == "step":
            self._scheduled = step_rate(self.p, trainer.epoch, trainer.config.epochs)
        return stats

    def state_dict(self) -> dict:
        return {"active": self.active, "generator": self.generator.get_state(), "rate": self._scheduled}

    def load_state_dict(self, d: dict) -> None:
        self.active = bool(d["active"])
        self.generator.set_state(d["generator"])
        self._scheduled = float(d.get("rate", self.p))

    def identity(self) -> dict:
        return {"step": self.name, "p": self.p, "p10": self.p10, "grad_clip": self.grad_clip,
                "threshold": self.threshold, "curriculum": self.curriculum, "seed": self.seed}
