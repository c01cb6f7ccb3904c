"""Data: the datasets that load into tasks (see :mod:`edgecompress.tasks`) and their recipe options."""

from edgecompress.data.datasets import DATASETS, load_task
from edgecompress.data.options import DataSpec, data_spec
from edgecompress.data import kws, photos, text, user  # noqa: F401,E402  (register the folder, tensors, photos, text, kws datasets)

__all__ = ["DATASETS", "DataSpec", "data_spec", "load_task"]
