"""The photos dataset (unlabeled crops of shipped photos) and unlabeled image folders with bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgecompress.data import data_spec, load_task
from edgecompress.errors import EdgeCompressError
from edgecompress.tasks import UnlabeledTask


def test_photos_are_unlabeled_crops_from_disjoint_photos():
    pytest.importorskip("skimage")
    task = load_task(data_spec(dataset="photos", input_shape=[3, 48, 48], crops=[20, 4, 10], num_classes=1000))
    assert isinstance(task, UnlabeledTask) and task.num_classes == 1000
    assert [len(task.split(s)) for s in ("train", "val", "test")] == [20, 4, 10]
    assert task.split("train").tensors[0].shape == (20, 3, 48, 48)
    names = [set(task.photos[s]) for s in ("train", "val", "test")]
    assert len(set.union(*names)) == sum(map(len, names)) >= 15  # no photo in two splits
    x = task.split("test").tensors[0]
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and len({float(c.std()) for c in x}) == len(x)
    again = load_task(data_spec(dataset="photos", input_shape=[3, 48, 48], crops=[20, 4, 10]))
    assert (again.split("train").tensors[0] == task.split("train").tensors[0]).all()  # seeded


def test_photos_options_are_checked():
    with pytest.raises(ValueError, match="scale"):
        data_spec(dataset="photos", scale=[0.5, 0.2])
    with pytest.raises(ValueError, match="mean"):
        data_spec(dataset="photos", mean=[0.5, 0.5, 0.5])


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        task = load_task(data_spec(dataset="folder", path=tmp_path, input_shape=[3, 16, 16]))
    messages = " ".join(str(w.message) for w in caught)
    assert "skipped 2 unreadable" in messages and "broken.jpg" in messages and "empty.png" in messages
    assert "30 of 30 images resized to 16x16" in messages and "30x40" in messages
    assert sum(len(task.split(s)) for s in ("train", "val", "test")) == 30


def test_folder_of_only_unreadable_files_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(EdgeCompressError, match="none of the 1 image files can be read"):
        load_task(data_spec(dataset="folder", path=tmp_path, input_shape=[3, 16, 16]))
