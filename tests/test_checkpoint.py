"""Checkpoints of physically pruned models load safely and exactly."""

from __future__ import annotations

import pytest
import torch

from edgecompress import apply, zoo
from edgecompress.checkpoint import load_model, save_model
from edgecompress.errors import EdgeCompressError


def test_pruned_resnet_round_trip(tmp_path, digits_task):
    model = zoo.build("resnet20", (1, 8, 8), 10)
    pruned = apply("prune.structured", model, digits_task, ratio=0.5)
    save_model(pruned, tmp_path)
    loaded = load_model(tmp_path, lambda arch: zoo.build("resnet20", (1, 8, 8), 10))
    x = digits_task.example_inputs(4)
    pruned.eval()
    assert torch.equal(pruned(x), loaded(x))
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    model = zoo.build("mnist_cnn", (1, 8, 8), 10)
    save_model(model, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(EdgeCompressError, match="corrupt"):
        load_model(tmp_path, lambda arch: zoo.build("mnist_cnn", (1, 8, 8), 10))
