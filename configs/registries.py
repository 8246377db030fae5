"""The registries of named entries: defenses and attacks (models and datasets: see the harness).

    from bitbench import register_defense, list_defenses, create_defense
    list_attacks("random*")                 # shell-style wildcards
    create_attack("random_p0.01:patterns=10")

Each registry imports the modules of its built-in entries on first lookup (``advbet``, a defense that lives with
the attack it trains against, is therefore always found) and then its entry-point group.
"""

from __future__ import annotations

from .registry import Registry

__all__ = ["DEFENSES", "ATTACKS", "register_defense", "register_attack", "list_defenses", "list_attacks",
           "create_defense", "create_attack"]

DEFENSES = Registry("defense", entry_point_group="bitbench.defenses",
                    builtins=("bitbench.defenses.zoo", "bitbench.attacks.advbet"))
ATTACKS = Registry("attack", entry_point_group="bitbench.attacks", builtins=("bitbench.attacks",))

register_defense = DEFENSES.register
register_attack = ATTACKS.register


def list_defenses(pattern: str = "*") -> list[str]:
    """Registered defense names matching a wildcard, e.g. ``list_defenses('rand*')``."""
    return DEFENSES.list(pattern)


def list_attacks(pattern: str = "*") -> list[str]:
    """Registered attack names matching a wildcard, e.g. ``list_attacks('random*')``."""
    return ATTACKS.list(pattern)


def create_defense(spec: str, **overrides):
    """Instantiate a defense from ``'name'`` or ``'name:key=value,...'``."""
    return DEFENSES.create(spec, **overrides)


def create_attack(spec: str, **overrides):
    """Instantiate an attack from ``'name'``, ``'name:key=value,...'`` or a parametric name (``random_p0.01``)."""
    return ATTACKS.create(spec, **overrides)
