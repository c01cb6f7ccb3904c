"""Tasks: what a model does and how it is judged (see :mod:`edgecompress.tasks.base` for the contract)."""

from edgecompress.tasks.base import Predict, Task, call, torch_predictor
from edgecompress.tasks.classification import ClassificationTask
from edgecompress.tasks.embedding import EmbeddingTask
from edgecompress.tasks.lm import CausalLMTask
from edgecompress.tasks.unlabeled import UnlabeledTask

__all__ = ["CausalLMTask", "ClassificationTask", "EmbeddingTask", "Predict", "Task", "UnlabeledTask", "call",
           "torch_predictor"]
