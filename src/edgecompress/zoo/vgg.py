"""``vgg11_bn`` and ``vgg16_bn``: VGG (Simonyan & Zisserman 2015) with BatchNorm, for small images."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.zoo.layers import conv_bn_relu, image_channels, scaled
from edgecompress.zoo.registry import register_model

# Conv output channels; "M" is a 2x2 max-pool.
_CONFIGS = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """3x3 conv + BN + ReLU layers with max-pools, global average pool, one linear classifier.

    A max-pool is left out once the feature map is smaller than 2x2, so 8x8 and 28x28 inputs work too.
    """

    def __init__(self, name: str, input_shape: tuple[int, ...], num_classes: int, width: float):
        super().__init__()
        c_prev = image_channels(name, input_shape)
        size = min(input_shape[1:])
        layers: list[nn.Module] = []
        for item in _CONFIGS[name]:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers.append(conv_bn_relu(c_prev, scaled(item, width)))
                c_prev = scaled(item, width)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("vgg11_bn")
def vgg11_bn(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    """VGG-11 with BatchNorm (9.2M params at width 1)."""
    return VGG("vgg11_bn", input_shape, num_classes, width)


@register_model("vgg16_bn")
def vgg16_bn(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    """VGG-16 with BatchNorm (14.7M params at width 1)."""
    return VGG("vgg16_bn", input_shape, num_classes, width)
