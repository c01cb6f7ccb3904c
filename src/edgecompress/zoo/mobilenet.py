"""``mobilenet_v2``: MobileNetV2 (Sandler et al. 2018) with CIFAR-style strides for small images."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.zoo.layers import conv_bn_relu, image_channels
from edgecompress.zoo.registry import register_model

# (expansion, output channels, blocks, stride of the first block). The stem and the 24-channel stage use
# stride 1 instead of ImageNet's 2, so 32x32 inputs reach a 4x4 map before pooling.
_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` without going more than 10% below (as in the paper's code)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; residual when input and output shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers = [conv_bn_relu(c_in, hidden, 1)] if expansion != 1 else []
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width_mult: float, dropout: float):
        super().__init__()
        if width_mult <= 0 or not 0 <= dropout < 1:
            raise EdgeCompressError(
                f"mobilenet_v2 needs width_mult > 0 and 0 <= dropout < 1, got {width_mult} and {dropout}",
                where="model.kwargs",
            )
        c_prev = _divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_relu(image_channels("mobilenet_v2", input_shape), c_prev, 3, 1)]
        for expansion, c, n, stride in _STAGES:
            c_out = _divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c_prev, c_out, stride if i == 0 else 1, expansion))
                c_prev = c_out
        last = _divisible(1280 * max(1.0, width_mult))
        layers += [conv_bn_relu(c_prev, last, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


@register_model("mobilenet_v2")
def mobilenet_v2(
    input_shape: tuple[int, ...], num_classes: int, width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    """MobileNetV2 with a stride-1 stem (2.2M params at width_mult 1); dropout 0 removes the dropout layer."""
    return MobileNetV2(input_shape, num_classes, width_mult, dropout)
