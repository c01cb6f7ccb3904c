"""Parameter, non-zero and MAC counts of a PyTorch model, in total and per layer.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) on a batch of one, so they follow
what the model really computes, including Conv2d subclasses and functional calls. FlopCounterMode counts
matrix products and convolutions only: normalisation, activations and element-wise adds are not MACs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgecompress.tasks.base import Inputs, call

LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


def count_params(model: nn.Module) -> int:
    """Number of parameter entries."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Number of parameter entries that are not zero (unstructured sparsity shows here, not in count_params)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def _flop_counts(model: nn.Module, example_inputs: Inputs) -> FlopCounterMode:
    """Run one sample through ``model`` in eval mode (its mode is restored) under a FlopCounterMode (a dict of
    inputs, e.g. token ids and mask, is cut to one sample each and passed as keyword arguments)."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    one = {k: v[:1] for k, v in example_inputs.items()} if isinstance(example_inputs, dict) else example_inputs[:1]
    try:
        with counter, torch.no_grad():
            call(model, one)
    finally:
        model.train(was_training)
    return counter


def count_macs(model: nn.Module, example_inputs: Inputs) -> int:
    """Multiply-accumulates of one sample (the first of ``example_inputs``; of a token model: one sequence of the
    task's length, attention's matrix products included)."""
    return _flop_counts(model, example_inputs).get_total_flops() // 2


def layer_table(model: nn.Module, example_inputs: Inputs) -> list[dict]:
    """One row per Conv, Linear and BatchNorm module: name, type, in_channels/out_channels (Conv, BatchNorm) or
    in_features/out_features (Linear), kernel and groups (None but for Conv), params, nonzero and macs (one
    sample; 0 for BatchNorm, which FlopCounterMode does not count and export folds into the conv before it)."""
    per_module = _flop_counts(model, example_inputs).get_flop_counts()
    root = type(model).__name__  # FlopCounterMode names modules "<root class>.<dotted path>"
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, LAYER_TYPES):
            continue
        is_conv = isinstance(mod, nn.modules.conv._ConvNd)
        if isinstance(mod, nn.Linear):
            shape = {"in_features": mod.in_features, "out_features": mod.out_features}
        elif is_conv:
            shape = {"in_channels": mod.in_channels, "out_channels": mod.out_channels}
        else:
            shape = {"in_channels": mod.num_features, "out_channels": mod.num_features}
        flops = sum(per_module.get(f"{root}.{name}", {}).values())
        rows.append({
            "name": name, "type": type(mod).__name__, **shape,
            "kernel": list(mod.kernel_size) if is_conv else None, "groups": mod.groups if is_conv else None,
            "params": count_params(mod), "nonzero": count_nonzero(mod), "macs": flops // 2,
        })
    return rows
