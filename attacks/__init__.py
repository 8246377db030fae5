"""Attacks: random bit errors (the shared seeded patterns; in the weights, the quantization metadata, the buffers
and the activations), profiled chips (error maps) and gradient-guided adversarial bit flips (BFA, targeted T-BFA,
budgeted projected-gradient attack; threat-model constraints in :mod:`.constraints`); plus the AdvBET defense built
on the latter.

    from bitbench.attacks import create_attack, list_attacks
    attack = create_attack("random_p0.01")   # or 'bfa', 'bfa_n20', 'tbfa:target=3', 'budget_e40', 'errmap:file=c.npz'
    for pert in attack.perturbations(qm, model=model, data=(x_attack, y_attack)):
        qm.load_into(model, pert.codes)
        ...

The ``advbet`` defense lives here, with the attack it trains against; the defense registry imports it on first
lookup.
"""

from .base import Attack, Perturbation  # noqa: F401
from bitbench.configs.registries import ATTACKS, create_attack, list_attacks, register_attack  # noqa: F401
from bitbench.configs.spec import SpecError  # noqa: F401
from .random_errors import RandomBitErrors, RandomMSBErrors  # noqa: F401
from .act_random import ActRandomErrors, ActRandomMSBErrors  # noqa: F401
from .error_map import ErrorMap, ErrorMapError, load_error_map, save_error_map  # noqa: F401
from .bfa import BFA  # noqa: F401
from .bfa_adaptive import AdaptiveBFA  # noqa: F401
from .tbfa import TargetedBFA  # noqa: F401
from .budget import BudgetAttack  # noqa: F401
from .advbet import AdvBET, AdvBETStep  # noqa: F401
from .tolerable import TolerableRateAnalysis  # noqa: F401

__all__ = ["Attack", "Perturbation", "ATTACKS", "SpecError", "create_attack", "list_attacks", "register_attack",
           "RandomBitErrors", "RandomMSBErrors", "ActRandomErrors", "ActRandomMSBErrors", "ErrorMap", "ErrorMapError",
           "load_error_map", "save_error_map",
           "BFA", "AdaptiveBFA", "TargetedBFA", "BudgetAttack", "AdvBET", "AdvBETStep", "TolerableRateAnalysis"]
