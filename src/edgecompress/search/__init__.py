"""Search over compression settings and architectures (Optuna studies): ``edgecompress tune`` (the recipe's
``search:`` section, accuracy-aware, studies shared through SQLite or PostgreSQL) and ``search.nas`` (NSGA-II over a
space of CNNs, scored on accuracy and ONNX Runtime latency) with its latency model. Nothing is imported here, so the
CLI's ``tune`` command loads without torch; the registry imports ``search.nas`` to register the stage."""
