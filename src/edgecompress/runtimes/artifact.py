"""The deployable artifact: files on disk plus the runtime that runs them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecompress.runtimes.base import get

Runner = Callable[[np.ndarray], np.ndarray]  # float32 input batch -> output (logits)


@dataclass
class Artifact:
    """A model as it ships. ``path`` is the main file; ``extra_files`` every other file it needs
    (e.g. ONNX external data), so that ``size_bytes`` counts everything that must be deployed."""

    path: Path
    format: str  # the runtime's format: "onnx" | "pytorch" | "executorch"
    runtime: str  # the registered runtime's name: "onnxruntime" | "torch" | "executorch"
    precision: str = "fp32"  # "fp32" | "int8" | ...
    extra_files: list[Path] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # what the exporter reports (e.g. ExecuTorch delegation counts)

    @property
    def files(self) -> list[Path]:
        return [self.path, *self.extra_files]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def runner(self, threads: int = 1) -> Runner:
        """The artifact loaded in its runtime, in this process."""
        return get(self.runtime).runner(self, threads)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "runtime": self.runtime,
            "precision": self.precision,
            "extra_files": [str(p) for p in self.extra_files],
            "details": self.details,
        }

    @classmethod
    def from_json(cls, d: dict) -> Artifact:
        return cls(Path(d["path"]), d["format"], d["runtime"], d["precision"], [Path(p) for p in d["extra_files"]],
                   d.get("details", {}))
