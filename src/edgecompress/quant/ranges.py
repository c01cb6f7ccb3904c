"""Per-tensor activation range choice for ``quant.ptq`` (``calibration: per_tensor``), in ONNX Runtime.

Each activation tensor that ONNX Runtime's quantizer quantizes gets candidate ranges from a 2,048-bin histogram of
its calibration values: min/max, the 99.9/99.99/99.999th percentiles (each side of a two-sided tensor), and
``mse``, the range (min/max shrunk by a factor) whose uint8/int8 grid has the least expected squared error on that
histogram. Which candidate a tensor keeps is decided by the error it causes at the model's output: in forward
order, each candidate's scale and zero point are written into the INT8 QDQ model (all other tensors as chosen so
far), and the one with the least output error against the FP32 model (per input, relative to the output's
norm, averaged), in ONNX Runtime on ``SEARCH_SAMPLES`` calibration inputs, is kept (greedy coordinate descent, one pass). The chosen ranges are then
handed to ``quantize_static`` as ``TensorQuantOverrides``, so the INT8 file carries them.

Written here because ONNX Runtime's calibrators choose one method for all tensors (and its percentile
calibrator is symmetric in |x|); no library picks a calibration per tensor by its effect on the output.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from edgecompress.quant.fallback import outputs
from edgecompress.runtimes.onnxruntime import session

BINS = 2048
PERCENTILES = (99.9, 99.99, 99.999)
SEARCH_SAMPLES = 32  # calibration inputs the output error of each candidate is measured on
SHRINK = np.linspace(0.1, 1.0, 46)  # ``mse``: factors each side of the min/max range is shrunk by
RENAMED_OUTPUT = "_QuantizeLinear_Input"  # suffix the quantizer gives a graph output it quantizes


def activation_quantizers(qdq: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Activation tensor (its name in the FP32 model) -> (scale, zero point) initializer names, in graph order."""
    initializers = {i.name for i in qdq.graph.initializer}
    found = {}
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in initializers:
            name = n.input[0].removesuffix(RENAMED_OUTPUT)
            found.setdefault(name, (n.input[1], n.input[2]))
    return found


def _with_outputs(model: onnx.ModelProto, tensors: list[str]) -> bytes:
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    present = {o.name for o in extra.graph.output}
    extra.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in present)
    return extra.SerializeToString()


def _batches(fp32: onnx.ModelProto, tensors: list[str], inputs: np.ndarray, batch: int = 8
             ) -> Iterator[dict[str, np.ndarray]]:
    run = session(_with_outputs(fp32, tensors), threads=1)
    name = run.get_inputs()[0].name
    for i in range(0, len(inputs), batch):
        yield dict(zip(tensors, run.run(tensors, {name: inputs[i:i + batch]})))


def histograms(fp32: onnx.ModelProto, tensors: list[str], inputs: np.ndarray) -> dict[str, tuple]:
    """tensor -> (min, max, counts of ``BINS`` equal bins over [min, max]) on ``inputs``: two passes."""
    lo = dict.fromkeys(tensors, np.inf)
    hi = dict.fromkeys(tensors, -np.inf)
    for values in _batches(fp32, tensors, inputs):
        for t, v in values.items():
            lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    counts = {t: np.zeros(BINS, np.int64) for t in tensors}
    for values in _batches(fp32, tensors, inputs):
        for t, v in values.items():
            width = max(hi[t] - lo[t], 1e-12)
            index = np.clip(((v.ravel() - lo[t]) * (BINS / width)).astype(np.int64), 0, BINS - 1)
            counts[t] += np.bincount(index, minlength=BINS)
    return {t: (lo[t], hi[t], counts[t]) for t in tensors}


def _least_mse_range(lo: float, hi: float, centers: np.ndarray, counts: np.ndarray, qmin: int, qmax: int,
                     symmetric: bool) -> tuple[float, float]:
    """The range (each side of [min(lo, 0), max(hi, 0)] shrunk by its own factor from ``SHRINK``; one factor if
    ``symmetric``) whose quantization grid has the least squared error over the histogram."""
    if symmetric:
        high = SHRINK * max(-lo, hi, 0.0)
        low = -high
    else:
        low, high = (a.ravel() for a in np.meshgrid(SHRINK * min(lo, 0.0), SHRINK * max(hi, 0.0), indexing="ij"))
    scale = np.maximum((high - low) / (qmax - qmin), 1e-12)[:, None]
    zero = 0.0 if symmetric else np.round(qmin - low[:, None] / scale)
    q = np.clip(np.round(centers / scale) + zero, qmin, qmax)
    errors = (counts * ((q - zero) * scale - centers) ** 2).sum(1)
    best = int(np.argmin(errors))
    return float(low[best]) if lo < 0 else lo, float(high[best])


def candidates(lo: float, hi: float, counts: np.ndarray, qmin: int, qmax: int, symmetric: bool
               ) -> dict[str, tuple[float, float]]:
    """Candidate ranges of one tensor from its histogram: minmax, pNN.NNN percentiles, mse."""
    edges = np.linspace(lo, hi, BINS + 1)
    cdf = np.cumsum(counts) / max(counts.sum(), 1)
    found = {"minmax": (lo, hi)}
    for p in PERCENTILES:
        top = float(edges[1:][np.searchsorted(cdf, p / 100)])
        bottom = float(edges[np.searchsorted(cdf, 1 - p / 100)])
        found[f"p{p:g}"] = (min(bottom, 0.0) if lo < 0 else lo, max(top, 0.0))
    found["mse"] = _least_mse_range(lo, hi, (edges[:-1] + edges[1:]) / 2, counts, qmin, qmax, symmetric)
    return found


def qparams(lo: float, hi: float, qmin: int, qmax: int, symmetric: bool) -> tuple[float, int]:
    """(scale, zero point) that ONNX Runtime's quantizer derives from the range [lo, hi]."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    zero, scale = compute_scale_zp(np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0)), np.int32(qmin),
                                   np.int32(qmax), symmetric)
    return float(scale), int(zero)


def per_input_error(out: np.ndarray, reference: np.ndarray) -> float:
    """Mean over samples of each output's squared error relative to its squared norm (every input counts the
    same, however large its outputs)."""
    axes = tuple(range(1, out.ndim))
    return float(np.mean(((out - reference) ** 2).sum(axes) / np.maximum((reference ** 2).sum(axes), 1e-30)))


def choose(qdq: onnx.ModelProto, options: dict[str, dict[str, tuple[float, int]]], inputs: np.ndarray,
           reference: np.ndarray) -> tuple[dict[str, str], dict]:
    """Greedy per-tensor choice among ``options`` (tensor -> label -> (scale, zero point); ``minmax`` first), in
    place on ``qdq``, by its relative output error on ``inputs``; returns tensor -> label and a report."""
    params = activation_quantizers(qdq)
    index = {init.name: i for i, init in enumerate(qdq.graph.initializer)}
    kinds = {name: numpy_helper.to_array(qdq.graph.initializer[index[params[name][1]]]).dtype for name in options}

    def write(tensor: str, scale: float, zero: int) -> None:
        s, z = params[tensor]
        qdq.graph.initializer[index[s]].CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), s))
        qdq.graph.initializer[index[z]].CopyFrom(numpy_helper.from_array(np.array(zero, kinds[tensor]), z))

    def error() -> float:
        return per_input_error(outputs(qdq, inputs), reference)

    chosen, best = {}, error()
    start = best
    for tensor, ranges in options.items():
        current = qparams_of(qdq, params[tensor], index)
        chosen[tensor] = "minmax"
        tried = {current}
        for label, (scale, zero) in ranges.items():
            if (scale, zero) in tried:
                continue
            tried.add((scale, zero))
            write(tensor, scale, zero)
            e = error()
            if e < best:
                best, chosen[tensor], current = e, label, (scale, zero)
            write(tensor, *current)
    return chosen, {"output_error_minmax": start, "output_error_chosen": best}


def qparams_of(qdq: onnx.ModelProto, names: tuple[str, str], index: dict[str, int]) -> tuple[float, int]:
    s, z = (numpy_helper.to_array(qdq.graph.initializer[index[n]]) for n in names)
    return float(s), int(z)


def per_tensor_ranges(fp32_path: str, qdq_path: str, calib: np.ndarray, qmin: int, qmax: int, symmetric: bool
                      ) -> tuple[dict[str, list[dict]], dict]:
    """Choose each activation tensor's range of the min/max-calibrated QDQ model at ``qdq_path``; returns
    ``TensorQuantOverrides`` for the tensors whose choice is not min/max, and a report (choice, range, scale per
    tensor; output error with min/max and with the choice)."""
    fp32, qdq = onnx.load(fp32_path), onnx.load(qdq_path)
    tensors = list(activation_quantizers(qdq))
    stats = histograms(fp32, tensors, calib)
    ranges = {t: candidates(*stats[t], qmin, qmax, symmetric) for t in tensors}
    options = {t: {label: qparams(*r, qmin, qmax, symmetric) for label, r in rs.items()} for t, rs in ranges.items()}
    search = calib[:SEARCH_SAMPLES]
    chosen, report = choose(qdq, options, search, outputs(fp32, search))
    overrides = {t: [{"rmin": np.float32(ranges[t][c][0]), "rmax": np.float32(ranges[t][c][1])}]
                 for t, c in chosen.items() if c != "minmax"}
    tensors_report = {t: {"choice": c, "range": [float(v) for v in ranges[t][c]], "scale": options[t][c][0]}
                      for t, c in chosen.items()}
    return overrides, {**report, "tensors": tensors_report, "search_samples": len(search),
                       "candidates": ["minmax", *(f"p{p:g}" for p in PERCENTILES), "mse"],
                       "criterion": "mean per-input relative squared output error vs the FP32 model, INT8 QDQ model in ONNX Runtime"}
