"""Model architectures and their registry.

    from bitbench.models import build_model, list_models
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=28, norm="rgn",
                        mean=ds.mean, std=ds.std, seed=0)

Every conv model accepts ``norm`` in 'none', 'bn', 'gn', 'rbn', 'rgn' (the last two are the reparameterized norms of
`defenses.norms`, scale = 1 + weight, for weight clipping). With ``mean``/``std`` the model's first layer is a fixed
`Normalize` (buffers, never quantized). ``seed`` makes the initialization deterministic without touching the global
RNG state (it runs inside `torch.random.fork_rng`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from bitbench.configs.errors import UsageError

from .layers import NORMS, Normalize, group_count, make_norm
from .lenet import LeNet5
from .mlp import MLP
from .resnet import BasicBlock, ResNet20, ResNetCIFAR
from .simplenet import SimpleNet

__all__ = ["build_model", "list_models", "count_parameters", "Normalize", "make_norm", "group_count", "NORMS",
           "LeNet5", "MLP", "SimpleNet", "ResNet20", "ResNetCIFAR", "BasicBlock", "MODELS"]

MODELS: dict[str, dict[str, Any]] = {
    "lenet5": {
        "builder": LeNet5,
        "description": "LeNet-5 for MNIST-size images (conv 6-16, fc 120-84, ReLU, max pools)",
        "defaults": {"width": 6, "in_channels": 1, "image_size": 28},
        "width": "channels of the first conv; the other layers scale by width/6",
        "recommended_norm": "none",
        "extra": {},
    },
    "mlp": {
        "builder": MLP,
        "description": "multi-layer perceptron on flattened images (depth hidden layers of width units)",
        "defaults": {"width": 256, "depth": 2, "in_channels": 1, "image_size": 28},
        "width": "units per hidden layer",
        "recommended_norm": "none",
        "extra": {"depth": 2},
    },
    "simplenet": {
        "builder": SimpleNet,
        "description": "SimpleNet (Hasanpour et al. 2016), 13 conv layers, the paper's CIFAR model "
                       "(5,498,378 parameters at width 64 with group norm and 10 classes, conv biases kept)",
        "defaults": {"width": 64, "in_channels": 3, "image_size": 32},
        "width": "channels of the first conv; the other layers scale by width/64",
        "recommended_norm": "rgn",  # the paper used group norm; without norm it does not train at lr 0.05
        "extra": {},
    },
    "resnet20": {
        "builder": ResNet20,
        "description": "ResNet-20 for CIFAR (He et al. 2016, option-A shortcuts), the bit-flip-attack papers' model "
                       "(0.27M parameters with batch norm, 10 classes)",
        "defaults": {"width": 16, "in_channels": 3, "image_size": 32},
        "width": "channels of the first stage (stages: w, 2w, 4w)",
        "recommended_norm": "bn",  # 'rbn'/'rgn' for weight clipping; without norm it does not train at lr 0.05
        "extra": {},
    },
}
_ALIASES = {"lenet": "lenet5", "lenet-5": "lenet5", "resnet-20": "resnet20", "simple": "simplenet"}


def list_models() -> dict[str, dict[str, Any]]:
    """name -> {'description', 'defaults', 'width', 'norms', 'recommended_norm'} for every architecture.
    The deep models (simplenet, resnet20) need a norm layer to train (norm='none' stalls at chance with SGD lr 0.05
    in our checks); with weight clipping use the reparameterized 'rgn' / 'rbn'."""
    return {name: {"description": m["description"], "defaults": dict(m["defaults"]), "width": m["width"],
                   "norms": list(NORMS), "recommended_norm": m["recommended_norm"]} for name, m in MODELS.items()}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _resolve(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in MODELS:
        raise UsageError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return key


def build_model(name: str, *, num_classes: int, in_channels: int, image_size: int, norm: str = "none",
                width: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                seed: int | None = None, **kwargs) -> nn.Module:
    """Build a registered architecture. ``mean``/``std`` (one value per input channel) put a fixed `Normalize` first.
    ``seed``: initialize inside ``torch.random.fork_rng`` seeded with it (the global RNG state is unchanged
    afterwards); ``None`` uses the global RNG as any torch module does. Extra keyword arguments go to the
    architecture (e.g. ``depth`` for 'mlp'). The returned module carries ``build_spec`` (the arguments) so a
    checkpoint can rebuild it."""
    key = _resolve(name)
    if norm is None:
        norm = "none"
    if norm.lower() not in NORMS:
        raise UsageError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    if (mean is None) != (std is None):
        raise UsageError("give both mean and std (or neither)")
    if mean is not None and len(tuple(mean)) != in_channels:
        raise UsageError(f"mean has {len(tuple(mean))} values for {in_channels} input channels")
    if width is not None and (isinstance(width, bool) or int(width) != width or width < 1):
        raise UsageError(f"width must be a positive integer, got {width!r}")
    if num_classes < 2:
        raise UsageError(f"num_classes must be >= 2, got {num_classes}")
    unknown = set(kwargs) - set(MODELS[key]["extra"])
    if unknown:
        raise UsageError(f"{key}: unknown option(s) {sorted(unknown)}; known: {sorted(MODELS[key]['extra'])}")
    builder: Callable[..., nn.Module] = MODELS[key]["builder"]
    args = dict(num_classes=int(num_classes), in_channels=int(in_channels), image_size=int(image_size),
                norm=norm.lower(), width=None if width is None else int(width),
                mean=None if mean is None else tuple(float(v) for v in mean),
                std=None if std is None else tuple(float(v) for v in std), **kwargs)
    if seed is None:
        model = builder(**args)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))
            model = builder(**args)
    model.build_spec = {"name": key, **args, "seed": seed}
    return model
