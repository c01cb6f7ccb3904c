"""A transformer to ONNX and back: ``input_ids`` and ``attention_mask`` in (batch and length dynamic), the
encoder's last hidden state or the LM's logits out, run in ONNX Runtime and checked against PyTorch.

The LM is exported without its KV cache (one forward pass over the whole sequence, the prefill), so the ONNX
file scores text and can generate only by re-running the prefix.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress import atomic


class _Tokens(nn.Module):
    """The model as ``(input_ids, attention_mask) -> logits | last_hidden_state``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.causal = hasattr(model, "lm_head") or hasattr(model, "get_output_embeddings") and \
            model.get_output_embeddings() is not None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.causal:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], path: Path, opset: int = 18) -> Path:
    """Write ``model`` (eval mode, CPU) to ``path`` as ONNX (weights inside the file), atomically."""
    wrapped = _Tokens(model).eval()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    args = (example["input_ids"], example["attention_mask"])
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, args, input_names=["input_ids", "attention_mask"],
                                    output_names=["output"], dynamic_shapes=({0: batch, 1: length},) * 2,
                                    dynamo=True, opset_version=opset, verbose=False)
    program.save(str(tmp), external_data=False)
    atomic.replace(tmp, path)
    return path


def run_onnx(path: Path, batch: dict[str, torch.Tensor], threads: int = 1) -> np.ndarray:
    """The ONNX model's output on one batch in ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in batch.items()})[0]


def parity(model: nn.Module, path: Path, batch: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between PyTorch's and ONNX Runtime's outputs on ``batch``."""
    with torch.no_grad():
        ref = _Tokens(model).eval()(batch["input_ids"], batch["attention_mask"]).numpy()
    return float(np.abs(run_onnx(path, batch) - ref).max())
