"""The attack registry (same machinery as the defense registry).

    @register_attack("myattack")
    class MyAttack(Attack):
        def __init__(self, strength: float = 1.0): ...

    create_attack("myattack:strength=2")       # spec strings, parametric names (random_p0.01), overrides
    list_attacks("random*")

Third-party packages add attacks through the ``bitbench.attacks`` entry-point group.
"""

from __future__ import annotations

from defenses.registry import Registry, SpecError

__all__ = ["ATTACKS", "register_attack", "list_attacks", "create_attack", "SpecError"]

ATTACKS = Registry("attack", entry_point_group="bitbench.attacks")
register_attack = ATTACKS.register


def list_attacks(pattern: str = "*") -> list[str]:
    """Registered attack names matching a shell-style wildcard, e.g. ``list_attacks('random*')``."""
    return ATTACKS.list(pattern)


def create_attack(spec: str, **overrides):
    """Instantiate an attack from ``'name'``, ``'name:key=value,...'`` or a parametric name (``random_p0.01``)."""
    return ATTACKS.create(spec, **overrides)
