"""One entry point, :func:`export`, that writes a model in the format the export settings name.

Exporters are registered by format in ``EXPORTERS``; each writes its files atomically (temporary file, then
rename) and returns the :class:`Artifact` with the runtime that runs it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import Artifact
from edgecompress.export.executorch import export_executorch
from edgecompress.export.onnx import export_onnx
from edgecompress.settings import FORMAT_RUNTIME, ExportSettings

# format -> exporter(model, example_inputs, out_dir, settings, name) -> Artifact
Exporter = Callable[[torch.nn.Module, torch.Tensor, Path, ExportSettings, str], Artifact]
EXPORTERS: dict[str, Exporter] = {}


def _export_onnx(model: torch.nn.Module, example_inputs: torch.Tensor, out_dir: Path,
                 settings: ExportSettings, name: str) -> Artifact:
    """FP32 ONNX file ``name.onnx`` (opset from the settings, dynamic batch axis)."""
    return export_onnx(model, example_inputs, out_dir / f"{name}.onnx", settings.opset)


def _export_pytorch(model: torch.nn.Module, example_inputs: torch.Tensor, out_dir: Path,
                    settings: ExportSettings, name: str) -> Artifact:
    """``torch.export`` archive ``name.pt2`` with a dynamic batch dimension, or a static one (with a warning)
    when the model's code fixes the batch size."""
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


EXPORTERS["onnx"] = _export_onnx
EXPORTERS["pytorch"] = _export_pytorch
EXPORTERS["executorch"] = export_executorch


def export(model: torch.nn.Module, example_inputs: torch.Tensor, out_dir: Path, settings: ExportSettings,
           name: str = "model") -> Artifact:
    """Write ``model`` to ``out_dir`` in ``settings.format`` and return the artifact (the model is not modified).

    ``example_inputs`` is an input batch (any batch size) used for tracing.
    """
    expected = FORMAT_RUNTIME.get(settings.format)
    if expected is None:
        raise EdgeCompressError(f"unknown export format {settings.format!r}", where="export.format",
                                fix=f"use one of: {', '.join(EXPORTERS)}")
    if settings.runtime != expected:
        raise EdgeCompressError(
            f"runtime {settings.runtime!r} cannot run the {settings.format!r} format", where="export.runtime",
            fix=f"set export.runtime to {expected!r}, or choose the format that {settings.runtime!r} runs",
        )
    return EXPORTERS[settings.format](model, example_inputs, Path(out_dir), settings, name)
