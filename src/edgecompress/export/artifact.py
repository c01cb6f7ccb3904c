"""The deployable artifact: files on disk plus the runtime that runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]  # float32 input batch -> output (logits)

# runtime name -> factory(artifact, threads) -> Runner. Runtimes register themselves (export/runtimes.py).
RUNTIMES: dict[str, Callable[[Artifact, int], Runner]] = {}


@dataclass
class Artifact:
    """A model as it ships. ``path`` is the main file; ``extra_files`` every other file it needs
    (e.g. ONNX external data), so that ``size_bytes`` counts everything that must be deployed."""

    path: Path
    format: str  # "onnx" | "pytorch" | "executorch"
    runtime: str  # key of RUNTIMES: "onnxruntime" | "torch" | "executorch"
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
        from edgecompress.export import runtimes  # noqa: F401  (registers the built-in runtimes)

        return RUNTIMES[self.runtime](self, threads)

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
