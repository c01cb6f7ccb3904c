"""ExecuTorch with the XNNPACK delegate, running ``.pte`` programs.

Export: ``torch.export`` with a dynamic batch dimension -> ``to_edge_transform_and_lower`` with the
``XnnpackPartitioner`` -> ``to_executorch`` -> the program buffer written atomically. The same lowering serves the
FP32 export and the INT8 program that ``quant.ptq`` builds (``lower_to_pte`` takes any exported program).

Dynamic batch: XNNPACK runs any batch, but ExecuTorch plans activation memory for an upper bound, so the
program holds a maximum batch (``max_batch``: the settings' batch, at least ``MIN_MAX_BATCH``) and the runner
splits larger inputs into chunks of it. The model is traced *at* that maximum: traced at a small batch,
torch's fake convolution guards ``batch < 16`` inside the XNNPACK channels-last pass and the planned upper
bound silently drops to 15 (any larger input then fails). Measured on mnist_cnn: dynamic and static programs
run batch 1 and batch 32 at the same latency, so nothing is lost by keeping the batch dynamic.

Token inputs (a dict ``input_ids``/``attention_mask``: a transformer, e.g. the all-MiniLM-L6-v2 encoder): traced as
:class:`edgecompress.llm.export._Tokens` (the encoder's last hidden state or the LM's logits, no KV cache) with
the length dynamic up to the model's ``max_position_embeddings`` and the batch up to ``export.batch`` (not
``MIN_MAX_BATCH``: attention's activations grow with batch x length^2, and ExecuTorch plans memory for the
largest; measured on all-MiniLM-L6-v2, a 64-token sentence peaked at 1651 MB with batch 32 x 512 tokens planned,
141 MB with batch 1); the runner and the benchmark feed both arrays as int64, larger batches in chunks. Pipelines
still export token models to ONNX only.

Runtime: ``executorch.runtime.Runtime.get().load_program(path).load_method("forward")``, after a check of the
file identifier (the runtime can abort the process on a file without it); ``validate``, which checks a file given
on the command line, loads it in a child process, so that a damaged program aborts only the child. Threads: the
only control the Python runtime exposes is the process-wide ``_unsafe_reset_threadpool``, and it segfaults the next
``execute`` in a process that has lowered a program (measured: reset to 1 thread after an export). So the
thread count is honoured where latency is timed, in the fresh benchmark process (``bench``); the in-process
runner (used for accuracy) leaves the pool at ExecuTorch's default (one thread per core).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.noise import native_stderr_filtered
from edgecompress.runtimes.artifact import Artifact, Runner
from edgecompress.runtimes.base import Runtime, exit_reason, register

if TYPE_CHECKING:
    import torch

    from edgecompress.settings import ExportSettings

MIN_MAX_BATCH = 32
_NOT_KERNELS = {"getitem", "sym_size"}  # graph bookkeeping, not ops a kernel runs
PTE_IDENTIFIER = b"ET12"  # the flatbuffer file_identifier of executorch/schema/program.fbs, at bytes 4..8

# validate's trial load, run in a child process: prints the forward method's input sizes
_TRIAL_LOAD = """
import json, sys
from executorch.runtime import Runtime
program = Runtime.get().load_program(sys.argv[1])
print(json.dumps(list(program.load_method("forward").metadata.input_tensor_meta(0).sizes())))
"""


def max_batch(settings: ExportSettings) -> int:
    """The largest batch the program accepts in one call (the runner chunks anything larger)."""
    return max(settings.batch, MIN_MAX_BATCH)


def trace(module: torch.nn.Module, example: torch.Tensor, batch: int) -> torch.export.ExportedProgram:
    """``torch.export`` with batch dimension 1..``batch``, traced at ``batch`` (see the module docstring)."""
    import torch

    # contiguous strides: a channels-last-looking example (C=1 slices can have them) would make the program NHWC
    x = example[:1].expand(batch, *example.shape[1:]).clone(memory_format=torch.contiguous_format)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=batch)},)
    with torch.no_grad():
        return torch.export.export(module, (x,), dynamic_shapes=dynamic)


def trace_tokens(model: torch.nn.Module, example: dict[str, torch.Tensor], batch: int
                 ) -> torch.export.ExportedProgram:
    """``torch.export`` of a transformer on ``input_ids``/``attention_mask``: batch 1..``batch`` (traced at
    ``batch``, see the module docstring; 1 is a static batch) and length 2..``max_position_embeddings``."""
    import torch

    from edgecompress.llm.export import _Tokens

    args = tuple(example[k][:1].expand(batch, -1).contiguous() for k in ("input_ids", "attention_mask"))
    dims = {1: torch.export.Dim("length", min=2, max=model.config.max_position_embeddings)}
    if batch > 1:
        dims[0] = torch.export.Dim("batch", min=1, max=batch)
    with torch.no_grad():
        return torch.export.export(_Tokens(model).eval(), args, dynamic_shapes=(dims, dims))


def lower_to_pte(program: torch.export.ExportedProgram, path: Path, precision: str) -> Artifact:
    """Lower an exported program to XNNPACK, write ``path`` atomically, and return the artifact.

    ``artifact.details`` says how many graph nodes XNNPACK runs and which ops were left to ExecuTorch's
    portable kernels.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        info = get_delegation_info(edge.exported_program().graph_module)
        buffer = edge.to_executorch().buffer
    portable = Counter({op.removeprefix("aten_").removesuffix("_default"): row.non_delegated
                        for op, row in info.delegation_by_operator.items()
                        if row.non_delegated and op not in _NOT_KERNELS})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer)
    tmp.replace(path)
    details = {"xnnpack_subgraphs": info.num_delegated_subgraphs, "xnnpack_nodes": info.num_delegated_nodes,
               "portable_ops": dict(portable)}
    return Artifact(path, "executorch", "executorch", precision, details=details)


def export(model: torch.nn.Module, example_inputs: torch.Tensor, out_dir: Path, settings: ExportSettings,
           name: str) -> Artifact:
    """FP32 ``name.pte``: XNNPACK-delegated ExecuTorch program with a dynamic batch up to ``max_batch`` (token
    inputs: :func:`trace_tokens`, up to ``settings.batch``)."""
    model = copy.deepcopy(model).eval()
    if isinstance(example_inputs, dict):
        artifact = lower_to_pte(trace_tokens(model, example_inputs, settings.batch),
                                Path(out_dir) / f"{name}.pte", "fp32")
        artifact.details["inputs"] = list(example_inputs)
        return artifact
    return lower_to_pte(trace(model, example_inputs, max_batch(settings)), Path(out_dir) / f"{name}.pte", "fp32")


def check_pte_header(path: Path) -> None:
    """Raise unless ``path`` carries the ExecuTorch program identifier. On a file without it the runtime logs the
    bytes it found, and bytes that are not UTF-8 end in an uncaught C++ exception that aborts the process."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != PTE_IDENTIFIER:
        raise _bad_pte(path, f"not a .pte file: bytes 4..8 are {head[4:8]!r}, not {PTE_IDENTIFIER!r} (the file has "
                             f"{Path(path).stat().st_size} bytes)")


def _bad_pte(path: Path, why: str) -> EdgeCompressError:
    return EdgeCompressError(f"cannot load the ExecuTorch program: {why}", where=str(path),
                             fix="the file is damaged or not a .pte program: export the model again")


def validate(path: Path) -> tuple[Artifact, tuple[int, ...]]:
    """The file as an FP32-labelled artifact, and its per-sample input shape (from the method's metadata).

    The program is loaded in a child process, so a file that makes the runtime abort ends only the child.
    """
    check_pte_header(path)
    proc = subprocess.run([sys.executable, "-c", _TRIAL_LOAD, str(path)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise _bad_pte(path, exit_reason(proc))
    sizes = json.loads(proc.stdout.splitlines()[-1])
    return Artifact(Path(path), "executorch", "executorch"), tuple(sizes[1:])


def _load(path: Path):
    """(program, forward method) of a ``.pte`` file; the method is only valid while the program lives."""
    from executorch.runtime import Runtime as ExecuTorch

    if not Path(path).is_file():
        raise EdgeCompressError("executorch artifact file not found", where=str(path),
                                fix="export the model again (export.format: executorch)")
    check_pte_header(path)
    _start_threadpool()
    try:
        program = ExecuTorch.get().load_program(Path(path))
        return program, program.load_method("forward")
    except Exception as err:  # the pybindings raise RuntimeError / ValueError with ExecuTorch error codes
        raise _bad_pte(path, f"{type(err).__name__}: {err}") from err


def _start_threadpool() -> None:
    """Create ExecuTorch's thread pool now (it is made once per process), with its CPU-probing chatter filtered."""
    from executorch.extension.pybindings import portable_lib

    with native_stderr_filtered():
        portable_lib._threadpool_get_thread_count()


def runner(artifact: Artifact, threads: int) -> Runner:
    """The ``forward`` method; inputs above the program's batch run in chunks. ``threads`` is not applied here
    (see the module docstring): ``bench`` applies it."""
    program, method = _load(artifact.path)
    limit = method.metadata.input_tensor_meta(0).sizes()[0]

    def run(x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        _ = program  # the method needs its program alive
        return np.concatenate([method.execute(chunk)[0].numpy() for chunk in _chunks(x, limit)])

    return run


def _chunks(x: np.ndarray | dict[str, np.ndarray], limit: int) -> list[tuple]:
    """The method's input tuples for a batch (float32 array, or token ids and mask as int64), ``limit`` rows each."""
    import torch

    if isinstance(x, dict):
        ids, mask = (torch.from_numpy(np.ascontiguousarray(x[k], dtype=np.int64)) for k in ("input_ids",
                                                                                            "attention_mask"))
        return list(zip(ids.split(limit), mask.split(limit)))
    return [(chunk.contiguous(),) for chunk in torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).split(limit)]


def bench(path: str, threads: int, shared: bool = False) -> Callable[[], Runner]:
    """The benchmark worker's entry: the XNNPACK thread pool at ``threads``, inputs above the program's batch in
    chunks (ExecuTorch's Python runtime needs torch). ``shared`` changes nothing: the pool is one per process."""
    import torch  # noqa: F401  (imported before the worker's memory baseline)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime as ExecuTorch

    def load() -> Runner:
        portable_lib._unsafe_reset_threadpool(threads)
        program = ExecuTorch.get().load_program(path)
        method = program.load_method("forward")
        limit = method.metadata.input_tensor_meta(0).sizes()[0]

        def run(x: np.ndarray | dict[str, np.ndarray]) -> list:
            _ = program  # the method needs its program alive
            return [method.execute(chunk) for chunk in _chunks(x, limit)]

        return run

    return load


register(Runtime("executorch", "executorch", "ExecuTorch", (".pte",), export, validate, runner, bench, compared=True,
                 order=1, channel_multiple=lambda lanes: max(8, lanes)))  # XNNPACK tiles >= 8 output channels
