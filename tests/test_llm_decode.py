"""Causal LMs exported with their KV cache (``llm.export.export_decoder``) and generated in ONNX Runtime
(``runtimes.onnxruntime.generate``): the same greedy tokens as PyTorch's ``generate`` and logits within 1e-3 at
every step, for a tiny random Llama and for the same model shrunk by ``prune.composite``."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from edgecompress.errors import EdgeCompressError  # noqa: E402
from edgecompress.llm.composite import CompositeConfig, composite  # noqa: E402
from edgecompress.llm.export import decoder_parity, export_decoder  # noqa: E402
from edgecompress.runtimes.onnxruntime import generate, session  # noqa: E402


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def prompt(length: int = 12) -> torch.Tensor:
    return torch.randint(96, (1, length), generator=torch.Generator().manual_seed(1))


def test_kv_cache_generation_in_onnxruntime_equals_pytorch(tmp_path):
    model = tiny_llama()
    path = export_decoder(model, tmp_path / "decoder.onnx")
    result = decoder_parity(model, path, prompt(), 16)
    assert result["tokens_equal"], result
    assert result["max_logit_diff"] <= 1e-3
    assert len(set(result["tokens"])) > 1  # a real sequence, not one token repeated
    free, _ = generate(session(path, 1), prompt()[0].tolist(), 16)  # its own greedy choices fed back
    assert free == result["pytorch_tokens"]
    # the cache is really used: the prompt's tokens change what the next tokens are
    other, _ = generate(session(path, 1), prompt()[0, 1:].tolist(), 16)
    assert other != free


@pytest.mark.slow
def test_composite_shrunk_decoder_exports_with_its_smaller_cache(tmp_path):
    model = tiny_llama()
    calib = [{"input_ids": torch.randint(96, (4, 24), generator=torch.Generator().manual_seed(i)),
              "attention_mask": torch.ones(4, 24, dtype=torch.long)} for i in range(4)]
    composite(model, calib, CompositeConfig(mlp=0.5, attention=0.34, samples=16))
    assert (model.config.num_key_value_heads, model.config.intermediate_size) == (2, 64)
    path = export_decoder(model, tmp_path / "small.onnx")
    caches = [i.shape for i in session(path, 1).get_inputs() if i.name.startswith("input.")]
    assert len(caches) == 4 and all(s[1] == 2 and s[3] == 8 for s in caches)
    result = decoder_parity(model, path, prompt(), 16)
    assert result["tokens_equal"], result
    assert result["max_logit_diff"] <= 1e-3


def test_generate_refuses_a_model_without_a_cache(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "prefill",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "n"])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, [1, "n"])])
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "prefill.onnx")
    with pytest.raises(EdgeCompressError, match="(?s)no KV-cache inputs.*export_decoder"):
        generate(session(tmp_path / "prefill.onnx", 1), [1, 2, 3], 2)
