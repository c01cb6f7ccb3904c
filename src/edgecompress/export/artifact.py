"""``Artifact`` lives in :mod:`edgecompress.runtimes.artifact`; this import path is kept for the modules that use it."""

from edgecompress.runtimes.artifact import Artifact, Runner

__all__ = ["Artifact", "Runner"]
