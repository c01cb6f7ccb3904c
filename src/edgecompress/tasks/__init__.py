"""Tasks: what a model does and how it is judged (see :mod:`edgecompress.tasks.base` for the contract)."""

from edgecompress.tasks.base import Predict, Task, torch_predictor
from edgecompress.tasks.classification import ClassificationTask
from edgecompress.tasks.unlabeled import UnlabeledTask

__all__ = ["ClassificationTask", "Predict", "Task", "UnlabeledTask", "torch_predictor"]
