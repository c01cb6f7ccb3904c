"""Channel alignment of the structured stages (round_to) and side-by-side latency statistics."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from edgecompress.context import StageContext
from edgecompress.measure.latency import interleaved, speedup
from edgecompress.nn.layers import weight_layers
from edgecompress.prune import align
from edgecompress.registry import get
from edgecompress.runtimes import export
from edgecompress.settings import ExportSettings


def run(method: str, model, task, export_settings: ExportSettings | None = None, **config):
    stage = get(method)
    ctx = StageContext(task=task, teacher=model, progress=False, export=export_settings or ExportSettings())
    return stage(model, stage.config(**config), ctx), ctx.info


def conv_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in weight_layers(model).items() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize(("keep", "channels", "multiple", "up", "expected"), [
    (45, 64, 16, False, 48), (40, 64, 16, False, 48), (39, 64, 16, False, 32),  # nearest, ties up
    (3, 64, 16, False, 16),    # never below one multiple
    (11, 16, 16, False, 8),    # a layer no wider than the multiple: half of it
    (33, 64, 16, True, 48),    # up: live channels never go
    (100, 100, 16, False, 100), (3, 3, 16, False, 3), (45, 64, 1, False, 45),
])
def test_aligned_keep(keep, channels, multiple, up, expected):
    assert align.aligned_keep(keep, channels, multiple, up) == expected


def test_auto_is_the_runtimes_multiple_for_this_cpu():
    lanes = align.cpu_float_lanes()
    assert lanes in (4, 8, 16)
    assert align.resolve("auto", "onnxruntime", "x") == lanes
    assert align.resolve("auto", "executorch", "x") == max(8, lanes)
    assert align.resolve(4, "onnxruntime", "x") == 4


def test_turning_alignment_off_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="edgecompress"):
        assert align.resolve(1, "onnxruntime", "prune.structured.round_to") == 1
    assert "round_to 1 turns channel alignment off" in caplog.text and "round_to: auto" in caplog.text


def test_structured_stages_keep_aligned_channel_counts(digits_cnn, digits_task):
    before = conv_channels(digits_cnn)
    for method, config in (("prune.structured", {"ratio": 0.3}), ("prune.iterative", {"target_ratio": 0.3,
                                                                                       "max_batches": 1})):
        pruned, info = run(method, digits_cnn, digits_task, round_to=8, **config)
        assert info["round_to"] == 8
        after = conv_channels(pruned)
        assert after != before, method  # something was pruned
        for name, c in after.items():
            wanted = 8 if before[name] > 8 else 4
            assert c % wanted == 0 or c == before[name], (method, name, c)
        assert pruned(digits_task.example_inputs(2)).shape == (2, 10)


def test_shifter_keeps_dead_channels_for_alignment_and_stays_exact(digits_cnn, digits_task):
    model = copy.deepcopy(digits_cnn).eval()
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():  # five dead filters whose output ReLU turns into zeros: removable
        conv.weight[:5] = 0
        bn.bias[:5], bn.running_mean[:5] = -1.0, 0.0
    x = digits_task.example_inputs(4)
    exact, _ = run("prune.shifter", model, digits_task, round_to=1)
    aligned, info = run("prune.shifter", model, digits_task, round_to=8)
    assert exact.features[0].out_channels == conv.out_channels - 5
    assert aligned.features[0].out_channels == 16 and conv.out_channels == 16  # 11 rounded up to 16
    assert any("channel alignment" in why for reasons in info["kept_dead"].values() for why in reasons.values())
    with torch.no_grad():
        assert torch.allclose(aligned.eval()(x), model(x), atol=1e-4)
        assert torch.allclose(exact.eval()(x), model(x), atol=1e-4)


def test_interleaved_speedup_of_a_model_against_itself_and_a_bigger_one(tmp_path):
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()
    big = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64 * 16 * 16, 10)).eval()
    example = torch.randn(1, 3, 16, 16)
    settings = ExportSettings()
    arts = [export(m, example, tmp_path / n, settings) for n, m in (("big", big), ("small", small))]
    arts.append(arts[0])
    ms = interleaved(arts, (3, 16, 16), rounds=5, repeats=25, warmup=2)
    assert [len(r) for r in ms] == [5, 5, 5]
    faster = speedup(ms[0], ms[1])
    assert faster["median"] > 3 and faster["measurable"] and faster["q1"] <= faster["median"] <= faster["q3"]
    same = speedup(ms[0], ms[0])
    assert same == {"median": 1.0, "q1": 1.0, "q3": 1.0, "rounds": 5, "measurable": False}
