"""SimpleNet (Hasanpour et al. 2016, "Lets keep it simple"), the method paper's CIFAR model."""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import Normalize, init_weights, check_norm, make_norm, scaled

__all__ = ["SimpleNet", "SIMPLENET_LAYERS", "SIMPLENET_LAYERS_SMALL", "simplenet_layers"]

# (output channels at width 64, kernel size, max-pool after the layer)
SIMPLENET_LAYERS = (
    (64, 3, False), (128, 3, False), (128, 3, False), (128, 3, True),
    (128, 3, False), (128, 3, False), (256, 3, True),
    (256, 3, False), (256, 3, True),
    (512, 3, True),
    (2048, 1, False), (256, 1, True),
    (256, 3, False),
)
# Below 32 pixels (e.g. 28-pixel MNIST) the original drops blocks 9-10 with their two pools and widens block 8 to
# their output width: 11 conv layers, 3 pools.
SIMPLENET_LAYERS_SMALL = SIMPLENET_LAYERS[:7] + ((512, 3, False),) + SIMPLENET_LAYERS[10:]


def simplenet_layers(image_size: int) -> tuple:
    """The layer table for square inputs of ``image_size`` pixels: 13 convs from 32 pixels on, else 11."""
    return SIMPLENET_LAYERS if image_size >= 32 else SIMPLENET_LAYERS_SMALL


class SimpleNet(nn.Module):
    """13 conv layers (3x3, except two 1x1 bottleneck layers 2048 -> 256), each conv - norm - ReLU, with 2x2 max
    pools after layers 4, 7, 9, 10 and 12, a global max pool and one linear classifier. Widths
    64,128,128,128,128,128,256,256,256,512,2048,256,256 at ``width`` = 64, scaled by width/64. Below 32 pixels, as
    the method's implementation, blocks 9-10 and their pools are dropped and block 8 is 512 wide: 11 conv layers
    (64,128,128,128,128,128,256,512,2048,256,256), pools after layers 4, 7 and 10. Pools floor odd sizes (28 px: 14,
    7, 3); a map of one pixel is not pooled further. As in the method's implementation every conv keeps its bias
    even under a norm layer (quantized, clipped and attacked like every parameter) and the logits layer is
    Kaiming-normal initialized (fan-in, ReLU gain; bias 0). 5,498,378 parameters at width 64 with 10 classes and
    group norm (32 px). No dropout."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, norm: str = "none",
                 width: int | None = None, mean=None, std=None):
        super().__init__()
        norm = check_norm(norm)
        bias = True  # kept under a norm layer too (the original's SimpleNet)
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        layers: list[nn.Module] = []
        c_in, s = in_channels, image_size
        for c, k, pool in simplenet_layers(image_size):
            c = scaled(c, width, 64)
            layers += [nn.Conv2d(c_in, c, k, padding=k // 2, bias=bias), make_norm(norm, c), nn.ReLU(inplace=True)]
            if pool and s > 1:
                layers.append(nn.MaxPool2d(2))
                s = s // 2
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        nn.init.kaiming_normal_(self.classifier.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(self.normalize(x))), 1))
