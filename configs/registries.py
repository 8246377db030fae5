"""The registries of named entries: defenses, protections, attacks, models and datasets.

    from bitbench import register_defense, list_defenses, create_defense
    list_attacks("random*")                 # shell-style wildcards
    create_attack("random_p0.01:patterns=10")
    list_models(), list_datasets()          # architectures (bitbench.models), datasets (bitbench.data)

A defense spec may add protections of the memory after ``+`` (``rquant+secded``, ``clip+radar:group=16``):
``create_defense`` builds the defense, then each protection (:data:`PROTECTIONS`, entry points
``bitbench.protections``), and returns the protected defense (the composer ``bitbench.defenses.protection`` sets).

The core names no module above it: the packages that hold built-in entries declare them (``Registry.add_builtins``;
``bitbench.builtin_entries`` declares every one of the package, and the public API, the command line and the
harness load it), and each registry imports them on its next lookup, then its entry-point group
(``bitbench.defenses``, ``bitbench.attacks``, ``bitbench.models``, ``bitbench.datasets``, ``bitbench.metrics``,
``bitbench.protections``).

Models are classes or factories returning an ``nn.Module``; the harness passes ``num_classes``, ``in_channels``,
``image_size`` (and ``mean``/``std`` for a fixed whitening layer) where the entry accepts them; build one with
:func:`bitbench.models.build_model`. Datasets are factories returning a :class:`bitbench.data.Dataset`; the harness
passes ``data_dir`` and ``n_eval`` where the entry accepts them; load one with :func:`bitbench.data.load_dataset`.
"""

from __future__ import annotations

from .registry import Registry, StagedRegistry

__all__ = ["DEFENSES", "PROTECTIONS", "ATTACKS", "MODELS", "DATASETS", "METRICS", "register_defense",
           "register_protection", "register_attack", "register_model", "register_dataset", "register_metric",
           "list_defenses", "list_protections", "list_attacks", "list_models", "list_datasets", "list_metrics",
           "create_defense", "create_protection", "create_attack", "create_metric"]

PROTECTIONS = Registry("protection", entry_point_group="bitbench.protections")
DEFENSES = StagedRegistry("defense", entry_point_group="bitbench.defenses", stages=PROTECTIONS)
ATTACKS = Registry("attack", entry_point_group="bitbench.attacks")
MODELS = Registry("model", entry_point_group="bitbench.models")
DATASETS = Registry("dataset", entry_point_group="bitbench.datasets")
METRICS = Registry("metric", entry_point_group="bitbench.metrics")

register_defense = DEFENSES.register
register_protection = PROTECTIONS.register
register_attack = ATTACKS.register
register_model = MODELS.register
register_dataset = DATASETS.register
register_metric = METRICS.register


def list_defenses(pattern: str = "*") -> list[str]:
    """Registered defense names matching a wildcard, e.g. ``list_defenses('rand*')``."""
    return DEFENSES.list(pattern)


def list_protections(pattern: str = "*") -> list[str]:
    """Registered protection names (the stages after ``+`` in a defense spec), e.g. ``list_protections()``."""
    return PROTECTIONS.list(pattern)


def list_attacks(pattern: str = "*") -> list[str]:
    """Registered attack names matching a wildcard, e.g. ``list_attacks('random*')``."""
    return ATTACKS.list(pattern)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a wildcard, e.g. ``list_models('res*')``."""
    return MODELS.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a wildcard, e.g. ``list_datasets('cifar*')``."""
    return DATASETS.list(pattern)


def list_metrics(pattern: str = "*") -> list[str]:
    """Registered metric names matching a wildcard, e.g. ``list_metrics('top*')``."""
    return METRICS.list(pattern)


def create_metric(spec: str, **overrides):
    """Instantiate a metric (``'changed'``, ``'topk_err:k=5'``)."""
    return METRICS.create(spec, **overrides)


def create_defense(spec: str, **overrides):
    """Instantiate a defense from ``'name'`` or ``'name:key=value,...'``, protected by the stages after ``+``
    (``'rquant+secded:word=32'``); ``overrides`` apply to the defense itself."""
    return DEFENSES.create(spec, **overrides)


def create_protection(spec: str, **overrides):
    """Instantiate a protection (``'secded'``, ``'radar:group=16'``)."""
    return PROTECTIONS.create(spec, **overrides)


def create_attack(spec: str, **overrides):
    """Instantiate an attack from ``'name'``, ``'name:key=value,...'`` or a parametric name (``random_p0.01``)."""
    return ATTACKS.create(spec, **overrides)
