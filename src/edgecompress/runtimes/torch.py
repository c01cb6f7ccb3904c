"""PyTorch on ``torch.export`` archives (``.pt2``): the exported program's module runs eagerly, and no pickled code
is executed. Export keeps the batch dimension dynamic, or static (with a warning) when the model's code fixes it."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.runtimes.artifact import Artifact, Runner
from edgecompress.runtimes.base import Runtime, check_files, register

if TYPE_CHECKING:
    import torch

    from edgecompress.settings import ExportSettings


def export(model: torch.nn.Module, example_inputs: torch.Tensor, out_dir: Path, settings: ExportSettings,
           name: str) -> Artifact:
    """``torch.export`` archive ``name.pt2`` with a dynamic batch dimension, or a static one (with a warning)
    when the model's code fixes the batch size."""
    import torch

    model = copy.deepcopy(model).eval()
    # A batch of 1 would be specialised by torch.export, so trace with at least 2 samples.
    batch2 = example_inputs[:1].expand(2, *example_inputs.shape[1:]).clone()
    with torch.no_grad():
        try:
            program = torch.export.export(model, (batch2,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        except Exception as err:  # noqa: BLE001  (any failure: the static export below raises the real error)
            warnings.warn(f"{name}: exported with a static batch of {len(example_inputs)} "
                          f"(dynamic batch not possible: {type(err).__name__})", stacklevel=3)
            program = torch.export.export(model, (example_inputs,))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.pt2"
    tmp = out_dir / f"{name}.tmp.pt2"  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    tmp.replace(path)
    return Artifact(path, "pytorch", "torch", "fp32")


def load_pt2(path: Path) -> torch.export.ExportedProgram:
    """The program in a ``torch.export`` archive; a file that is not one, or a damaged one, raises an
    EdgeCompressError."""
    import torch
    from torch.export.pt2_archive import is_pt2_package

    def error(why: str) -> EdgeCompressError:
        return EdgeCompressError(f"cannot load the torch.export archive: {why}", where=str(path),
                                 fix="the file is damaged or not a torch.export archive: save one with "
                                     "torch.export.save (export.format: pytorch)")

    if not is_pt2_package(str(path)):
        raise error("not a .pt2 archive (a zip written by torch.export.save)")
    try:
        return torch.export.load(str(path))
    except Exception as err:  # zip and deserialization errors of a damaged archive
        raise error(f"{type(err).__name__}: {err}") from err


def validate(path: Path) -> tuple[Artifact, tuple[int, ...]]:
    """A trial load (a damaged archive fails here, not in the benchmark); the archive records no input shape."""
    load_pt2(path)
    return Artifact(path, "pytorch", "torch"), ()


def runner(artifact: Artifact, threads: int) -> Runner:
    """The archive's module with ``threads`` intra-op threads while it runs."""
    import torch
    import torchao  # noqa: F401  (registers the quantized ops that INT8 .pt2 archives use)

    from edgecompress.placement import torch_threads

    check_files(artifact)
    module = load_pt2(artifact.path).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch_threads(threads), torch.no_grad():  # the thread count is process-wide: restored for the caller
            out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().numpy()

    return run


def bench(path: str, threads: int, shared: bool = False) -> Callable[[], Runner]:
    """The benchmark worker's entry. A one-weight archive is exported, saved and loaded first (about 2 s of CPU), so
    that the ~100 MiB of modules ``torch.export.load`` imports on first use count as the runtime's import, not as
    the model's memory. ``shared`` changes nothing: torch has one thread pool per process."""
    import tempfile

    import torch
    import torchao  # noqa: F401  (registers the quantized ops that INT8 .pt2 archives use)

    with tempfile.TemporaryDirectory() as tmp:
        warm = f"{tmp}/warm.pt2"
        torch.export.save(torch.export.export(torch.nn.Linear(1, 1), (torch.zeros(1, 1),)), warm)
        torch.export.load(warm).module()(torch.zeros(1, 1))

    def load() -> Runner:
        torch.set_num_threads(threads)
        module = torch.export.load(path).module()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(x))

        return run

    return load


register(Runtime("torch", "pytorch", "torch.export", (".pt2",), export, validate, runner, bench, order=2))
