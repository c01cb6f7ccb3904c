"""Pruning stages: ``prune.magnitude`` (unstructured zeros) and ``prune.structured`` (channels physically
removed), plus :func:`edgecompress.prune.analysis.prunability`. Importing this package registers the stages."""

from edgecompress.prune import magnitude, structured  # noqa: F401
