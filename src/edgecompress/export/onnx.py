"""FP32 ONNX export through the TorchScript exporter (dynamo=False): one self-contained file, opset 17,
outputs matching PyTorch to ~1e-6 in ONNX Runtime."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from edgecompress.export.artifact import Artifact


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
