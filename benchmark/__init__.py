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
    __version__ = "0.2.0+src"

# public name -> module that defines it (absolute, so that the same objects come back under either import name)
_REG = "bitbench.builtin_entries"   # the registries, with the package's built-in entries declared
_API = {
    # registries and their error type
    "SpecError": "bitbench.configs.spec",
    "Registry": "bitbench.configs.registry",
    **{name: _REG for name in (
        "DEFENSES", "ATTACKS", "MODELS", "DATASETS", "PROTECTIONS", "METRICS",
        "register_defense", "register_attack", "register_model", "register_dataset", "register_protection",
        "register_metric", "list_defenses", "list_attacks", "list_models", "list_datasets", "list_protections",
        "list_metrics", "create_defense", "create_attack", "create_protection", "create_metric")},
    "build_model": "bitbench.models", "load_dataset": "bitbench.data", "Dataset": "bitbench.data",
    "dataset_from_arrays": "bitbench.data",
    # contracts
    "Defense": "bitbench.defenses.base", "Protection": "bitbench.defenses.protection",
    "ProtectedModel": "bitbench.defenses.protection", "MemoryFormat": "bitbench.defenses.memory",
    "Attack": "bitbench.attacks.base", "Perturbation": "bitbench.attacks.base", "Runtime": "bitbench.attacks.runtime",
    "Metric": "bitbench.configs.metrics", "MetricOutputs": "bitbench.configs.metrics",
    "QuantScheme": "bitbench.defenses.quantization", "QuantizedModel": "bitbench.defenses.quantized_model",
    # formats
    "Suite": "bitbench.configs.suite", "load_suite": "bitbench.configs.suite", "list_suites": "bitbench.configs.suite",
    "ResultRecord": "bitbench.configs.record", "Cell": "bitbench.configs.cells", "Field": "bitbench.configs.schema",
    # running
    "Harness": "bitbench.harness", "RunOptions": "bitbench.harness",
    "evaluate_model": "bitbench.api", "load_checkpoint": "bitbench.user_model",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'bitbench' has no attribute {name!r}")
    importlib.import_module(_REG)  # every public name sees the built-in entries
    return getattr(importlib.import_module(module), name)


def __dir__():
    return __all__
