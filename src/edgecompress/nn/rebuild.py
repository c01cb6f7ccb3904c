"""Modules that a stage puts into a model (a factorized layer, a separable pair, exit heads) and that a checkpoint
must be able to rebuild without unpickling.

A class registered with :func:`rebuildable` has a ``spec()`` method returning its constructor's keyword arguments
(JSON values). :func:`specs` lists every such module of a model by name; :func:`restore` puts freshly built ones
at those names into a rebuilt architecture, whose tensors the checkpoint then loads. Only registered classes can
be named, so a checkpoint cannot make the loader construct anything else.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edgecompress.errors import EdgeCompressError

_CLASSES: dict[str, type[nn.Module]] = {}


def rebuildable(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: the class (with a ``spec() -> dict`` of constructor keyword arguments) can be rebuilt."""
    if not callable(getattr(cls, "spec", None)):
        raise TypeError(f"{cls.__name__} needs a spec() method to be rebuildable")
    _CLASSES[cls.__name__] = cls
    return cls


def specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {"class", "kwargs"}}`` of the rebuildable modules in ``model`` (outermost only)."""
    found: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if name and type(module).__name__ in _CLASSES and type(module) is _CLASSES[type(module).__name__] \
                and not any(name.startswith(f"{outer}.") for outer in found):
            found[name] = {"class": type(module).__name__, "kwargs": module.spec()}
    return found


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` of ``model`` (replacing what is there, or adding a child)."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def restore(model: nn.Module, recorded: dict[str, Any], where: str) -> None:
    """Build the recorded modules (see :func:`specs`) into ``model``, parents before children."""
    if any(isinstance(e, dict) and e.get("class") not in _CLASSES for e in recorded.values()):
        from edgecompress.registry import all_stages

        all_stages()  # the built-in stages register the classes they insert
    for name in sorted(recorded, key=lambda n: n.count(".")):
        entry = recorded[name]
        cls = _CLASSES.get(entry.get("class")) if isinstance(entry, dict) else None
        if cls is None or not isinstance(entry.get("kwargs"), dict):
            raise EdgeCompressError(f"checkpoint module {name!r} names an unknown layer type {entry!r}", where=where,
                                    fix=f"known: {', '.join(sorted(_CLASSES))}; restore the file or start a new run")
        try:
            set_module(model, name, cls(**entry["kwargs"]))
        except (AttributeError, TypeError, ValueError) as err:
            raise EdgeCompressError(f"cannot rebuild checkpoint module {name!r}: {err}", where=where,
                                    fix="resume with the same model and recipe that created the run") from err
