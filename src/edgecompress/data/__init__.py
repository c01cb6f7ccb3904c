"""Data: tasks (splits, input shape, metrics) and the datasets that load into them."""

from edgecompress.data.datasets import DATASETS, DataSpec, load_task
from edgecompress.data.task import Task, torch_predictor

__all__ = ["DATASETS", "DataSpec", "Task", "load_task", "torch_predictor"]
