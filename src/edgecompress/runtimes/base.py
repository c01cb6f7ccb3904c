"""What a runtime is (:class:`Runtime`), the registry that holds them, and :func:`export`, which writes a model in
the format the export settings name with the runtime registered for it.

No module of this package imports torch at module level: the benchmark worker imports a runtime's module in a
fresh process that should pay for torch only when the runtime needs it.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgecompress.errors import EdgeCompressError

if TYPE_CHECKING:
    import torch

    from edgecompress.runtimes.artifact import Artifact, Runner
    from edgecompress.settings import ExportSettings


@dataclass(frozen=True)
class Runtime:
    """One deployment runtime and everything the toolkit does with it.

    export(model, example_inputs, out_dir, settings, name): writes ``name`` + suffix into ``out_dir`` atomically
    and returns the artifact. validate(path): checks a file (a damaged one raises an EdgeCompressError and never
    aborts the process) and returns it as an artifact with its per-sample input shape (``()`` when the file does
    not record one). runner(artifact, threads): the artifact loaded in this process (accuracy). bench(path,
    threads, shared): the benchmark worker's entry: imports the runtime and returns ``load()``, which loads the model
    and returns the runner that is timed; ``shared`` says other models are timed in turns in the same process; a
    module-level function, which the worker imports by name.
    channel_multiple(lanes): the multiple of channels its convolutions and matrix products run fastest with on a
    CPU with ``lanes`` float32 lanes per vector register (structured pruning rounds channel counts to it).
    """

    name: str  # Artifact.runtime and export.runtime, e.g. "onnxruntime"
    format: str  # Artifact.format and export.format, e.g. "onnx"
    label: str  # how messages name it, e.g. "ONNX Runtime"
    suffixes: tuple[str, ...]  # of the files it runs, e.g. (".onnx",)
    export: Callable[[torch.nn.Module, torch.Tensor, Path, ExportSettings, str], Artifact]
    validate: Callable[[Path], tuple[Artifact, tuple[int, ...]]]
    runner: Callable[[Artifact, int], Runner]
    bench: Callable[[str, int, bool], Callable[[], Runner]]
    compared: bool = False  # a candidate of `export.format: fastest`, and a row of `bench RUN_DIR`
    order: int = 100  # where it is listed (messages, settings, comparisons): lower first
    # the channel multiple its fast kernels want, given the CPU's float32 lanes (prune.align, round_to: auto)
    channel_multiple: Callable[[int], int] = lambda lanes: lanes

    @property
    def bench_entry(self) -> str:
        """``module:function`` of ``bench``, for the benchmark worker."""
        return f"{self.bench.__module__}:{self.bench.__qualname__}"


REGISTRY: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Add ``runtime``; its name, format and suffixes must not be taken."""
    for other in REGISTRY.values():
        if other.name == runtime.name or other.format == runtime.format or set(other.suffixes) & set(runtime.suffixes):
            raise ValueError(f"runtime {runtime.name!r} clashes with the registered {other.name!r}")
    REGISTRY[runtime.name] = runtime
    return runtime


def all_runtimes() -> list[Runtime]:
    return sorted(REGISTRY.values(), key=lambda r: r.order)


def get(name: str) -> Runtime:
    if name not in REGISTRY:
        raise EdgeCompressError(f"unknown runtime {name!r}", where="runtime",
                                fix=f"use one of: {', '.join(r.name for r in all_runtimes())}")
    return REGISTRY[name]


def for_format(fmt: str) -> Runtime | None:
    return next((r for r in REGISTRY.values() if r.format == fmt), None)


def for_suffix(suffix: str) -> Runtime | None:
    return next((r for r in REGISTRY.values() if suffix in r.suffixes), None)


def export(model: torch.nn.Module, example_inputs: torch.Tensor, out_dir: Path, settings: ExportSettings,
           name: str = "model") -> Artifact:
    """Write ``model`` to ``out_dir`` in ``settings.format`` and return the artifact (the model is not modified).

    ``example_inputs`` is an input batch (any batch size) used for tracing.
    """
    runtime = for_format(settings.format)
    if runtime is None:
        raise EdgeCompressError(f"unknown export format {settings.format!r}", where="export.format",
                                fix=f"use one of: {', '.join(r.format for r in all_runtimes())}")
    if settings.runtime != runtime.name:
        raise EdgeCompressError(
            f"runtime {settings.runtime!r} cannot run the {settings.format!r} format", where="export.runtime",
            fix=f"set export.runtime to {runtime.name!r}, or choose the format that {settings.runtime!r} runs",
        )
    return runtime.export(model, example_inputs, Path(out_dir), settings, name)


def check_files(artifact: Artifact) -> None:
    """Raise if a file the artifact needs is missing."""
    for f in artifact.files:
        if not Path(f).is_file():
            raise EdgeCompressError(
                f"{artifact.format} artifact file not found", where=str(f),
                fix="export the model again, or point the artifact at the file that exists",
            )


def exit_reason(proc: subprocess.CompletedProcess) -> str:
    """Why a child process failed: the signal that killed it (a crash in native code), and its last error line."""
    last = (proc.stderr.strip().splitlines() or ["no error output"])[-1].strip()
    if proc.returncode < 0:
        return f"it crashed ({signal.strsignal(-proc.returncode) or f'signal {-proc.returncode}'}): {last}"
    return last
