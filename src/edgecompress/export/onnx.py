"""FP32 ONNX export through the TorchScript exporter (dynamo=False): one self-contained file, opset 17,
outputs matching PyTorch to ~1e-6 in ONNX Runtime; and ``load_onnx``, which checks a file before it is run."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import Artifact

if TYPE_CHECKING:
    import onnx


def export_onnx(model: torch.nn.Module, example_inputs: torch.Tensor, path: Path, opset: int = 17) -> Artifact:
    """Write ``model`` to ``path`` (atomically) with a dynamic batch axis; return the FP32 artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example_inputs,), str(tmp), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    tmp.replace(path)
    return Artifact(path, "onnx", "onnxruntime", "fp32")


def load_onnx(path: Path) -> onnx.ModelProto:
    """The model in ``path`` (external data not loaded) once ``onnx.checker`` accepts the file; a damaged file or
    one that is not ONNX raises an EdgeCompressError."""
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: parses the file and finds external data next to it
    except onnx.checker.ValidationError as err:
        raise EdgeCompressError(f"not a valid ONNX model: {str(err).strip()}", where=str(path),
                                fix="the file is damaged or not an ONNX model: export the model again") from None
    proto = onnx.load(str(path), load_external_data=False)
    if not proto.graph.input:
        raise EdgeCompressError("the ONNX model has no inputs", where=str(path),
                                fix="export a model that takes an input tensor")
    return proto
