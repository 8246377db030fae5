"""The defense contract: a memory format (quantization scheme or float format) plus how the model is trained."""

from __future__ import annotations

from torch import nn

from .quantization import QuantScheme
from .quantized_model import QuantizedModel
from .training import QATStep, Trainer, TrainConfig

__all__ = ["Defense", "NUMERICS", "with_training"]

# The numerics and recipe generation: part of every checkpoint key, so models trained before a change are retrained.
# /2: range parameters in binary64, weights clipped before every forward pass, lr milestones at floor(k E / 5), the
# step curriculum keeps the loss gating and ramps p in 20 steps, AutoAugment rotate/shear as PIL computes them,
# SimpleNet below 32 pixels without blocks 9-10, training at a fixed intra-op thread count.
NUMERICS = "original/2"  # docs/numerics.md


def with_training(recipe: dict, train: TrainConfig | None) -> dict:
    """``recipe`` with the training configuration's part (:meth:`TrainConfig.recipe`) under ``train`` and its
    deviations appended to ``recipe['deviations']`` (unchanged without ``train``)."""
    if train is None:
        return recipe
    t = train.recipe()
    return dict(recipe, train={k: v for k, v in t.items() if k != "deviations"},
                deviations=list(recipe["deviations"]) + t["deviations"])


class Defense:
    """A recipe that produces a deployed quantized model.

    Subclasses set the memory format :meth:`scheme` (a :class:`QuantScheme` or a
    :class:`~bitbench.defenses.float_formats.FloatFormat`), optional weight clipping (:attr:`w_max`) and the training
    step (:meth:`make_step`). ``checkpoint_name`` (default: the spec) names the cached checkpoint file. Instances created through the registry also carry ``registry_name``, ``params``
    (every parameter, defaults filled in) and ``spec`` (canonical spec string).
    """

    registry_name = "defense"
    w_max: float | None = None

    def scheme(self) -> QuantScheme:
        raise NotImplementedError

    @property
    def storage_format(self) -> bool:
        """Whether this defense is only a way of storing weights: its training adds nothing to quantization-aware
        training with its scheme but, at most, the paper's clip at w_max = 1 (Normal, RQuant, ``quant`` without
        ``w_max``). Only such a defense applies to a model the benchmark did not train (a user's checkpoint): the
        storage scheme applies, the training elements do not (the result record says so)."""
        return False

    def storage_scheme(self) -> QuantScheme:
        """How a model that this recipe did not train is stored (default: :meth:`scheme`)."""
        return self.scheme()

    def training_scheme(self):
        """The scheme of the straight-through forward pass in training (default: :meth:`scheme`; None: float
        training, e.g. the float storage formats)."""
        return self.scheme()

    def make_step(self, *, seed: int, num_classes: int | None = None):
        """The training step object (default: quantization-aware training)."""
        return QATStep()

    def identity(self) -> dict:
        """What determines the trained weights (for checkpoint keys)."""
        return {"defense": getattr(self, "registry_name", type(self).__name__),
                "params": dict(getattr(self, "params", {})), "scheme": self.scheme().to_dict(),
                "numerics": NUMERICS}

    def supplied_recipe(self) -> dict:
        """The recipe field of a result record for a supplied model stored with this defense: nothing of the
        training recipe applies, only :meth:`storage_scheme`."""
        return {"quantization": self.storage_scheme().name, "trained_here": False,
                "not_applied": ["training" + (f" (with the clip at w_max = {self.w_max:g})" if self.w_max else "")],
                "deviations": []}

    def recipe(self, train: TrainConfig | None = None) -> dict:
        """The training recipe's elements, and ``deviations``: the elements of the paper's recipe this defense
        turns off (recorded in every result record). With ``train`` (the suite's :class:`TrainConfig`) also the
        optimizer, schedule and thread count, and where they differ from the paper's (e.g. a cosine schedule)."""
        d = {"quantization": self.scheme().name, "clip": self.w_max, "deviations": []}
        if self.w_max is None:
            d["deviations"].append("no weight clipping (the paper clips every model after each step, at "
                                   "w_max = 1 for Normal and RQuant)")
        return with_training(d, train)

    def trainer(self, model: nn.Module, config: TrainConfig, *, augment=None, num_classes: int | None = None,
                wrap=None, include=None, exclude=None) -> Trainer:
        return Trainer(model, config, scheme=self.training_scheme(), step=self.make_step(seed=config.seed,
                                                                                   num_classes=num_classes),
                       w_max=self.w_max, augment=augment, wrap=wrap, include=include, exclude=exclude)

    def train(self, model: nn.Module, train_x, train_y, config: TrainConfig, *, augment=None,
              num_classes: int | None = None, checkpoint=None, key=None, wrap=None, include=None, exclude=None):
        """Train ``model`` in place with this recipe; returns the per-epoch history."""
        t = self.trainer(model, config, augment=augment, num_classes=num_classes, wrap=wrap, include=include,
                         exclude=exclude)
        return t.fit(train_x, train_y, checkpoint=checkpoint, key=key)

    def quantize(self, model: nn.Module, include=None, exclude=None, *, trained_here: bool = False) -> QuantizedModel:
        """``model`` stored in this defense's memory format: every parameter (frozen ones too), in
        ``named_parameters()`` order.

        By default the model is one this recipe did not train (a user's): it is stored with :meth:`storage_scheme`,
        exactly as :func:`bitbench.evaluate_model` and ``run --checkpoint`` store it. ``trained_here=True``: the
        model was trained with this defense's recipe by the benchmark (the harness's deployed model), stored with
        :meth:`scheme` (RQuant: its range capped at the training clip, which such weights never exceed)."""
        scheme = self.scheme() if trained_here else self.storage_scheme()
        return QuantizedModel.from_module(model, scheme, include=include, exclude=exclude)

    def __repr__(self) -> str:
        return f"<defense {getattr(self, 'spec', type(self).__name__)}>"
