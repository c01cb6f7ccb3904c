"""Datasets: shapes, classes, disjoint stratified splits, user folders and tensor files, spec errors."""

from __future__ import annotations

import socket
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from edgecompress.data import DATASETS, data_spec, datasets, load_task
from edgecompress.data.options import DATA_OPTIONS
from edgecompress.recipe import parse_recipe
from edgecompress.tasks import ClassificationTask
from edgecompress.errors import EdgeCompressError


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def rows(x: torch.Tensor) -> Counter:
    return Counter(row.tobytes() for row in x.reshape(len(x), -1).numpy())


def check_task(task: ClassificationTask, shape: tuple[int, ...], classes: int) -> None:
    """Shapes, dtypes, and every class present in every split."""
    assert task.input_shape == shape and task.num_classes == classes
    for split in (task.train, task.val, task.test):
        x, y = split.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.is_contiguous()
        assert tuple(x.shape[1:]) == shape and len(x) == len(y)
        assert set(y.tolist()) == set(range(classes))


def test_registry_covers_every_dataset_name():
    assert set(DATASETS) == set(DATA_OPTIONS)


def test_digits_is_a_stratified_partition():
    task = load_task(data_spec(dataset="digits", seed=1))
    check_task(task, (1, 8, 8), 10)
    x_all, y_all = datasets._digits_arrays()
    parts = [task.train, task.val, task.test]
    assert sum((rows(p.tensors[0]) for p in parts), Counter()) == rows(torch.from_numpy(x_all))  # disjoint, complete
    assert len(task.test) == pytest.approx(0.2 * len(y_all), abs=1)
    assert len(task.val) == pytest.approx(0.1 * len(y_all), abs=1)
    test_share = np.bincount(task.test.tensors[1].numpy()) / len(task.test)
    assert np.allclose(test_share, np.bincount(y_all) / len(y_all), atol=0.01)
    assert float(task.train.tensors[0].min()) >= 0 and float(task.train.tensors[0].max()) <= 1


def test_mnist5k_offline_fixed_split(no_network):
    datasets._mnist_arrays.cache_clear()  # really load it here, with the network blocked
    task = load_task(data_spec(dataset="mnist5k", test_fraction=0.5))  # fractions do not change mnist5k's split
    check_task(task, (1, 28, 28), 10)
    assert (len(task.train), len(task.val), len(task.test)) == (3500, 500, 1000)
    assert np.bincount(task.test.tensors[1].numpy()).tolist() == [100] * 10
    assert sum((rows(p.tensors[0]) for p in (task.train, task.val, task.test)), Counter()).most_common(1)[0][1] == 1
    assert abs(float(task.train.tensors[0].mean())) < 0.1  # normalised with MNIST's mean and std


def test_mnist1d_own_test_split(no_network):
    task = load_task(data_spec(dataset="mnist1d", val_fraction=0.25))
    check_task(task, (1, 40), 10)
    assert (len(task.train), len(task.val), len(task.test)) == (3000, 1000, 1000)
    assert not set(rows(task.train.tensors[0])) & set(rows(task.val.tensors[0]))


def test_synthetic_has_no_labels():
    task = load_task(data_spec(dataset="synthetic", input_shape=(3, 16, 16), num_classes=5, samples=100))
    assert task.input_shape == (3, 16, 16) and task.num_classes == 5 and not task.has_labels
    assert len(task.train) + len(task.val) + len(task.test) == 100
    assert task.evaluate(lambda x: np.zeros((len(x), 5), np.float32)) == {}


def write_image_folder(root, classes=("cat", "dog", "owl"), per_class=6):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "notes.txt").write_text("not a class")  # stray files are ignored


def test_folder(tmp_path):
    write_image_folder(tmp_path / "imgs")
    task = load_task(data_spec(dataset="folder", path=tmp_path / "imgs"))
    check_task(task, (3, 32, 32), 3)
    assert len(task.train) + len(task.val) + len(task.test) == 18
    gray = load_task(data_spec(dataset="folder", path=tmp_path / "imgs", input_shape=(1, 8, 8)))
    assert gray.input_shape == (1, 8, 8)
    assert 0 <= float(gray.test.tensors[0].min()) <= float(gray.test.tensors[0].max()) <= 1


def test_folder_errors(tmp_path):
    with pytest.raises(EdgeCompressError, match="not found"):
        load_task(data_spec(dataset="folder", path=tmp_path / "missing"))
    write_image_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(EdgeCompressError, match="at least 2") as err:
        load_task(data_spec(dataset="folder", path=tmp_path / "one"))
    assert str(tmp_path / "one") in str(err.value)
    write_image_folder(tmp_path / "bad", classes=("a", "b"))
    (tmp_path / "bad" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file.*broken.png"):  # skipped, listed
        load_task(data_spec(dataset="folder", path=tmp_path / "bad"))


def labelled(n=60, classes=3, shape=(2, 5)):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, *shape)).astype(np.float32), np.arange(n) % classes


def test_tensors_npz_split_by_fractions(tmp_path):
    x, y = labelled()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    task = load_task(data_spec(dataset="tensors", path=tmp_path / "d.npz"))
    check_task(task, (2, 5), 3)
    assert (len(task.train), len(task.val), len(task.test)) == (42, 6, 12)
    flat = load_task(data_spec(dataset="tensors", path=tmp_path / "d.npz", input_shape=(10,)))
    assert flat.input_shape == (10,)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_tensors_with_own_test_split(tmp_path, suffix):
    (x, y), (x_test, y_test) = labelled(), labelled(30)
    data = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
            {"x": x, "y": y, "x_test": x_test + 10, "y_test": y_test}.items()}
    path = tmp_path / f"d{suffix}"
    if suffix == ".pt":
        torch.save(data, path)
    else:
        from safetensors.torch import save_file

        save_file(data, str(path))
    task = load_task(data_spec(dataset="tensors", path=path, val_fraction=0.5))
    check_task(task, (2, 5), 3)
    assert torch.equal(task.test.tensors[0], data["x_test"]) and (len(task.train), len(task.val)) == (30, 30)


def test_tensors_errors(tmp_path):
    x, y = labelled()
    np.savez(tmp_path / "nolabels.npz", x=x, x_test=x)
    with pytest.raises(EdgeCompressError, match=r"missing key\(s\) \['y', 'y_test'\]") as err:
        load_task(data_spec(dataset="tensors", path=tmp_path / "nolabels.npz", labels=True))
    assert "nolabels.npz" in str(err.value)
    np.savez(tmp_path / "float.npz", x=x, y=y.astype(np.float32))
    with pytest.raises(EdgeCompressError, match="labels must be integers"):
        load_task(data_spec(dataset="tensors", path=tmp_path / "float.npz"))
    with pytest.raises(EdgeCompressError, match="not found"):
        load_task(data_spec(dataset="tensors", path=tmp_path / "missing.npz"))
    with pytest.raises(EdgeCompressError, match="unsupported"):
        load_task(data_spec(dataset="tensors", path=tmp_path / "d.csv"))
    torch.save({"x": torch.zeros(4, 2), "y": torch.zeros(4, dtype=torch.long), "meta": object()}, tmp_path / "obj.pt")
    with pytest.raises(EdgeCompressError, match="cannot read"):
        load_task(data_spec(dataset="tensors", path=tmp_path / "obj.pt"))  # weights_only refuses arbitrary objects
    np.savez(tmp_path / "few.npz", x=x[:4], y=np.array([0, 1, 2, 3]))
    with pytest.raises(EdgeCompressError, match="cannot split"):
        load_task(data_spec(dataset="tensors", path=tmp_path / "few.npz"))


@pytest.mark.parametrize("fields,message", [
    ({"dataset": "synthetic", "num_classes": 3}, "data.input_shape: Field required"),
    ({"dataset": "folder"}, "data.path: Field required"),
    ({"dataset": "tensors"}, "data.path: Field required"),
    ({"dataset": "digits", "path": "x.npz"}, "data.path: unknown key 'path'"),
    ({"dataset": "mnist5k", "samples": 100}, "data.samples: unknown key 'samples'"),
    ({"dataset": "folder", "path": "imgs", "input_shape": (2, 8, 8)}, "C 1 \\(grayscale\\) or 3"),
    ({"dataset": "folder", "path": "imgs", "mean": [0.5]}, "give both `mean` and `std`"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
    ({"dataset": "cifar10"}, "expected tags: 'digits'"),
    ({"datset": "digits"}, "did you mean 'dataset'"),
])
def test_spec_errors(fields, message):
    """Each dataset kind has its own options class: a key another kind reads is unknown here, by name."""
    with pytest.raises(EdgeCompressError, match=message):
        parse_recipe({"name": "t", "data": fields})


def test_spec_round_trips():
    spec = data_spec(dataset="synthetic", input_shape=(1, 8, 8), num_classes=4)
    assert data_spec(**spec.model_dump()) == spec
    assert data_spec(**data_spec().model_dump()) == data_spec()
