"""CIFAR-style ResNets: ``resnet20/32/56`` (3 stages, 16/32/64 channels) and ``resnet18`` (4 stages, 64..512).

All use a 3x3 stride-1 stem without max-pool, BasicBlocks, and a 1x1 conv + BN projection shortcut wherever
the shape changes (He et al. 2016, option B).
"""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.zoo.layers import image_channels, scaled
from edgecompress.zoo.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection; every ReLU is its own module."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, one stage of ``depth`` BasicBlocks per entry of ``channels`` (stride 2 from the second), pool, fc."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: list[int], depths: list[int],
                 name: str = "resnet"):
        super().__init__()
        c_in = image_channels(name, input_shape)
        self.stem = nn.Sequential(
            nn.Conv2d(c_in, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)
        )
        blocks, c_prev = [], channels[0]
        for i, (c, depth) in enumerate(zip(channels, depths, strict=True)):
            for j in range(depth):
                blocks.append(BasicBlock(c_prev, c, stride=2 if i > 0 and j == 0 else 1))
                c_prev = c
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


def _cifar_resnet(depth: int, input_shape: tuple[int, ...], num_classes: int, width: float) -> ResNet:
    n = (depth - 2) // 6
    return ResNet(input_shape, num_classes, [scaled(c, width) for c in (16, 32, 64)], [n, n, n], f"resnet{depth}")


@register_model("resnet20")
def resnet20(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    """CIFAR ResNet-20 (0.27M params at width 1)."""
    return _cifar_resnet(20, input_shape, num_classes, width)


@register_model("resnet32")
def resnet32(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    """CIFAR ResNet-32 (0.47M params at width 1)."""
    return _cifar_resnet(32, input_shape, num_classes, width)


@register_model("resnet56")
def resnet56(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> nn.Module:
    """CIFAR ResNet-56 (0.86M params at width 1)."""
    return _cifar_resnet(56, input_shape, num_classes, width)


@register_model("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ResNet-18 for small images (11.2M params): 3x3 stride-1 stem, no max-pool, 64-128-256-512 channels."""
    return ResNet(input_shape, num_classes, [64, 128, 256, 512], [2, 2, 2, 2], "resnet18")
