"""edgecompress: compress PyTorch networks for edge devices and prove every gain on a real runtime.

Entry points: :func:`compress` (run a recipe), :func:`apply` (one stage), :func:`train` (train a model on a task
before compressing it), :func:`load_recipe`, :func:`load_task`; the ``edgecompress`` command line mirrors them. The names below are imported on first use
(PEP 562), so ``import edgecompress.cli`` (and ``edgecompress --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgecompress import noise

__version__ = "0.1.0"
noise.install()  # before torchao or torch log their non-actionable messages

_EXPORTS = {  # public name -> the module that defines it
    "apply": "edgecompress.api", "compress": "edgecompress.api",
    "DataSpec": "edgecompress.data", "data_spec": "edgecompress.data", "load_task": "edgecompress.data",
    "Task": "edgecompress.tasks", "EdgeCompressError": "edgecompress.errors",
    "Recipe": "edgecompress.recipe", "load_recipe": "edgecompress.recipe",
    "train": "edgecompress.train",  # the callable module: train(model, task, epochs=..., lr=...)
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
