"""Model registry: architectures register a builder by name; ``build`` looks them up."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from torch import nn

from edgecompress.checkpoint import ARCH_ATTR
from edgecompress.errors import EdgeCompressError

Builder = Callable[..., nn.Module]  # builder(input_shape, num_classes, **kwargs) -> nn.Module

MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(input_shape, num_classes, **kwargs)`` as the zoo model ``name``."""

    def wrap(builder: Builder) -> Builder:
        if name in MODELS and MODELS[name] is not builder:
            raise ValueError(f"zoo model {name!r} is registered twice ({MODELS[name]} and {builder})")
        MODELS[name] = builder
        return builder

    return wrap


def names() -> list[str]:
    """Names of all registered zoo models, sorted."""
    return sorted(MODELS)


def unknown_name_error(name: str) -> EdgeCompressError:
    """The error for a zoo name that is not registered: suggests the closest name and lists the rest."""
    close = difflib.get_close_matches(name, MODELS, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return EdgeCompressError(
        f"unknown zoo model {name!r}",
        where="model.zoo",
        fix=f"{hint}known models: {', '.join(names())}",
    )


def build(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """Build the zoo model ``name`` for inputs of ``input_shape`` (without batch) and ``num_classes`` outputs.

    The model carries its recipe as ``model._edgecompress_arch`` (zoo name, shape, classes, kwargs), which
    checkpoints use to rebuild the architecture.
    """
    if name not in MODELS:
        raise unknown_name_error(name)
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise EdgeCompressError(
            f"input_shape must be positive integers such as (1, 28, 28), got {input_shape!r}", where=f"model {name!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise EdgeCompressError(f"num_classes must be a positive integer, got {num_classes!r}", where=f"model {name!r}")
    builder = MODELS[name]
    params = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(params) - {"input_shape", "num_classes"})
    if unknown or {"input_shape", "num_classes"} & set(kwargs):
        allowed = [p for p in params if p not in ("input_shape", "num_classes")]
        raise EdgeCompressError(
            f"zoo model {name!r} does not take the option(s) {unknown or sorted(kwargs)}",
            where="model.kwargs",
            fix=f"use only: {', '.join(allowed) or '(no options)'}; input shape and classes come from the data",
        )
    model = builder(shape, num_classes, **kwargs)
    arch = {"zoo": name, "input_shape": list(shape), "num_classes": num_classes, "kwargs": dict(kwargs)}
    setattr(model, ARCH_ATTR, arch)
    return model
