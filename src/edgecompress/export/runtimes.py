"""Built-in runtimes: ONNX Runtime (CPU) and PyTorch (``torch.export`` archives).

Each factory takes an :class:`Artifact` and a thread count and returns a ``Runner``: a function from a float32
numpy batch to the model's first output as numpy. Importing this module registers them in ``RUNTIMES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import RUNTIMES, Artifact, Runner

if TYPE_CHECKING:
    import torch


def _check_files(artifact: Artifact) -> None:
    """Raise if a file the artifact needs is missing."""
    for f in artifact.files:
        if not Path(f).is_file():
            raise EdgeCompressError(
                f"{artifact.format} artifact file not found", where=str(f),
                fix="export the model again, or point the artifact at the file that exists",
            )


def _corrupt(artifact: Artifact, err: Exception) -> EdgeCompressError:
    return EdgeCompressError(
        f"cannot load the {artifact.format} artifact in {artifact.runtime}: {type(err).__name__}: {err}",
        where=str(artifact.path), fix="the file is corrupt or not of this format: export the model again",
    )


def onnxruntime_runner(artifact: Artifact, threads: int) -> Runner:
    """ONNX Runtime on the CPU: ``threads`` intra-op threads, one inter-op thread, sequential execution."""
    import onnxruntime as ort

    _check_files(artifact)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(str(artifact.path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own pybind exception types
        raise _corrupt(artifact, err) from err
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


def torch_runner(artifact: Artifact, threads: int) -> Runner:
    """PyTorch eager on the module of a ``torch.export`` archive (no pickled code is executed), with ``threads``
    intra-op threads while it runs."""
    import torch
    import torchao  # noqa: F401  (registers the quantized ops that INT8 .pt2 archives use)

    _check_files(artifact)
    module = load_pt2(artifact.path).module()

    def run(x: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()  # the thread count is process-wide: restore it for the caller
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        finally:
            torch.set_num_threads(previous)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().numpy()

    return run


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


RUNTIMES["onnxruntime"] = onnxruntime_runner
RUNTIMES["torch"] = torch_runner

from edgecompress.export import executorch  # noqa: E402, F401  (registers the "executorch" runtime)
