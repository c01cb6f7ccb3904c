"""Search over compression settings and architectures (Optuna studies). ``search.nas`` (NSGA-II over a space of
CNNs, scored on accuracy and ONNX Runtime latency) and its latency model live here; importing this package
registers the stage."""

from edgecompress.search import nas  # noqa: F401
