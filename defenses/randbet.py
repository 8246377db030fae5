"""Random bit error training (RandBET): the training step.

Per batch (paper protocol):

1. clean forward/backward on the quantized model -> gradient ``g_c``;
2. a fresh random bit-error pattern at rate ``p`` (the shared kernels' definition, seed drawn from a generator owned
   by this step, never the global RNG) is injected into the integer codes, dequantized, forward/backward ->
   ``g_p``, clipped elementwise to ``[-grad_clip, grad_clip]``;
3. the optimizer applies ``(g_c + g_p) / 2``.

Curriculum: the bit-error pass starts off. After each step it is switched on for the next step when the clean loss
is below ``1.15 * threshold`` and the mean of clean and perturbed loss is at most ``threshold``, and off otherwise.
While it is off the perturbed loss is not measured and the clean loss stands in for it (so it switches on once the
clean loss is at most ``threshold``). ``threshold`` is 1.75 for CIFAR-10 and MNIST, 3.5 for CIFAR-100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitbench import kernels

from .training import QATStep, _accuracy, all_reduce_mean

__all__ = ["RandBETStep", "curriculum_next"]


def curriculum_next(active: bool, clean_loss: float, perturbed_loss: float | None, threshold: float) -> bool:
    """Whether the bit-error pass runs in the next step (see the module docstring)."""
    p_loss = clean_loss if (not active or perturbed_loss is None) else perturbed_loss
    return clean_loss < 1.15 * threshold and (clean_loss + p_loss) / 2 <= threshold


class RandBETStep(QATStep):
    """The RandBET step. ``pattern_fn(qm, seed) -> codes`` may replace the random pattern (AdvBET does)."""

    name = "randbet"

    def __init__(self, p: float = 0.01, *, grad_clip: float = 0.05, threshold: float | None = 1.75,
                 seed: int = 0, p10: float | None = None, pattern_fn=None):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be a rate (fraction) in [0, 1], got {p!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {grad_clip!r}")
        self.p = float(p)
        self.p10 = None if p10 is None else float(p10)
        self.grad_clip = grad_clip
        self.threshold = threshold
        self.seed = int(seed)
        self.pattern_fn = pattern_fn
        self.active = threshold is None  # no curriculum: always on
        self.generator = torch.Generator().manual_seed(self.seed)

    def draw_seed(self) -> int:
        """The next pattern seed (63-bit) from this step's own generator."""
        return int(torch.randint(0, 2 ** 62, (1,), generator=self.generator).item())

    def pattern(self, qm, seed: int) -> torch.Tensor:
        if self.pattern_fn is not None:
            return self.pattern_fn(qm, seed)
        return kernels.random_flip(qm.codes, self.p, self.p10, seed=seed, bits=qm.bits, protected=qm.protected)

    def __call__(self, trainer, x, y) -> dict:
        if trainer.quantizer is None:
            raise ValueError("RandBET needs a quantization scheme on the trainer")
        model = trainer.forward_model
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        was_active = self.active
        with trainer.quantizer.straight_through() as st:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            stats = {"loss": loss.item(), "acc": _accuracy(logits.detach(), y), "bet_on": float(was_active)}
            p_loss = None
            if was_active:
                clean_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
                for p in params:
                    p.grad = None
                st.load(self.pattern(st.qm, self.draw_seed()))
                logits_p = model(x)
                loss_p = F.cross_entropy(logits_p, y)
                loss_p.backward()
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
            losses = all_reduce_mean([stats["loss"], stats["loss"] if p_loss is None else p_loss],
                                     trainer.device)
            self.active = curriculum_next(was_active, losses[0], None if p_loss is None else losses[1],
                                          self.threshold)
        return stats

    def state_dict(self) -> dict:
        return {"active": self.active, "generator": self.generator.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.active = bool(d["active"])
        self.generator.set_state(d["generator"])

    def identity(self) -> dict:
        return {"step": self.name, "p": self.p, "p10": self.p10, "grad_clip": self.grad_clip,
                "threshold": self.threshold, "seed": self.seed}
