"""Architecture search: ``search.nas`` (NSGA-II over a space of CNNs, scored on accuracy and ONNX Runtime latency)
and the latency model it ranks candidates with. Importing this package registers the stage."""

from edgecompress.search import nas  # noqa: F401
