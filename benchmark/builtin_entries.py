"""The built-in entries of every registry, declared from above the core (which names no module above it).

Importing this module declares, per registry, the modules whose import registers the package's own entries; each
registry imports them on its next lookup (so a lookup pays for torch only when it needs an entry). The public API
(``bitbench.create_defense``, ``bitbench.DEFENSES``, ...), the command line and the harness import it; the
registry functions are re-exported here, so ``bitbench.<name>`` always sees the built-ins.
"""

from __future__ import annotations

from bitbench.configs.registries import (ATTACKS, DATASETS, DEFENSES, METRICS, MODELS, PROTECTIONS,  # noqa: F401
                                         create_attack, create_defense, create_metric, create_protection,
                                         list_attacks, list_datasets, list_defenses, list_metrics, list_models,
                                         list_protections, register_attack, register_dataset, register_defense,
                                         register_metric, register_model, register_protection)

BUILTIN_MODULES = {
    DEFENSES: ("bitbench.defenses.zoo", "bitbench.attacks.advbet"),
    PROTECTIONS: ("bitbench.defenses.protection",),
    ATTACKS: ("bitbench.attacks",),
    MODELS: ("bitbench.models",),
    DATASETS: ("bitbench.data.loaders",),
    METRICS: ("bitbench.metrics",),
}

for _registry, _modules in BUILTIN_MODULES.items():
    _registry.add_builtins(*_modules)
