"""``photos``: unlabeled random resized crops of the natural photos that ship inside installed packages.

For judging an ImageNet-style model by agreement with itself, offline: scikit-image's sample photos (the
optional extra ``photos``), matplotlib's ``grace_hopper.jpg`` and scikit-learn's two sample images. The photos
are dealt to the train (calibration), val and test splits by a seeded shuffle, so crops of different splits never
share a photo. Each crop covers a random share (``scale``) of its photo's area with an aspect ratio in 3/4..4/3
(as torchvision's ``RandomResizedCrop``) and is resized to ``input_shape``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from edgecompress.data.datasets import register_dataset
from edgecompress.data.options import PhotosData
from edgecompress.data.user import _normalized
from edgecompress.errors import EdgeCompressError
from edgecompress.tasks import Task, UnlabeledTask

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png", "moon.png", "grass.png",
                  "gravel.png", "brick.png", "cell.png", "clock_motion.png")
SPLIT_SHARE = (0.6, 0.15, 0.25)  # photos dealt to train / val / test (at least one each)


@functools.lru_cache(maxsize=1)
def photo_files() -> tuple[Path, ...]:
    """The shipped photos, in a fixed order; needs scikit-image (the rest ship with required packages)."""
    import matplotlib
    import sklearn.datasets

    try:
        import skimage.data
    except ModuleNotFoundError:
        raise EdgeCompressError("the photos dataset needs scikit-image's sample photos, and scikit-image is not "
                                "installed", where="data.dataset: photos",
                                fix='pip install -e ".[photos]" (or pip install scikit-image)') from None
    skimage_dir = Path(skimage.data.__file__).parent
    files = [skimage_dir / name for name in SKIMAGE_PHOTOS]
    files.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    files += [Path(sklearn.datasets.__file__).parent / "images" / name for name in ("china.jpg", "flower.jpg")]
    return tuple(f for f in files if f.is_file())


def _crop_box(width: int, height: int, scale: tuple[float, float], gen: torch.Generator) -> tuple[int, int, int, int]:
    """A random (left, top, right, bottom) box: area share in ``scale``, aspect ratio in 3/4..4/3 (10 tries, then
    the largest centred square)."""
    area = width * height
    for _ in range(10):
        share = scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=gen))
        ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * float(torch.rand(1, generator=gen)))
        w, h = round(math.sqrt(area * share * ratio)), round(math.sqrt(area * share / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(width - w + 1, (1,), generator=gen))
            top = int(torch.randint(height - h + 1, (1,), generator=gen))
            return left, top, left + w, top + h
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2


def _crops(files: list[Path], count: int, spec: PhotosData, gen: torch.Generator) -> np.ndarray:
    """``count`` crops [count, C, H, W] in [0, 1], dealt over ``files`` in turn."""
    from PIL import Image

    c, h, w = spec.input_shape
    images = []
    for path in files:
        with Image.open(path) as image:
            images.append(image.convert("L" if c == 1 else "RGB"))
    out = np.empty((count, c, h, w), dtype=np.float32)
    for i in range(count):
        image = images[i % len(images)]
        crop = image.crop(_crop_box(*image.size, spec.scale, gen)).resize((w, h), Image.BILINEAR)
        pixels = np.asarray(crop, dtype=np.float32) / 255.0
        out[i] = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
    return out


@register_dataset("photos")
def photos(spec: PhotosData) -> Task:
    """Unlabeled crops of the shipped natural photos; train / val / test from disjoint photos (see the module)."""
    files = list(photo_files())
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(spec.seed)).tolist()
    n_val, n_test = (max(1, round(share * len(files))) for share in SPLIT_SHARE[1:])
    groups = [order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]]
    gen = torch.Generator().manual_seed(spec.seed)
    splits = [TensorDataset(torch.from_numpy(_normalized(_crops([files[i] for i in group], count, spec, gen),
                                                         spec, "data (photos)")))
              for group, count in zip(groups, spec.crops)]
    task = UnlabeledTask("photos", *splits, tuple(spec.input_shape), spec.num_classes)
    task.photos = {split: [files[i].name for i in group] for split, group in zip(("train", "val", "test"), groups)}
    return task
