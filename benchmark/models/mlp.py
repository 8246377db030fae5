"""A multi-layer perceptron on flattened images."""
from __future__ import annotations

import torch
import torch.nn as nn

from bitbench.configs.errors import UsageError

from .layers import Normalize, init_weights, check_norm, make_norm

__all__ = ["MLP"]


class MLP(nn.Module):
    """flatten - [linear(width) - norm - ReLU] x depth - linear(classes). Defaults: width 256, depth 2.
    ``norm`` (1-d variants) follows each hidden linear layer; biases only without norm."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, norm: str = "none",
                 width: int | None = None, mean=None, std=None, depth: int = 2):
        super().__init__()
        norm = check_norm(norm)
        if depth < 0:
            raise UsageError(f"MLP: depth must be >= 0, got {depth}")
        width = 256 if width is None else int(width)
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(d, width, bias=norm == "none"), make_norm(norm, width, dims=1),
                       nn.ReLU(inplace=True)]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))
