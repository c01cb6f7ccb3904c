"""A transformer to ONNX and back, run in ONNX Runtime and checked against PyTorch.

:func:`export_onnx`: ``input_ids`` and ``attention_mask`` in (batch and length dynamic), the encoder's last
hidden state or the LM's logits out: one pass over the whole sequence without a KV cache (scoring text, the
pipeline's artifact).

:func:`export_decoder`: a causal LM *with* its KV cache, for generation, through transformers' own ONNX exporter
(``transformers.exporters``: its ``DynamicCache`` export, the patches that make the graph lower, and ONNX
Runtime's CPU fusions: ``GroupQueryAttention`` with the rotary embedding inside, ``SkipSimplifiedLayerNormalization``,
packed projections). One graph serves prefill and decode: ``input_ids`` and ``position_ids`` of any length beside the
cache of the tokens before them (length 0 for the prompt), the logits and the grown cache out. One graph rather
than a prefill and a decode graph stores the weights once (on disk and in memory). Batch 1, no attention mask
(no padding). :func:`edgecompress.runtimes.onnxruntime.generate` runs it.
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
    from edgecompress.runtimes.onnxruntime import session

    return session(path, threads).run(None, {k: v.numpy() for k, v in batch.items()})[0]


def parity(model: nn.Module, path: Path, batch: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between PyTorch's and ONNX Runtime's outputs on ``batch``."""
    with torch.no_grad():
        ref = _Tokens(model).eval()(batch["input_ids"], batch["attention_mask"]).numpy()
    return float(np.abs(run_onnx(path, batch) - ref).max())


def export_decoder(model: nn.Module, path: Path, *, fused: bool = True, prompt: int = 8) -> Path:
    """Write causal LM ``model`` with its KV cache to ``path`` as one ONNX file, atomically (see the module
    docstring; ``fused``: ONNX Runtime's CPU fusions, a graph only ONNX Runtime runs). Inputs ``input_ids``,
    ``position_ids`` ([1, new]) and ``input.cache.layers.{i}.keys``/``.values`` ([1, kv heads, past, head dim]);
    outputs ``logits`` and ``output.cache.layers.{i}.keys``/``.values`` (past + new). The shapes come from the
    model's config, so a ``prune.composite``-shrunk model (fewer kv groups, a narrower MLP) exports the same way.
    The sample traced is a ``prompt``-token generation of 3 tokens (two decode steps, merged so that the
    query length stays dynamic)."""
    import onnx_ir
    from transformers.exporters import OnnxConfig, OnnxExporter
    from transformers.exporters.utils import decompose_for_generation

    ids = torch.arange(prompt).unsqueeze(0) % model.config.vocab_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        decode, sample = decompose_for_generation(model.eval(), {"input_ids": ids, "attention_mask": torch.ones_like(
            ids)}, multi_token_decode=True)["decode"]
        new, past = torch.export.Dim("new", min=1, max=65536), torch.export.Dim("past", min=1, max=65536)
        shapes = {"input_ids": {1: new}, "position_ids": {1: new},
                  "cache": [{2: past}] * (2 * len(sample["cache"].layers))}  # the keys and values of every layer
        config = OnnxConfig(dynamic=True, dynamic_shapes=shapes, ort_fusions="cpu" if fused else None)
        program = OnnxExporter().export(decode, sample, config).program
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    onnx_ir.save(program, str(tmp))
    atomic.replace(tmp, path)
    return path


def decoder_parity(model: nn.Module, path: Path, prompt: torch.Tensor, new_tokens: int) -> dict:
    """Greedy generation of ``new_tokens`` after ``prompt`` (``[1, length]`` token ids) in PyTorch (transformers'
    ``generate`` with its KV cache), and the ONNX file of :func:`export_decoder` in ONNX Runtime fed the same
    tokens: PyTorch's tokens, ONNX Runtime's greedy choice at each step, ``agreement`` (the share of steps where
    they are equal; 1.0: ONNX Runtime's own greedy generation gives the same tokens), and the largest absolute
    difference of the logits over every step."""
    from edgecompress.runtimes.onnxruntime import generate, session

    with torch.no_grad():
        ref = model.eval().generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                    min_new_tokens=new_tokens, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True, pad_token_id=0)
    expected = ref.sequences[0, prompt.shape[1]:].tolist()
    tokens, logits = generate(session(path, 1), prompt[0].tolist(), new_tokens, forced=expected)
    return {"tokens": tokens, "pytorch_tokens": expected, "tokens_equal": tokens == expected,
            "agreement": float(np.mean(np.array(tokens) == np.array(expected))),
            "max_logit_diff": float(np.abs(logits - torch.cat(ref.logits).numpy()).max())}
