"""factorize.lowrank and hw.separable: the factorized layers reproduce the original at full rank and approximate it
with the SVD's error below; ranks by energy / budget; skipped layers; checkpoints rebuild them; bad input."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from edgecompress.checkpoint import load_model, save_model
from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.factorize.layers import FactorizedConv2d, LowRankLinear, SeparableConv2d
from edgecompress.measure.counts import count_macs
from edgecompress.registry import get
from edgecompress.train import accuracy


def run(name, model, task, **config):
    stage = get(name)
    ctx = StageContext(task=task, teacher=model, progress=False)
    return stage(model, stage.config(**config), ctx), ctx


def test_lowrank_linear_full_rank_exact_and_truncation_error_is_the_svd_tail():
    torch.manual_seed(0)
    layer, x = nn.Linear(48, 32), torch.randn(64, 48)
    assert (LowRankLinear.of(layer, 32)(x) - layer(x)).abs().max() <= 1e-4
    s = torch.linalg.svdvals(layer.weight.detach())
    for rank in (4, 16):
        approx = LowRankLinear.of(layer, rank)
        dense = approx[1].weight @ approx[0].weight
        tail = float(s[rank:].square().sum().sqrt())
        assert abs(float((dense - layer.weight).detach().norm()) - tail) <= 1e-4  # Eckart-Young: exactly the tail
        # each output row differs by (W - W_r) x: at most sigma_{r+1} |x|
        err = (approx(x) - layer(x)).norm(dim=1)
        assert bool((err <= float(s[rank]) * x.norm(dim=1) + 1e-4).all())


@pytest.mark.parametrize("mode", ["channel", "spatial", "tucker2"])
def test_factorized_conv_full_rank_exact_and_error_falls_with_rank(mode):
    torch.manual_seed(0)
    conv, x = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=True), torch.randn(2, 6, 11, 9)
    full = {"channel": [8], "spatial": [18], "tucker2": [6, 8]}[mode]
    assert (FactorizedConv2d.of(conv, mode, full)(x) - conv(x)).abs().max() <= 1e-4
    errors = []
    for r in (1, 2, 4):
        ranks = [r, r] if mode == "tucker2" else [r]
        with torch.no_grad():
            errors.append(float((FactorizedConv2d.of(conv, mode, ranks)(x) - conv(x)).norm() / conv(x).norm()))
    assert errors[0] > errors[1] > errors[2] and errors[0] < 1.0, errors


def test_separable_full_reconstruction_exact_and_rank_one_is_the_per_channel_tail():
    torch.manual_seed(0)
    conv, x = nn.Conv2d(5, 7, 3, padding=1, bias=True), torch.randn(2, 5, 8, 8)
    assert (SeparableConv2d.of(conv, 9)(x) - conv(x)).abs().max() <= 1e-4
    pair = SeparableConv2d.of(conv, 1)
    tails = [torch.linalg.svdvals(conv.weight[:, i].reshape(7, 9).detach())[1:].square().sum() for i in range(5)]
    assert abs(float((pair.dense_weight() - conv.weight.detach()).norm()) - float(sum(tails).sqrt())) <= 1e-4


def test_lowrank_stage_meets_mac_budget_skips_and_recovers(digits_task, digits_cnn):
    out, ctx = run("factorize.lowrank", digits_cnn, digits_task, target_macs_ratio=0.6, conv_mode="channel",
                   recovery={"epochs": 2, "lr": 0.01})
    info, example = ctx.info, digits_task.example_inputs(1)
    assert all(p.requires_grad for p in digits_cnn.parameters()) and not digits_cnn.training  # input left alone
    assert count_macs(out, example) <= 0.6 * count_macs(digits_cnn, example)
    assert info["macs_after"] == count_macs(out, example) and info["factorized"]
    assert any(isinstance(m, FactorizedConv2d) for m in out.modules())
    assert info["recovery"]["val_accuracy_after"] >= 0.85 and accuracy(out, digits_task, "test") >= 0.85
    assert accuracy(digits_cnn, digits_task, "test") - accuracy(out, digits_task, "test") <= 0.08


def test_lowrank_energy_ranks_and_checkpoint_rebuild(digits_task, digits_cnn, tmp_path):
    out, ctx = run("factorize.lowrank", digits_cnn, digits_task, energy=0.5)
    rows = {r["name"]: r for r in ctx.info["factorized"]}
    assert rows and all(r["energy_kept"] >= 0.5 for r in rows.values())
    assert all(r["macs"][1] < r["macs"][0] for r in rows.values())
    _, default = run("factorize.lowrank", digits_cnn, digits_task)  # energy 0.9
    assert "would need 9664 MACs, the layer has 9216" in default.info["skipped"]["features.0"]  # 1 -> 16 channels
    save_model(out, tmp_path)
    import copy

    back = load_model(tmp_path, lambda arch: copy.deepcopy(digits_cnn))
    x = digits_task.example_inputs(4)
    with torch.no_grad():
        assert torch.equal(back(x), out.eval()(x))
    assert {n for n, m in back.named_modules() if isinstance(m, (LowRankLinear, FactorizedConv2d))} == set(rows)


def test_lowrank_bad_input(digits_task, digits_cnn):
    with pytest.raises(EdgeCompressError, match="larger than layer 'features.4' allows") as err:
        run("factorize.lowrank", digits_cnn, digits_task, ranks={"features.4": [99, 4]})
    assert "at most [16, 32]" in err.value.fix
    with pytest.raises(EdgeCompressError, match="larger than layer"):
        run("factorize.lowrank", digits_cnn, digits_task, rank=1000, conv_mode="channel")
    with pytest.raises(EdgeCompressError, match="still leaves 0.99") as err:  # the classifier alone cannot halve MACs
        run("factorize.lowrank", digits_cnn, digits_task, target_macs_ratio=0.5, layers=["classifier"])
    assert "at least 0.99" in err.value.fix
    with pytest.raises(EdgeCompressError, match="not selected"):
        run("factorize.lowrank", digits_cnn, digits_task, ranks={"nope": 3})
    with pytest.raises(ValidationError, match="give one of"):
        get("factorize.lowrank").config(energy=0.9, rank=3)


def test_separable_stage_full_reconstruction_reproduces_outputs(digits_task, digits_cnn):
    out, ctx = run("hw.separable", digits_cnn, digits_task, multiplier=9, only_fewer_macs=False,
                   recovery={"epochs": 0})
    assert len(ctx.info["rewritten"]) == 4 and all(r["weight_error"] < 1e-5 for r in ctx.info["rewritten"])
    x = digits_task.example_inputs(16)
    with torch.no_grad():
        assert (out(x) - digits_cnn(x)).abs().max() <= 1e-4
    with pytest.raises(EdgeCompressError, match="larger than layer") as err:
        run("hw.separable", digits_cnn, digits_task, multiplier=10)
    assert "at most 9" in err.value.fix


def test_separable_stage_saves_macs_and_recovers(digits_task, digits_cnn):
    out, ctx = run("hw.separable", digits_cnn, digits_task, recovery={"epochs": 3, "lr": 0.02})
    assert ctx.info["macs_after"] < 0.5 * ctx.info["macs_before"]
    assert sum(isinstance(m, SeparableConv2d) for m in out.modules()) == len(ctx.info["rewritten"]) >= 3
    assert accuracy(out, digits_task, "test") >= 0.85


@pytest.mark.slow
def test_lowrank_on_transformer_projections_in_an_embedding_recipe(tmp_path):
    pytest.importorskip("transformers")
    from test_llm_pipeline import lm_recipe, save_tiny

    from edgecompress import compress
    from edgecompress.recipe import parse_recipe

    user = save_tiny(tmp_path / "enc", kind="bert")
    recipe = lm_recipe(user, [{"method": "factorize.lowrank", "rank": 16, "layers": ["encoder.*"]}], task="embedding")
    recipe["targets"] = {"max_accuracy_drop": 50.0}
    result = compress(recipe=parse_recipe(recipe), out=tmp_path / "run", progress=False)
    info, final = result.history[-1]["info"], result.history[-1]["metrics"]
    assert {r["name"] for r in info["factorized"]} >= {"encoder.layer.0.attention.self.query",
                                                        "encoder.layer.1.intermediate.dense"}
    assert info["macs_after"] < info["macs_before"] and 0.5 < final["embedding_cosine"] < 1
    assert isinstance(result.model.encoder.layer[0].attention.self.query, LowRankLinear)


def test_checkpoint_names_only_registered_layer_types(digits_task, digits_cnn, tmp_path):
    import copy
    import json

    out, _ = run("factorize.lowrank", digits_cnn, digits_task, rank=4, layers=["classifier"])
    save_model(out, tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["rebuilt"] == {"classifier": {"class": "LowRankLinear", "kwargs": {
        "in_features": 128, "out_features": 10, "rank": 4, "bias": True}}}
    meta["rebuilt"]["classifier"]["class"] = "Popen"
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(EdgeCompressError, match="unknown layer type") as err:
        load_model(tmp_path, lambda arch: copy.deepcopy(digits_cnn))
    assert "LowRankLinear" in err.value.fix
