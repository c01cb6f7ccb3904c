"""Export a PyTorch model to a deployable artifact (ONNX, torch.export) and run it in its runtime."""

from edgecompress.export.artifact import Artifact, Runner
from edgecompress.export.onnx import export_onnx
from edgecompress.export.exporters import export

__all__ = ["Artifact", "Runner", "export", "export_onnx"]
