"""Accuracy recovery stages: ``finetune`` (optionally with distillation from the original model) and ``distill``
(train a smaller zoo student against the incoming model). Importing this package registers them."""

from edgecompress.recover import distill, finetune  # noqa: F401
from edgecompress.recover import bias, bn, kd, mimic, reconstruct  # noqa: F401  (label-free: recover.*)
