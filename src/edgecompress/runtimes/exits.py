"""Early-exit models on ONNX Runtime: one ONNX file per backbone segment, driven by a small runner that stops each
sample at the first exit confident enough.

The artifact's main file, ``NAME.exits``, is JSON: ``{"segments": [file names], "thresholds": [...]}``. Segment
``k`` before the last takes the previous segment's output (the first: the model's input) and returns its
features and the exit's logits; the last returns the network's logits. A sample whose exit confidence (largest
softmax probability) reaches the exit's threshold leaves with that exit's logits; only the others run on.
Export needs a model with ``exit_heads`` (added by ``dynamic.early_exit``), which gives the segments.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecompress import atomic
from edgecompress.errors import EdgeCompressError
from edgecompress.runtimes.artifact import Artifact, Runner
from edgecompress.runtimes.base import Runtime, check_files, register
from edgecompress.runtimes.onnxruntime import session, share_threads

if TYPE_CHECKING:
    import torch

    from edgecompress.settings import ExportSettings

SUFFIX = ".exits"


def export(model: torch.nn.Module, example_inputs: torch.Tensor, out_dir: Path, settings: ExportSettings,
           name: str) -> Artifact:
    """``name.exits`` and ``name.segK.onnx`` for each segment (dynamic batch axis, the settings' opset)."""
    import torch

    heads = getattr(model, "exit_heads", None)
    if heads is None or not callable(getattr(heads, "segments", None)):
        raise EdgeCompressError("the early-exit format needs a model with exit heads", where="export.format",
                                fix="add a dynamic.early_exit stage, or export to another format")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts, files, x = heads.segments(model.eval()), [], example_inputs
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        names = ["logits"] if last else ["features", "logits"]
        path = out_dir / f"{name}.seg{k}.onnx"
        tmp = path.with_suffix(".onnx.tmp")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(part.eval(), (x,), str(tmp), dynamo=False, opset_version=settings.opset,
                              input_names=["input"], output_names=names,
                              dynamic_axes={n: {0: "batch"} for n in ["input", *names]})
            x = None if last else part(x)[0]
        tmp.replace(path)
        files.append(path)
    main = out_dir / f"{name}{SUFFIX}"
    atomic.write_text(main, json.dumps({"segments": [f.name for f in files], "thresholds": heads.thresholds}))
    return Artifact(main, "onnx_exits", "onnxruntime_exits", "fp32", files)


def _manifest(path: Path) -> tuple[list[Path], list[float]]:
    try:
        doc = json.loads(Path(path).read_text())
        files, thresholds = [Path(path).with_name(f) for f in doc["segments"]], [float(t) for t in doc["thresholds"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EdgeCompressError(f"not an early-exit manifest ({type(err).__name__}: {err})", where=str(path),
                                fix="export the model again with dynamic.early_exit") from None
    if len(thresholds) != len(files) - 1:
        raise EdgeCompressError(f"{len(files)} segments need {len(files) - 1} thresholds, the file has "
                                f"{len(thresholds)}", where=str(path), fix="export the model again")
    return files, thresholds


class ExitRunner:
    """Runs the segments in ONNX Runtime, each sample only up to its first confident exit."""

    def __init__(self, path: Path, threads: int):
        files, self.thresholds = _manifest(path)
        self.sessions = [session(f, threads, spin=False) for f in files]  # run in turns: see share_threads

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, index of the exit each sample left by; the last segment's index = the full network)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out, which = None, np.full(len(x), len(self.sessions) - 1)
        active, h = np.arange(len(x)), x
        for k, sess in enumerate(self.sessions):
            result = sess.run(None, {"input": h})
            logits = result[-1]
            if k == len(self.sessions) - 1:
                fire = np.ones(len(logits), dtype=bool)
            else:
                z = np.exp(logits - logits.max(1, keepdims=True))
                fire = (z.max(1) / z.sum(1)) >= self.thresholds[k]
            out = np.empty((len(x), logits.shape[1]), np.float32) if out is None else out
            out[active[fire]], which[active[fire]] = logits[fire], k
            active = active[~fire]
            if not len(active):
                break
            h = np.ascontiguousarray(result[0][~fire])
        return out, which

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)[0]


def validate(path: Path) -> tuple[Artifact, tuple[int, ...]]:
    files, _ = _manifest(path)
    art = Artifact(Path(path), "onnx_exits", "onnxruntime_exits", "fp32", files)
    check_files(art)
    import onnx

    first = onnx.load(str(files[0]), load_external_data=False).graph.input[0]
    return art, tuple(d.dim_value for d in first.type.tensor_type.shape.dim[1:])


def runner(artifact: Artifact, threads: int) -> Runner:
    check_files(artifact)
    return ExitRunner(artifact.path, threads)


def bench(path: str, threads: int, shared: bool = False) -> Callable[[], Runner]:
    """The benchmark worker's entry (ONNX Runtime, no torch): the sessions are made by ``load()``, on one thread
    pool for the worker process whether or not it is ``shared`` (the segments run in turns)."""
    import onnxruntime  # noqa: F401  (imported before the worker's memory baseline)

    share_threads(threads)

    return lambda: ExitRunner(Path(path), threads)


register(Runtime("onnxruntime_exits", "onnx_exits", "ONNX Runtime (early exit)", (SUFFIX,), export, validate, runner,
                 bench, order=50))
