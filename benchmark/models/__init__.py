"""Model architectures, registered in the model registry (``bitbench.models`` entry points add more).

    from bitbench.models import build_model, list_models
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=28, norm="rgn",
                        mean=ds.mean, std=ds.std, seed=0)
    model = build_model("mypkg.nets:build", num_classes=10, in_channels=1, image_size=28)   # the user's own

Every conv model accepts ``norm`` in 'none', 'bn', 'gn', 'rbn', 'rgn' (the last two are the reparameterized norms of
`defenses.norms`, scale = 1 + weight, for weight clipping); the transformers (``vit``, and ``gpt``: a causal language model over byte tokens) 'ln' or 'rln'. With
``mean``/``std`` the model's first layer is a fixed `Normalize` (buffers, never quantized). ``seed`` makes the
initialization deterministic without touching the global RNG state (it runs inside `torch.random.fork_rng`).
Register your own with ``@bitbench.register_model("name")`` on a class or factory whose parameters all have
defaults (see :mod:`.build` for the builder contract).
"""
from __future__ import annotations

import torch.nn as nn

from bitbench.configs.registries import MODELS, list_models, register_model

from .build import DATA_ARGS, ModelBuilder, build_model, describe_models, is_reference, resolve_model
from .layers import NORMS, Normalize, group_count, make_norm
from .lenet import LeNet5
from .mlp import MLP
from .resnet import BasicBlock, ResNet20, ResNetCIFAR
from .simplenet import SimpleNet
from .vit import ViT
from .gpt import GPT

__all__ = ["build_model", "resolve_model", "is_reference", "list_models", "describe_models", "count_parameters",
           "register_model", "MODELS", "ModelBuilder", "DATA_ARGS", "Normalize", "make_norm", "group_count", "NORMS",
           "LeNet5", "MLP", "SimpleNet", "ResNet20", "ResNetCIFAR", "BasicBlock", "ViT", "GPT"]

_DATA_DOCS = """
    num_classes: output classes (from the dataset).
    in_channels: image channels (from the dataset).
    image_size: image side in pixels (from the dataset).
    mean: per-channel mean of the fixed whitening layer (from the dataset), or none.
    std: per-channel std of the whitening layer."""
_CONV_NORM = "norm: 'none', 'bn', 'gn', 'rbn' or 'rgn' (reparameterized: scale = 1 + weight, for weight clipping)"


def _doc(summary: str, **params: str) -> str:
    return summary + "\n\nArgs:" + _DATA_DOCS + "".join(f"\n    {k}: {v}" for k, v in params.items())


register_model("lenet5", aliases=("lenet", "lenet-5"), doc=_doc(
    "LeNet-5 for MNIST-size images (conv 6-16, fc 120-84, ReLU, max pools; 61,706 parameters for 10 classes)",
    width="channels of the first conv; the other layers scale by width/6 (none: 6).",
    norm=_CONV_NORM + "; the default suite uses 'none'."))(LeNet5)
register_model("mlp", doc=_doc(
    "Multi-layer perceptron on flattened images (depth hidden layers of width units)",
    width="units per hidden layer (none: 256).", norm=_CONV_NORM + " (1-d variants).",
    depth="hidden layers."))(MLP)
register_model("simplenet", aliases=("simple",), doc=_doc(
    "SimpleNet (Hasanpour et al. 2016), 13 conv layers, the paper's CIFAR model (5,498,378 parameters at width "
    "64 with group norm and 10 classes, conv biases kept)",
    width="channels of the first conv; the other layers scale by width/64 (none: 64).",
    norm=_CONV_NORM + "; it needs a norm to train (the paper: group norm, here 'rgn')."))(SimpleNet)
register_model("resnet20", aliases=("resnet-20",), doc=_doc(
    "ResNet-20 for CIFAR (He et al. 2016, option-A shortcuts), the bit-flip-attack papers' model (0.27M "
    "parameters with batch norm)",
    width="channels of the first stage (stages: w, 2w, 4w; none: 16).",
    norm=_CONV_NORM + "; it needs a norm to train ('bn', or 'rbn'/'rgn' with weight clipping)."))(ResNet20)
register_model("vit")(ViT)
register_model("gpt")(GPT)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
