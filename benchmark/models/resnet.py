"""ResNet-20 for CIFAR (He et al. 2016), the model of the bit-flip attack papers."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Normalize, init_weights, check_norm, make_norm, scaled

__all__ = ["ResNetCIFAR", "ResNet20", "BasicBlock"]


class BasicBlock(nn.Module):
    """conv3x3 - norm - ReLU - conv3x3 - norm, plus a parameter-free shortcut ("option A": subsample by striding
    and zero-pad the new channels), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = make_norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.bn2 = make_norm(norm, c_out)
        self.stride = stride
        self.extra = c_out - c_in
        if self.extra < 0:
            raise ValueError("BasicBlock: channels may not shrink")

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """CIFAR ResNet with 6n+2 layers: conv3x3(w) - norm - ReLU, three stages of n basic blocks with w, 2w, 4w
    channels (stride 2 at the start of stages 2 and 3), global average pool, linear. ``width`` = w (default 16).
    ResNet-20 is n = 3: 0.27M parameters with batch norm and 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, norm: str = "none",
                 width: int | None = None, mean=None, std=None, blocks_per_stage: int = 3):
        super().__init__()
        norm = check_norm(norm)
        w = scaled(16, width, 16)
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=norm == "none")
        self.bn1 = make_norm(norm, w)
        stages = []
        c_in = w
        for i, c in enumerate((w, 2 * w, 4 * w)):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(c_in, c, 2 if (i > 0 and j == 0) else 1, norm))
                c_in = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self.norm = norm
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        if self.norm == "none":
            # Without normalization the residual sum grows block by block; damp each branch's last conv by
            # 1/sqrt(number of blocks) (as in Fixup) so the initial output scale stays moderate.
            blocks = [b for stage in (self.layer1, self.layer2, self.layer3) for b in stage]
            with torch.no_grad():
                for b in blocks:
                    b.conv2.weight.mul_(len(blocks) ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def ResNet20(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, norm: str = "none",
             width: int | None = None, mean=None, std=None) -> ResNetCIFAR:
    return ResNetCIFAR(num_classes, in_channels, image_size, norm, width, mean, std, blocks_per_stage=3)
