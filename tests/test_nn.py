"""The shared building blocks of edgecompress.nn: one BatchNorm folding (kept as identity or removed), the
depthwise test."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgecompress.nn.bn import fold_batchnorms
from edgecompress.nn.layers import build_graph, is_depthwise


class _Net(nn.Module):
    """conv1 -> bn1 (foldable); conv2 feeds bn2 and a residual add (not foldable); linear -> BatchNorm1d."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.fc, self.bn3 = nn.Linear(4 * 5 * 5, 6, bias=False), nn.BatchNorm1d(6)

    def forward(self, x):
        y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.bn3(self.fc((self.bn2(y) + y).flatten(1)))


def test_fold_keeps_outputs_and_skips_shared_outputs():
    torch.manual_seed(0)
    model = _Net().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
    x = torch.randn(8, 2, 5, 5)
    reference = model(x)
    for remove in (False, True):
        folded = copy.deepcopy(model)
        done, left = fold_batchnorms(folded, build_graph(folded, x[:2]), remove=remove)
        assert done == ["bn1", "bn3"] and left == ["bn2"]
        assert isinstance(folded.bn1, nn.Identity) == remove
        torch.testing.assert_close(folded(x), reference, rtol=1e-5, atol=1e-5)


def test_depthwise_means_one_filter_per_input_channel():
    assert is_depthwise(nn.Conv2d(8, 8, 3, groups=8))
    assert not is_depthwise(nn.Conv2d(16, 8, 3, groups=8))  # two inputs per output: a grouped conv
    assert not is_depthwise(nn.Conv2d(8, 16, 3, groups=8)) and not is_depthwise(nn.Conv2d(1, 1, 3))
