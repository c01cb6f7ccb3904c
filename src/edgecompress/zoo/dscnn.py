"""``ds_cnn``: the depthwise-separable keyword-spotting CNN DS-CNN-S (Zhang et al. 2017, "Hello Edge")."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.zoo.layers import conv_bn_relu, image_channels, scaled
from edgecompress.zoo.registry import register_model


class DSCNN(nn.Module):
    """Conv 10x4 stride 2 (64 ch), then ``blocks`` x (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU), pool, fc.

    Input: (1, frames, mel_bins), e.g. (1, 49, 10) for 1 s of audio with 10 MFCCs; small images also work.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float, blocks: int):
        super().__init__()
        c = scaled(64, width)
        layers = [conv_bn_relu(image_channels("ds_cnn", input_shape), c, (10, 4), 2, padding=(5, 1))]
        for _ in range(blocks):
            layers += [conv_bn_relu(c, c, 3, groups=c), conv_bn_relu(c, c, 1)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("ds_cnn")
def ds_cnn(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, blocks: int = 4) -> nn.Module:
    """DS-CNN-S keyword spotter (~24k params with 12 classes): 64 channels, 4 depthwise-separable blocks."""
    return DSCNN(input_shape, num_classes, width, blocks)
