"""Shared fixtures: an isolated baseline cache and small real-data tasks."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test session trains into its own baseline cache; one torch thread per xdist worker (two
    workers with two threads each on a 2-core machine run 10x slower from oversubscription)."""
    import torch

    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGECOMPRESS_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digits_task():
    from edgecompress.data import data_spec, load_task

    return load_task(data_spec(dataset="digits"))


@pytest.fixture(scope="session")
def digits_cnn(digits_task):
    """mnist_cnn trained on digits for a few seconds (~0.95+ test accuracy), shared read-only: stages deepcopy."""
    import torch

    from edgecompress import zoo
    from edgecompress.train import train

    torch.manual_seed(0)
    model = zoo.build("mnist_cnn", digits_task.input_shape, digits_task.num_classes)
    train(model, digits_task, epochs=3, lr=0.05, progress=False)
    return model.eval()
