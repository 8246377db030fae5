"""LeNet-5 for MNIST-size inputs (1 or 3 channels; 28 or 32 px, smaller inputs get padded convs)."""
from __future__ import annotations

import torch
import torch.nn as nn

from bitbench.configs.errors import UsageError

from .layers import Normalize, init_weights, check_norm, make_norm, scaled

__all__ = ["LeNet5"]


class LeNet5(nn.Module):
    """conv5x5(C1) - norm - ReLU - maxpool2 - conv5x5(C2) - norm - ReLU - maxpool2 - fc(F1) - ReLU - fc(F2) - ReLU -
    fc(classes). Default widths C1, C2, F1, F2 = 6, 16, 120, 84; ``width`` sets C1 and scales the rest by width/6.
    Each conv is zero-padded by 2 when its input is smaller than 32 px (so 28 px MNIST sees the classic 32 px
    geometry). ``norm`` applies to the conv layers; conv biases only without norm. ReLU instead of tanh."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, norm: str = "none",
                 width: int | None = None, mean=None, std=None):
        super().__init__()
        norm = check_norm(norm)
        c1, c2 = scaled(6, width, 6), scaled(16, width, 6)
        f1, f2 = scaled(120, width, 6), scaled(84, width, 6)
        s = image_size
        pad1 = 2 if s < 32 else 0
        s = (s + 2 * pad1 - 4) // 2
        pad2 = 2 if s < 14 else 0
        s = (s + 2 * pad2 - 4) // 2
        if s < 1:
            raise UsageError(f"LeNet5: image_size {image_size} is too small")
        bias = norm == "none"
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=pad1, bias=bias), make_norm(norm, c1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pad2, bias=bias), make_norm(norm, c2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * s * s, f1), nn.ReLU(inplace=True),
            nn.Linear(f1, f2), nn.ReLU(inplace=True),
            nn.Linear(f2, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
