"""Pruning stages: ``prune.magnitude`` (unstructured zeros) and ``prune.structured`` (channels physically
removed), plus :func:`edgecompress.prune.analysis.prunability`. Importing this package registers the stages."""

from edgecompress.prune import magnitude, structured  # noqa: F401
from edgecompress.prune import lottery, pai, reconvene, shifter  # noqa: F401,E402  (composite pruning, issue 4)
from edgecompress.prune import ice, iterative  # noqa: F401,E402  (ICE-Pruning, issue 3)
