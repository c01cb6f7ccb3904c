"""Dynamic inference: ``dynamic.early_exit`` (exit heads, calibrated confidence thresholds, deployed as ONNX
segments that stop at the first confident exit). Importing this package registers it."""

from edgecompress.dynamic import early_exit  # noqa: F401
