"""Recovery and weight-only quantization of pruned transformers: ``recover.mimic`` (least squares against the dense
projections), ``recover.kd`` (KL to the dense next-token distribution) and ``quant.weight`` on token tasks, on
tiny randomly initialised Llama/BERT models built in the tests."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgecompress import compress, registry  # noqa: E402
from edgecompress.llm.arch import transformer  # noqa: E402
from edgecompress.llm.distill import distill_llm  # noqa: E402
from edgecompress.llm.mimic import masked_solve, mimic_llm  # noqa: E402
from edgecompress.llm.prune import LLMPruneConfig, prune_llm  # noqa: E402
from edgecompress.recipe import parse_recipe  # noqa: E402
from test_llm_pipeline import lm_recipe, save_tiny  # noqa: E402
from test_llm_prune import batches, logits, tiny_bert, tiny_llama  # noqa: E402


def pruned(build, sparsity: float = 0.6, criterion: str = "wanda"):
    dense = build()
    model = copy.deepcopy(dense)
    prune_llm(model, batches(), LLMPruneConfig(sparsity=sparsity, criterion=criterion))
    return dense, model


def masks(model) -> dict[str, torch.Tensor]:
    arch = transformer(model)
    return {arch.name(i, r): p.weight == 0 for i in range(len(arch)) for r, p in arch.projections(i).items()}


def kl(model, dense, data) -> float:
    total = 0.0
    for batch in data:
        p, q = logits(dense, batch).log_softmax(-1), logits(model, batch).log_softmax(-1)
        total += float((p.exp() * (p - q)).sum(-1).mean())
    return total / len(data)


def test_masked_solve_matches_a_row_by_row_least_squares():
    torch.manual_seed(0)
    x = torch.randn(500, 12, dtype=torch.float64) + torch.randn(500, 1, dtype=torch.float64)
    y = x @ torch.randn(12, 5, dtype=torch.float64) + 0.1 * torch.randn(500, 5, dtype=torch.float64)
    keep = torch.rand(5, 12) < 0.5
    keep[0] = False  # an empty row stays empty
    keep[1] = True
    w, residual = masked_solve(x.T @ x, x.T @ y, torch.zeros(5, 12, dtype=torch.float64), keep, damping=0.0,
                               tol=1e-6)
    assert residual < 1e-6  # conjugate gradients end exactly after as many steps as unknowns
    assert torch.equal(w[~keep], torch.zeros(int((~keep).sum()), dtype=torch.float64))
    for r in range(1, 5):
        cols = keep[r].nonzero().flatten()
        expected = torch.linalg.lstsq(x[:, cols], y[:, r:r + 1]).solution.flatten()
        torch.testing.assert_close(w[r, cols], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", [tiny_llama, tiny_bert])
def test_mimic_lowers_every_projections_error_and_keeps_the_masks(build):
    dense, model = pruned(build)
    before_masks, calib = masks(model), batches(32, seed=2)
    held_out = batches(8, seed=3)
    error_before = sum(float((logits(model, b) - logits(dense, b)).square().mean()) for b in held_out)
    result = mimic_llm(model, dense, calib)
    assert set(result.errors) == set(before_masks) and not result.skipped
    for name, (before, after) in result.errors.items():
        assert after < 0.9 * before, name
    after_masks = masks(model)
    assert all(torch.equal(after_masks[n], m) for n, m in before_masks.items())
    error_after = sum(float((logits(model, b) - logits(dense, b)).square().mean()) for b in held_out)
    assert error_after < 0.7 * error_before  # on held-out tokens too


def test_distill_lowers_the_kl_to_the_dense_model_and_keeps_zeros():
    dense, model = pruned(tiny_llama, 0.7)
    before_masks, held_out = masks(model), batches(8, seed=3)
    before = kl(model, dense, held_out)
    result = distill_llm(model, dense, batches(32, seed=2), epochs=10, lr=3e-3)
    assert result.steps == 80 and result.losses[-1] < result.losses[0]
    assert kl(model, dense, held_out) < 0.7 * before  # on held-out tokens
    after_masks = masks(model)
    assert all(torch.equal(after_masks[n], m) for n, m in before_masks.items())
    assert all(p.requires_grad for p in model.parameters())  # the caller's flags come back


def test_language_model_variants_share_the_stage_names():
    for name in ("recover.mimic", "recover.kd", "quant.weight"):
        stage = registry.get(name)
        assert set(registry.TOKEN_TASK_KINDS) <= set(stage.task_kinds)
        assert set(registry.ALL_TASK_KINDS) <= set(stage.task_kinds)
        assert stage.by_kind["causal_lm"] is not stage.fn
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("recover.mimic", registry.get("recover.kd").config)(lambda *a: None)


@pytest.mark.parametrize("bits, group, algorithm", [(4, 32, "gptq"), (8, 0, "rtn")])
def test_weight_only_projections_sit_on_their_grid_keep_zeros_and_stay_close(bits, group, algorithm):
    from edgecompress.llm.quantize import gptq_llm
    from edgecompress.quant.weights.quantizer import QuantSpec

    dense, model = pruned(tiny_llama, 0.5)
    model_before = copy.deepcopy(model)
    result = gptq_llm(model, batches(length=32), QuantSpec(bits, group), algorithm=algorithm,
                      exclude=["model.layers.1.mlp"])
    assert result.floating == [f"model.layers.1.mlp.{r}_proj" for r in ("gate", "up", "down")]
    assert result.nbytes < (0.16 if bits == 4 else 0.27) * result.float_bytes
    arch, zeros = transformer(model), masks(model_before)
    for name, proj in ((arch.name(0, r), p) for r, p in arch.projections(0).items()):
        rows = proj.weight.data.reshape(-1, group or proj.in_features)
        assert max(len(torch.unique(g)) for g in rows) <= 2 ** bits - 1, name
        assert not (proj.weight[zeros[name]] != 0).any(), name  # pruned weights stay zero
    untouched = transformer(model_before).projections(1)["down"].weight
    assert torch.equal(arch.projections(1)["down"].weight, untouched)
    held_out = batches(8, seed=3)
    assert kl(model, model_before, held_out) < (0.05 if bits == 4 else 0.001) * kl(model_before, dense, held_out)


@pytest.mark.slow
def test_recovery_and_int4_weights_through_the_pipeline(tmp_path):
    user = save_tiny(tmp_path / "mine")
    stages = [{"method": "prune.llm", "sparsity": 0.6, "criterion": "wanda", "samples": 16, "batch_size": 4},
              {"method": "recover.mimic", "calib_samples": 16, "batch_size": 4},
              {"method": "recover.kd", "calib_samples": 16, "step_batch": 4, "epochs": 2, "lr": 1e-3},
              {"method": "quant.weight", "bits": 4, "group_size": 32, "calib_samples": 16}]
    recipe = {**lm_recipe(user, stages), "targets": {"max_accuracy_drop": None}}
    result = compress(recipe=parse_recipe(recipe), out=tmp_path / "run", progress=False)
    history = {h["method"]: h for h in result.history}
    errors = history["recover.mimic"]["info"]["relative_error"]
    assert len(errors) == 14 and all(after < before for before, after in errors.values())
    assert history["recover.kd"]["info"]["steps"] == 8
    ppl = {k: h["metrics"]["perplexity"] for k, h in history.items()}  # a random model: all near uniform (256)
    assert ppl["quant.weight"] < 1.02 * ppl["recover.kd"]
    info = history["quant.weight"]["info"]
    assert info["weight_bytes_packed"] < 0.16 * info["weight_bytes_fp32"]
    arch = transformer(result.model)
    for i in range(len(arch)):
        for proj in arch.projections(i).values():  # on a 4-bit grid: at most 15 values in every group of 32
            assert max(len(torch.unique(g)) for g in proj.weight.data.reshape(-1, 32)) <= 15
