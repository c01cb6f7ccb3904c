"""Export a PyTorch model to a deployable artifact in the format the export settings name. The work is done by
the runtime registered for that format (:mod:`edgecompress.runtimes`); this package keeps the import path."""

from edgecompress.runtimes import Artifact, Runner, export
from edgecompress.runtimes.onnxruntime import export_onnx

__all__ = ["Artifact", "Runner", "export", "export_onnx"]
