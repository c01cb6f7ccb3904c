"""``nas_cnn``: the architecture family ``search.nas`` searches, one CNN per list of stage choices.

A stage is ``{depth, channels, kernel, activation, block}``: ``depth`` blocks of ``channels`` outputs, each a
``conv`` (k x k conv + BN + activation, as in ``mnist_cnn``), a ``dsconv`` (depthwise k x k + pointwise 1 x 1,
each with BN and the activation, as in ``ds_cnn``) or an ``mbconv`` (MobileNetV2's inverted residual with
expansion 4 and a k x k depthwise, residual when the shapes match). A 2 x 2 max-pool precedes every stage after
the first (``mnist_cnn``'s layout); global average pooling and one linear layer classify.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.zoo.layers import image_channels
from edgecompress.zoo.registry import register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish,
                                           "silu": nn.SiLU}
BLOCKS = ("conv", "dsconv", "mbconv")
EXPANSION = 4  # mbconv's hidden width / input width


def _unit(c_in: int, c_out: int, kernel: int, activation: str | None, groups: int = 1) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return layers + ([ACTIVATIONS[activation]()] if activation else [])


class Block(nn.Module):
    """One searchable block: ``conv``, ``dsconv`` or ``mbconv`` (see the module docstring)."""

    def __init__(self, kind: str, c_in: int, c_out: int, kernel: int, activation: str):
        super().__init__()
        if kind == "conv":
            layers = _unit(c_in, c_out, kernel, activation)
        elif kind == "dsconv":
            layers = _unit(c_in, c_in, kernel, activation, groups=c_in) + _unit(c_in, c_out, 1, activation)
        else:
            hidden = c_in * EXPANSION
            layers = (_unit(c_in, hidden, 1, activation) + _unit(hidden, hidden, kernel, activation, groups=hidden)
                      + _unit(hidden, c_out, 1, None))
        self.body = nn.Sequential(*layers)
        self.residual = kind == "mbconv" and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def check_stage(stage: dict[str, Any], where: str) -> None:
    """Refuse a stage description the family cannot build (unknown block or activation, even kernel, ...)."""
    keys = {"depth", "channels", "kernel", "activation", "block"}
    if set(stage) != keys:
        raise EdgeCompressError(f"a stage needs exactly the keys {sorted(keys)}, got {sorted(stage)}", where=where)
    if stage["block"] not in BLOCKS or stage["activation"] not in ACTIVATIONS:
        raise EdgeCompressError(f"unknown block {stage['block']!r} or activation {stage['activation']!r}",
                                where=where, fix=f"blocks: {', '.join(BLOCKS)}; activations: {', '.join(ACTIVATIONS)}")
    if not (isinstance(stage["kernel"], int) and stage["kernel"] >= 1 and stage["kernel"] % 2 == 1):
        raise EdgeCompressError(f"kernel must be an odd positive integer, got {stage['kernel']!r}", where=where,
                                fix="use 1, 3, 5 or 7 (odd kernels keep the feature map's size)")
    for key in ("depth", "channels"):
        if not (isinstance(stage[key], int) and stage[key] >= 1):
            raise EdgeCompressError(f"{key} must be a positive integer, got {stage[key]!r}", where=where)


class NasCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, stages: list[dict[str, Any]]):
        super().__init__()
        c_prev = image_channels("nas_cnn", input_shape)
        if not stages:
            raise EdgeCompressError("nas_cnn needs at least one stage", where="model.kwargs.stages")
        size = min(input_shape[1:])
        layers: list[nn.Module] = []
        for i, stage in enumerate(stages):
            check_stage(stage, f"model.kwargs.stages[{i}]")
            if i:
                if size < 2:
                    raise EdgeCompressError(f"{len(stages)} stages pool a {input_shape[1]}x{input_shape[2]} input "
                                            "below 1x1", where="model.kwargs.stages", fix="use fewer stages")
                layers.append(nn.MaxPool2d(2))
                size //= 2
            for _ in range(stage["depth"]):
                layers.append(Block(stage["block"], c_prev, stage["channels"], stage["kernel"], stage["activation"]))
                c_prev = stage["channels"]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("nas_cnn")
def nas_cnn(input_shape: tuple[int, ...], num_classes: int, stages: list[dict[str, Any]] | None = None
            ) -> nn.Module:
    """The CNN family ``search.nas`` searches: per stage depth, channels, kernel, activation and block type
    (default: two conv stages of 16 and 32 channels)."""
    default = [{"depth": 1, "channels": c, "kernel": 3, "activation": "relu", "block": "conv"} for c in (16, 32)]
    return NasCNN(input_shape, num_classes, stages if stages is not None else default)
