"""Deployment runtimes, one object each: ONNX Runtime (``.onnx``), ExecuTorch/XNNPACK (``.pte``) and PyTorch on
``torch.export`` archives (``.pt2``).

A :class:`Runtime` holds its format, file suffixes, exporter, file check, in-process runner and benchmark entry.
Every module of this package other than ``artifact`` and ``base`` defines one runtime and registers it when
imported, and importing the package imports them all: adding a runtime is adding a module. A runtime defined
elsewhere (a plugin, a test) calls :func:`register` the same way. Export dispatch, ``ExportSettings``, the
benchmark worker and ``bench FILE`` all look runtimes up here.
"""

from importlib import import_module
from pkgutil import iter_modules

from edgecompress.runtimes.artifact import Artifact, Runner
from edgecompress.runtimes.base import (
    REGISTRY,
    Runtime,
    all_runtimes,
    export,
    for_format,
    for_suffix,
    get,
    register,
)

for _module in iter_modules(__path__):
    if _module.name not in ("artifact", "base"):
        import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Artifact", "Runner", "Runtime", "all_runtimes", "export", "for_format", "for_suffix", "get",
           "register"]
