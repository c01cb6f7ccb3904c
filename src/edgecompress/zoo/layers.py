"""Building blocks shared by the zoo models: plain nn modules, one instance per use."""

from __future__ import annotations

from torch import nn

from edgecompress.errors import EdgeCompressError


def scaled(channels: int, width: float) -> int:
    """``channels`` scaled by the width multiplier, at least 1."""
    if width <= 0:
        raise EdgeCompressError(f"width must be > 0, got {width}", where="model.kwargs.width",
                                fix="use e.g. 0.5 or 1.0")
    return max(1, round(channels * width))


def conv_bn_relu(c_in: int, c_out: int, kernel=3, stride=1, padding=None, groups: int = 1) -> nn.Sequential:
    """Conv2d (no bias) + BatchNorm2d + its own ReLU; ``padding`` defaults to kernel // 2 ("same" at stride 1)."""
    if padding is None:
        padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def image_channels(model: str, input_shape: tuple[int, ...]) -> int:
    """Channels of an image input (C, H, W); any other shape is an error that names the model."""
    if len(input_shape) != 3:
        raise EdgeCompressError(
            f"zoo model {model!r} takes images shaped (C, H, W), but the data has input shape {tuple(input_shape)}",
            where="model.zoo",
            fix="use image data shaped (C, H, W), or `mnist_cnn`, which also accepts 1-D inputs shaped (C, L)",
        )
    return input_shape[0]
