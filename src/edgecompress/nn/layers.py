"""Which modules are the weighted layers every technique works on, the depthwise test, torch-pruning's
dependency graph of a model, and module selection by names or globs (``resolve_layers``)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
import torch_pruning as tp
from torch import nn

from edgecompress.errors import EdgeCompressError

LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Conv/Linear layers of ``model`` by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)}


def is_depthwise(m: object) -> bool:
    """A conv with one filter per input channel (``groups == in_channels == out_channels > 1``)."""
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` (traced with autograd, so frozen parameters are unfrozen for
    the trace; the training flag and the frozen flags are restored)."""
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        with torch.enable_grad():
            for p in frozen:
                p.requires_grad_(True)
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(False)


def resolve_layers(model: nn.Module, patterns: Iterable[str], where: str) -> set[str]:
    """Names of the modules matched by ``patterns`` (exact names or fnmatch globs) and all their submodules.

    A pattern that matches nothing raises an EdgeCompressError listing the closest module names.
    """
    names = [n for n, _ in model.named_modules() if n]
    matched: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.4)
            raise EdgeCompressError(
                f"no module named {pattern!r} in the model",
                where=where,
                fix=f"close names: {', '.join(close)}" if close else "run `edgecompress inspect` to list the layer names",
            )
        matched.update(n for n in names if any(n == h or n.startswith(h + ".") for h in hits))
    return matched
