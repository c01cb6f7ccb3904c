"""The user's own data: an image folder or a tensors file, labelled or not.

Labelled data becomes a :class:`~edgecompress.tasks.ClassificationTask`. Unlabeled data (a folder of images
with no class subfolders, a tensors file with no ``y``, or ``labels: false``) becomes an
:class:`~edgecompress.tasks.UnlabeledTask`, judged by agreement with the unmodified model. Inputs are scaled
to [0, 1] (images), resized and normalized by the recipe's ``mean``/``std``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from edgecompress.data.datasets import _split, _task, _three_way, register_dataset
from edgecompress.data.options import DataSpec, FolderData, TensorsData
from edgecompress.errors import EdgeCompressError
from edgecompress.tasks import Task, UnlabeledTask

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _normalized(x: np.ndarray, spec: FolderData | TensorsData, where: str) -> np.ndarray:
    if spec.mean is None:
        return x
    if x.ndim < 2 or x.shape[1] != len(spec.mean):
        raise EdgeCompressError(f"mean/std have {len(spec.mean)} values but the inputs have "
                                f"{x.shape[1] if x.ndim > 1 else 0} channels (shape {list(x.shape[1:])})", where=where,
                                fix="give one mean and one std value per channel")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, std = (np.asarray(v, dtype=np.float32).reshape(shape) for v in (spec.mean, spec.std))
    return ((x - mean) / std).astype(np.float32)


def _unlabeled(name: str, x: np.ndarray, spec: DataSpec, where: str, test: np.ndarray | None = None) -> Task:
    """An unlabeled task: train (calibration) / val / test inputs that never overlap."""
    index = np.zeros(len(x), dtype=np.int64)  # _split splits (inputs, labels) pairs; these labels are dummies
    if test is None:
        splits = _three_way((x, index), spec, where, stratify=False)
    else:
        train, val = _split((x, index), spec.val_fraction, spec.seed, where, stratify=False)
        splits = (train, val, (test, None))
    train, val, test_ = (TensorDataset(torch.tensor(np.ascontiguousarray(s[0]), dtype=torch.float32)) for s in splits)
    return UnlabeledTask(name, train, val, test_, tuple(x.shape[1:]), spec.num_classes)

def _read_image(file: Path, mode: str, size: tuple[int, int]) -> tuple[np.ndarray | None, tuple[int, int] | None]:
    """The image resized to ``size`` (W, H) in [0, 1], [C, H, W], and its own size; (None, None) if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            own = image.size
            pixels = np.asarray(image.convert(mode).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError):
        return None, None
    return (pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)), own


def _read_images(files: list[Path], mode: str, size: tuple[int, int], root: Path) -> tuple[np.ndarray, list[Path]]:
    """The readable images of ``files`` stacked, and the files kept. Unreadable files are skipped and listed in a
    warning (an error when none is readable); images of another size are resized, which a warning says."""
    read = [(f, *_read_image(f, mode, size)) for f in files]
    bad = [f.name for f, pixels, _ in read if pixels is None]
    kept = [(f, pixels, own) for f, pixels, own in read if pixels is not None]
    if not kept:
        raise EdgeCompressError(f"none of the {len(files)} image files can be read (e.g. {bad[0]})", where=str(root),
                                fix="put readable images (PNG, JPEG, ...) into the folder")
    if bad:
        listed = ", ".join(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
        warnings.warn(f"data ({root}): skipped {len(bad)} unreadable image file(s): {listed}", stacklevel=3)
    resized = sorted({own for _, _, own in kept if own != size})
    if resized:
        warnings.warn(f"data ({root}): {sum(own != size for _, _, own in kept)} of {len(kept)} images resized to "
                      f"{size[0]}x{size[1]} (data.input_shape) from other sizes, e.g. "
                      f"{', '.join(f'{w}x{h}' for w, h in resized[:3])}", stacklevel=3)
    return np.stack([pixels for _, pixels, _ in kept]), [f for f, _, _ in kept]


@register_dataset("folder")
def folder(spec: FolderData) -> Task:
    """Images in ``path/<class name>/<image>`` (labelled) or directly in ``path`` (unlabeled), resized to
    ``input_shape``, scaled to [0, 1] and normalized; labelled data is split stratified by class.

    Classes are the subfolder names in sorted order (label 0 is the first).
    """
    root = spec.path
    layout = (f"one subfolder per class with images ({', '.join(sorted(IMAGE_SUFFIXES))}) inside: "
              f"{root}/<class>/<image>, or for unlabeled data the images directly in {root}")
    if not root.is_dir():
        raise EdgeCompressError("image folder not found", where=str(root), fix=f"point data.path at {layout}")
    c, h, w = spec.input_shape
    mode = "L" if c == 1 else "RGB"
    loose = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    classes = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
               for d in sorted(root.iterdir()) if d.is_dir()}
    classes = {name: files for name, files in classes.items() if files}
    labelled = spec.labels if spec.labels is not None else bool(classes) and not loose
    if not labelled:
        files = loose + [f for files in classes.values() for f in files]
        if not files:
            raise EdgeCompressError("no images found", where=str(root), fix=f"arrange the data as {layout}")
        x = _normalized(_read_images(files, mode, (w, h), root)[0], spec, str(root))
        return _unlabeled(f"folder:{root.name}", x, spec, f"data ({root})")
    if len(classes) < 2:
        raise EdgeCompressError(f"found {len(classes)} class subfolder(s) with images; classification needs at least 2",
                                where=str(root), fix=f"arrange the data as {layout}, or set labels: false")
    label = {f: i for i, files in enumerate(classes.values()) for f in files}
    x, kept = _read_images(list(label), mode, (w, h), root)
    y = np.array([label[f] for f in kept], dtype=np.int64)
    x = _normalized(x, spec, str(root))
    return _task(f"folder:{root.name}", _three_way((x, y), spec, f"data ({root})"), spec.num_classes or len(classes))


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


def _check_inputs(x: np.ndarray, key: str, where: str) -> None:
    if x.ndim < 2 or not len(x):
        raise EdgeCompressError(f"{key}: inputs must be [N, ...] with N > 0, got shape {list(x.shape)}", where=where,
                                fix="save the inputs as one array with the samples along the first axis")


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


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    where = str(path)
    if path.suffix.lower() not in _READERS:
        raise EdgeCompressError(f"unsupported tensors file type {path.suffix!r}", where=where,
                                fix=f"use one of {', '.join(_READERS)}")
    if not path.is_file():
        raise EdgeCompressError("tensors file not found", where=where, fix="check data.path")
    if path.stat().st_size == 0:
        raise EdgeCompressError("the tensors file is empty (0 bytes)", where=where,
                                fix="save the data again, e.g. np.savez(path, x=inputs, y=labels)")
    try:
        return _READERS[path.suffix.lower()](path)
    except EdgeCompressError:
        raise
    except Exception as err:  # each reader has its own error types; all mean "not a readable tensors file"
        raise EdgeCompressError(f"cannot read the file ({type(err).__name__}: {err})", where=where,
                                fix="save plain arrays/tensors under the keys x and y") from err


def _prepared(x: np.ndarray, spec: TensorsData, key: str, where: str) -> np.ndarray:
    """Reshaped, resized and normalized inputs."""
    if spec.input_shape:
        x = _reshaped(x, spec.input_shape, key, where)
    if spec.resize:
        if x.ndim != 4:
            raise EdgeCompressError(f"{key}: resize needs image inputs [N, C, H, W], got {list(x.shape)}", where=where,
                                    fix="remove data.resize, or set data.input_shape to [C, H, W]")
        x = torch.nn.functional.interpolate(torch.from_numpy(x.astype(np.float32)), size=spec.resize,
                                            mode="bilinear", align_corners=False).numpy()
    return _normalized(x.astype(np.float32), spec, where)


@register_dataset("tensors")
def tensors(spec: TensorsData) -> Task:
    """Inputs ``x`` and integer labels ``y`` (optionally ``x_test``, ``y_test``) from a .npz, .safetensors or .pt
    file; without ``y`` (or with ``labels: false``) the inputs alone, as unlabeled data.

    Without a test split the data is split by the fractions; with one, val is carved from ``x``.
    """
    path, where = spec.path, str(spec.path)
    data = _read_tensors(path)
    labelled = spec.labels if spec.labels is not None else "y" in data
    has_test = "x_test" in data if not labelled else bool({"x_test", "y_test"} & set(data))
    wanted = ["x"] + (["x_test"] if has_test else [])
    wanted = [k for key in wanted for k in ((key, key.replace("x", "y", 1)) if labelled else (key,))]
    missing = [key for key in wanted if key not in data]
    if missing:
        raise EdgeCompressError(f"missing key(s) {missing}; the file has {sorted(data)}", where=where,
                                fix="store inputs as 'x' and integer labels as 'y' (optionally 'x_test' and 'y_test'), "
                                    "by name: np.savez(path, x=inputs, y=labels); for unlabeled data, 'x' alone")
    if not labelled:
        for key in wanted:
            _check_inputs(data[key], key, where)
        test = _prepared(data["x_test"], spec, "x_test", where) if has_test else None
        return _unlabeled(f"tensors:{path.name}", _prepared(data["x"], spec, "x", where), spec, where, test)
    keys = [("x", "y"), ("x_test", "y_test")][: len(wanted) // 2]
    for x_key, y_key in keys:
        _check_labeled(data[x_key], data[y_key], f"{x_key}/{y_key}", where)
    pairs = [(_prepared(data[x_key], spec, x_key, where), data[y_key]) for x_key, y_key in keys]
    top = max(int(y.max()) for _, y in pairs) + 1
    if len(pairs) == 2:
        train, val = _split(pairs[0], spec.val_fraction, spec.seed, where)
        splits = (train, val, pairs[1])
    else:
        splits = _three_way(pairs[0], spec, where)
    return _task(f"tensors:{path.name}", splits, spec.num_classes or top)
