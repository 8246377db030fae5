"""bitbench: the bit-error robustness benchmark.

    import bitbench
    bitbench.list_defenses("rand*")                  # registries of defenses, attacks, models, datasets (timm style)
    defense = bitbench.create_defense("randbet:p=0.02")
    protected = bitbench.create_defense("rquant+secded")   # a defense whose memory is protected (ECC, checksums)
    attack = bitbench.create_attack("random_p0.01")
    rec = bitbench.evaluate_model(my_model, (x, y), format="rquant", attack="random_p0.01")   # any trained nn.Module

    @bitbench.register_defense("mydefense")          # a decorator is the whole registration
    class MyDefense(bitbench.Defense): ...

The command line is ``python -m benchmark`` (or ``bitbench``). This folder (benchmark/ in the repository) is the
``bitbench`` package: CLI, harness, data and models; the other folders are its subpackages ``bitbench.kernels``,
``bitbench.defenses``, ``bitbench.attacks``, ``bitbench.leaderboard`` and ``bitbench.configs`` (the shared core:
formats, spec grammar, registry machinery). The public names below are imported on first use, so importing a
subpackage (e.g. the torch-free leaderboard) loads nothing else.
"""

import importlib

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("bitbench")
except Exception:  # not installed (run from a checkout with PYTHONPATH)
    __version__ = "0.1.0+src"

# public name -> module that defines it (absolute, so that the same objects come back under either import name)
_API = {
    # registries and their error type
    "SpecError": "bitbench.configs.spec",
    "Registry": "bitbench.configs.registry",
    "DEFENSES": "bitbench.configs.registries", "ATTACKS": "bitbench.configs.registries",
    "register_defense": "bitbench.configs.registries", "register_attack": "bitbench.configs.registries",
    "list_defenses": "bitbench.configs.registries", "list_attacks": "bitbench.configs.registries",
    "create_defense": "bitbench.configs.registries", "create_attack": "bitbench.configs.registries",
    "MODELS": "bitbench.configs.registries", "DATASETS": "bitbench.configs.registries",
    "PROTECTIONS": "bitbench.configs.registries", "register_protection": "bitbench.configs.registries",
    "list_protections": "bitbench.configs.registries", "create_protection": "bitbench.configs.registries",
    "register_model": "bitbench.configs.registries", "register_dataset": "bitbench.configs.registries",
    "list_models": "bitbench.configs.registries", "list_datasets": "bitbench.configs.registries",
    "build_model": "bitbench.models", "load_dataset": "bitbench.data", "Dataset": "bitbench.data",
    "dataset_from_arrays": "bitbench.data",
    # contracts
    "Defense": "bitbench.defenses.base", "Protection": "bitbench.defenses.protection",
    "ProtectedModel": "bitbench.defenses.protection",
    "Attack": "bitbench.attacks.base", "Perturbation": "bitbench.attacks.base",
    "QuantScheme": "bitbench.defenses.quantization", "QuantizedModel": "bitbench.defenses.quantized_model",
    # formats
    "Suite": "bitbench.configs.suite", "load_suite": "bitbench.configs.suite", "list_suites": "bitbench.configs.suite",
    "ResultRecord": "bitbench.configs.record",
    # running
    "Harness": "bitbench.harness", "RunOptions": "bitbench.harness",
    "evaluate_model": "bitbench.api", "load_checkpoint": "bitbench.user_model",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'bitbench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return __all__
