"""ONNX Runtime on the CPU, running ``.onnx`` files.

Export: the TorchScript exporter (dynamo=False): one self-contained file with a dynamic batch axis, outputs
matching PyTorch to ~1e-6 in ONNX Runtime. A model with token inputs (a dict ``input_ids``/``attention_mask``: a
transformer) goes through :func:`edgecompress.llm.export.export_onnx` instead (the dynamo exporter, batch and
length dynamic, at least opset 18), and its runner and benchmark feed dicts of int64 arrays. A file given on the command line is checked with ``onnx.checker``
first. Sessions: ``threads`` intra-op threads, one inter-op thread, sequential execution. :func:`generate` is the
greedy generation loop of a decoder exported with its KV cache.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.runtimes.artifact import Artifact, Runner
from edgecompress.runtimes.base import Runtime, check_files, register

if TYPE_CHECKING:
    import onnx
    import onnxruntime
    import torch

    from edgecompress.settings import ExportSettings

QUANTIZED_OPS = ("QuantizeLinear", "QLinearConv", "MatMulInteger", "ConvInteger")  # an INT8 model holds one


def export_onnx(model: torch.nn.Module, example_inputs: torch.Tensor, path: Path, opset: int = 17) -> Artifact:
    """Write ``model`` to ``path`` (atomically) with a dynamic batch axis; return the FP32 artifact."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example_inputs,), str(tmp), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    tmp.replace(path)
    return Artifact(path, "onnx", "onnxruntime", "fp32")


def export(model: torch.nn.Module, example_inputs: torch.Tensor, out_dir: Path, settings: ExportSettings,
           name: str) -> Artifact:
    """FP32 ONNX file ``name.onnx`` (opset from the settings, dynamic batch axis; token inputs: see the module
    docstring)."""
    if isinstance(example_inputs, dict):
        from edgecompress.llm.export import export_onnx as export_tokens

        path = out_dir / f"{name}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        export_tokens(model.eval(), example_inputs, path, opset=max(settings.opset, 18))
        return Artifact(path, "onnx", "onnxruntime", "fp32", details={"inputs": list(example_inputs)})
    return export_onnx(model, example_inputs, out_dir / f"{name}.onnx", settings.opset)


def load_onnx(path: Path) -> onnx.ModelProto:
    """The model in ``path`` (external data not loaded) once ``onnx.checker`` accepts the file; a damaged file or
    one that is not ONNX raises an EdgeCompressError."""
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: parses the file and finds external data next to it
    except onnx.checker.ValidationError as err:
        raise EdgeCompressError(f"not a valid ONNX model: {str(err).strip()}", where=str(path),
                                fix="the file is damaged or not an ONNX model: export the model again") from None
    proto = onnx.load(str(path), load_external_data=False)
    if not proto.graph.input:
        raise EdgeCompressError("the ONNX model has no inputs", where=str(path),
                                fix="export a model that takes an input tensor")
    return proto


def validate(path: Path) -> tuple[Artifact, tuple[int, ...]]:
    """The checked file as an artifact (INT8 when it holds quantized ops; its ``.data`` file when there is one)
    and the per-sample input shape it declares. A model with token inputs (int64 ``input_ids``) gets
    ``details["vocab_size"]``: the rows of the embedding table that ``input_ids`` index (2 when not found)."""
    proto = load_onnx(path)
    data = path.with_name(path.name + ".data")
    precision = "int8" if any(n.op_type in QUANTIZED_OPS for n in proto.graph.node) else "fp32"
    art = Artifact(path, "onnx", "onnxruntime", precision, [data] if data.exists() else [])
    first = proto.graph.input[0]
    if first.name == "input_ids" and first.type.tensor_type.elem_type == 7:  # INT64 token ids
        tables = {t.name: t.dims[0] for t in proto.graph.initializer if len(t.dims) == 2}
        rows = [tables[n.input[0]] for n in proto.graph.node
                if n.op_type == "Gather" and n.input[1:2] == ["input_ids"] and n.input[0] in tables]
        art.details = {"inputs": [i.name for i in proto.graph.input], "vocab_size": int(rows[0]) if rows else 2}
    return art, tuple(d.dim_value for d in first.type.tensor_type.shape.dim[1:])


_POOL: list[int] = []  # the thread count of this process's one global pool, once share_threads made it


def share_threads(threads: int) -> None:
    """Run every later session of this process on one global pool of ``threads`` intra-op threads. For a process
    that runs several sessions in turns (the benchmark worker, an early-exit model's segments): by default each
    session has its own threads, which spin on a core after each run waiting for more work, and take it from the
    session that runs next. Measured, 2 threads on 2 cores: three resnet18 sessions run one after another took 60
    ms where one session run three times took 20 ms; with one pool, 20 ms; and resnet18 without 5 of its 8 blocks
    timed in turns with the original measured 0.37 of its latency with per-session threads, 0.30-0.33 with one pool,
    as in two separate processes (0.29-0.31). ONNX Runtime makes the pool with its environment, so this must come
    before the process's first session."""
    import onnxruntime as ort

    if _POOL and _POOL[0] != threads:
        raise ValueError(f"this process's sessions already share a pool of {_POOL[0]} threads, not {threads}")
    if not _POOL:
        ort.capi._pybind_state.set_global_thread_pool_sizes(threads, 1)
        _POOL.append(threads)


def session(path: str | Path | bytes, threads: int, spin: bool = True) -> onnxruntime.InferenceSession:
    """A CPU session (of a file, or a serialized model): ``threads`` intra-op threads (the process's shared pool
    once :func:`share_threads` made one), one inter-op thread, sequential execution. ``spin=False`` where sessions
    of this process without a shared pool run in turns (see :func:`share_threads`): their threads then sleep
    between runs instead, which costs a small model's run time (resnet20 at batch 1: 0.8 ms instead of 0.45)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if _POOL:
        opts.use_per_session_threads = False
    else:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                providers=["CPUExecutionProvider"])


def runner(artifact: Artifact, threads: int) -> Runner:
    check_files(artifact)
    try:
        sess = session(artifact.path, threads)
    except Exception as err:  # onnxruntime raises its own pybind exception types
        raise EdgeCompressError(
            f"cannot load the {artifact.format} artifact in {artifact.runtime}: {type(err).__name__}: {err}",
            where=str(artifact.path), fix="the file is corrupt or not of this format: export the model again",
        ) from err
    input_name = sess.get_inputs()[0].name

    def run(x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        if isinstance(x, dict):  # token inputs: ids and mask by name, as int64
            return sess.run(None, {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in x.items()})[0]
        return sess.run(None, {input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


def generate(sess: onnxruntime.InferenceSession, prompt: Sequence[int] | np.ndarray, new_tokens: int,
             forced: Sequence[int] | None = None) -> tuple[list[int], np.ndarray]:
    """Greedy generation with a decoder exported with its KV cache
    (:func:`edgecompress.llm.export.export_decoder`): the prompt in one call on an empty cache (the prefill),
    then one call per further token, each call's output cache fed back as the next call's input. Returns the
    ``new_tokens`` greedy choices and the logits each was chosen from, ``[new_tokens, vocabulary]``. With
    ``forced`` (a continuation to score), its tokens are fed instead of the greedy choices."""
    caches = [i for i in sess.get_inputs() if i.name.startswith("input.")]
    if not caches or {"input_ids", "position_ids"} - {i.name for i in sess.get_inputs()}:
        raise EdgeCompressError("the ONNX model has no KV-cache inputs (input_ids, position_ids, input.cache...)",
                                where="generate", fix="export the decoder with edgecompress.llm.export."
                                                      "export_decoder")
    outputs = [o.name for o in sess.get_outputs()]
    feed = {i.name: np.zeros([d if isinstance(d, int) else 0 for d in i.shape], np.float32) for i in caches}
    ids, start, tokens, logits = np.asarray(prompt, np.int64).reshape(1, -1), 0, [], []
    for _ in range(new_tokens):
        out = sess.run(outputs, {**feed, "input_ids": ids, "position_ids": np.arange(start, start + ids.shape[1])[None]})
        feed = {"input." + name.removeprefix("output."): value for name, value in zip(outputs[1:], out[1:])}
        start += ids.shape[1]
        logits.append(out[0][0, -1])
        tokens.append(int(logits[-1].argmax()))
        ids = np.array([[tokens[-1] if forced is None else forced[len(tokens) - 1]]], np.int64)
    return tokens, np.stack(logits)


def bench(path: str, threads: int, shared: bool = False) -> Callable[[], Runner]:
    """The benchmark worker's entry: ONNX Runtime imported now (no torch), the session made by ``load()``;
    ``shared``: other sessions are timed in turns in the same process, so all run on one pool
    (:func:`share_threads`)."""
    import onnxruntime  # noqa: F401  (imported before the worker's memory baseline)

    if shared:
        share_threads(threads)

    def load() -> Runner:
        sess = session(path, threads)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, x if isinstance(x, dict) else {name: x})[0]

    return load


register(Runtime("onnxruntime", "onnx", "ONNX Runtime", (".onnx",), export, validate, runner, bench, compared=True,
                 order=0))
