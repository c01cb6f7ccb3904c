"""``quant.ptq``: static INT8 post-training quantization, realised in the deployable artifact.

Three backends, chosen by ``backend`` (``auto`` follows ``export.format``):

* **onnxruntime** (format ``onnx``): FP32 ONNX export, ``quant_pre_process`` (shape inference + graph
  optimisation), then ``quantize_static`` in QDQ format with a calibration data reader. The artifact is
  ``model_int8.onnx``, run by ONNX Runtime.
* **torchao** (format ``pytorch``): PT2E — ``torch.export`` -> ``prepare_pt2e`` with the X86 Inductor
  quantizer -> calibration -> ``convert_pt2e`` -> ``model_int8.pt2``, run by PyTorch. Loading that archive
  needs ``import torchao`` first (it registers the ``quantized_decomposed`` ops).
* **executorch** (format ``executorch``): PT2E with ExecuTorch's XNNPACK quantizer, lowered to XNNPACK ->
  ``model_int8.pte`` (``quant/xnnpack.py``).

All record in ``ctx.info`` how many samples calibrated the model and which nodes stayed in float. The
helpers at the bottom are shared with ``quant.dynamic``. ``equalize`` / ``bias_correction`` run the DFQ pre-pass
of ``quant.equalize`` (BN folding, cross-layer equalization, bias correction) on a copy before export;
``rounding: adaround`` then learns each layer's weight rounding (``quant.adaround``) on that copy.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from edgecompress.calibration import MIN_CALIB_SAMPLES, calibration_samples
from edgecompress.context import StageContext, StageOutput
from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import Artifact
from edgecompress.nn.capture import forward_order, forward_with_hooks
from edgecompress.quant.xnnpack import quantize_to_pte
from edgecompress.registry import StageConfig, register

if TYPE_CHECKING:
    import onnx

CALIB_BATCH = 32
WEIGHTED_ONNX_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
Backend = Literal["auto", "onnxruntime", "torchao", "executorch"]


class PTQConfig(StageConfig):
    """Settings of ``quant.ptq``."""

    calib_samples: int = Field(
        256, ge=MIN_CALIB_SAMPLES, le=100_000,
        description="unlabeled training inputs used to calibrate activation ranges (fewer if the task has fewer)",
    )
    per_channel: bool = Field(True, description="one weight scale per output channel (else one per tensor)")
    calibration: Literal["minmax", "entropy", "percentile", "per_tensor"] = Field(
        "minmax", description="how activation ranges are chosen: min/max, KL-divergence thresholds over 2,048 histogram "
                              "bins (entropy), the 99.999th percentile, or per_tensor: for each tensor the one of "
                              "min/max, three percentiles and the least-MSE range that lowers the INT8 model's output "
                              "error most (greedy, in ONNX Runtime); all but minmax: onnxruntime backend only",
    )
    symmetric_activations: bool = Field(
        False, description="int8 activations with zero point 0 (default: uint8 with a zero point)",
    )
    reduce_range: Literal["auto", "on", "off"] = Field(
        "auto", description="7-bit weights, so x86 u8s8 kernels without VNNI cannot saturate (auto: on without VNNI)",
    )
    exclude: list[str] = Field(
        [], max_length=10_000,
        description="module names (as in model.named_modules(), with everything inside) or ONNX node names "
                    "kept in float",
    )
    backend: Backend = Field(
        "auto", description="auto: follow export.format (onnx -> onnxruntime, pytorch -> torchao, "
                            "executorch -> executorch: XNNPACK quantizer, .pte)",
    )
    equalize: bool = Field(
        False, description="cross-layer equalization (DFQ, Nagel et al. 2019) of conv/linear pairs before export; "
                           "helps per-tensor weights on depthwise networks",
    )
    bias_correction: bool = Field(
        False, description="empirical bias correction (DFQ): subtract the mean output error that weight "
                           "quantization causes, measured on the calibration inputs (onnxruntime and torchao backends)",
    )
    float_fallback: int = Field(
        0, ge=0, le=1000, description="keep up to this many of the costliest layers in float: a layer's cost is how "
                                      "much the INT8 ONNX model's output error drops with that layer alone in float, "
                                      "measured in ONNX Runtime (onnxruntime backend), kept only if together they "
                                      "lower the error; the report lists them and their size and latency cost",
    )
    rounding: Literal["nearest", "adaround"] = Field(
        "nearest", description="weight rounding: to nearest, or adaround: learned layer by layer on the calibration "
                               "inputs to reproduce each float layer's output (AdaRound; onnxruntime backend)",
    )
    adaround_steps: int = Field(300, ge=1, le=100_000, description="adaround: Adam steps per layer")
    adaround_window: int = Field(
        32, ge=0, le=4096, description="adaround: each step fits a random window of this many x this many output "
                                       "positions of a conv layer's maps (0: the whole maps; slower)",
    )

    @model_validator(mode="after")
    def _one_weight_correction(self):
        if self.rounding == "adaround" and self.bias_correction:
            raise ValueError("rounding: adaround already fits each layer's output, bias included; "
                             "drop bias_correction (or use rounding: nearest)")
        if self.float_fallback and self.bias_correction:  # measured: EfficientNet-Lite2 91.8% / 94.5% alone, 84.8%
            raise ValueError("bias_correction shifts every layer's bias by its INT8 weights' mean error, and the layers "
                             "float_fallback keeps in float would keep that shift without the error; use one of the two")
        return self


@register("quant.ptq", PTQConfig, produces_artifact=True)
def ptq(model: nn.Module, config: PTQConfig, ctx: StageContext) -> StageOutput:
    """Static INT8 post-training quantization (calibrated on unlabeled data), realised in the ONNX/PT2 artifact.

    Weights int8 (per channel by default), activations uint8 with ranges from ``calib_samples`` unlabeled
    training inputs (min/max by default). The float model is returned unchanged beside the INT8 artifact.
    """
    calib = calibration_samples(ctx, config.calib_samples, "quant.ptq")
    backend = resolve_backend(config.backend, ctx)
    if config.float_fallback and backend != "onnxruntime":
        raise EdgeCompressError(f"float_fallback measures and edits the INT8 ONNX model, not the {backend} one",
                                where="quant.ptq.float_fallback",
                                fix="use backend: onnxruntime (export.format: onnx), or list layers in exclude")
    prepass = config.equalize or config.bias_correction or config.rounding == "adaround"
    quantized = _dfq_prepass(model, config, calib, backend, ctx) if prepass else model
    if backend == "onnxruntime":
        artifact, report = _ptq_onnx(quantized, config, ctx, calib)
    elif backend == "executorch":
        artifact, report = quantize_to_pte(quantized, ctx, calib, per_channel=config.per_channel,
                                           exclude=config.exclude, calibration=config.calibration,
                                           symmetric_activations=config.symmetric_activations)
    else:
        artifact, report = _ptq_torchao(quantized, config, ctx, calib)
    ctx.info.update(backend=backend, calibration=config.calibration, calibration_samples=len(calib), **report)
    return StageOutput(model, artifact)


def _dfq_prepass(model: nn.Module, config: PTQConfig, calib: torch.Tensor, backend: str, ctx: StageContext) -> nn.Module:
    """BN folding, CLE and/or bias correction (``quant.equalize``), then learned rounding (``quant.adaround``), on a
    copy of the float model; report in ctx.info."""
    from edgecompress.quant import equalize as dfq

    if config.bias_correction and backend not in ("onnxruntime", "torchao"):
        raise EdgeCompressError(
            f"bias_correction simulates the onnxruntime and torchao weight quantizers, not the {backend} one",
            where="quant.ptq.bias_correction",
            fix="use backend: onnxruntime or torchao, or bias_correction: false (equalize works with every backend)",
        )
    quantize = None
    if config.bias_correction:
        quantize = (dfq.onnxruntime_weight_quantizer(config.per_channel, _reduce_range(config))
                    if backend == "onnxruntime" else dfq.observer_weight_quantizer(_x86_config(config).weight))
    model = copy.deepcopy(model).eval()

    def skip(name: str) -> bool:
        return any(in_module(name, e) or in_module(name, _onnx_module_path(e)) for e in config.exclude)

    report = dfq.prepare(model, calib, equalize_pairs=config.equalize, quantize=quantize, skip=skip)
    ctx.info["dfq"] = {"variant": "DFQ (Nagel et al. 2019): CLE without bias absorption; empirical bias "
                                  "correction, two-pass (ours)", **report}
    if config.rounding == "adaround":
        ctx.info["adaround"] = _adaround(model, config, calib, backend, skip, ctx.seed)
    return model


def _adaround(model: nn.Module, config: PTQConfig, calib: torch.Tensor, backend: str, skip, seed: int) -> dict:
    """Learned rounding of every Conv/Linear layer that runs once per pass and is not excluded (in place)."""
    from edgecompress.quant import adaround, equalize

    if backend != "onnxruntime":
        raise EdgeCompressError(f"rounding: adaround writes weights on the onnxruntime quantizer's grid, not the "
                                f"{backend} one", where="quant.ptq.rounding",
                                fix="use backend: onnxruntime (export.format: onnx), or rounding: nearest")
    order, shared = forward_order(model, calib[:2])
    layers = [n for n in order if n not in shared and not skip(n)
              and isinstance(model.get_submodule(n), (nn.Conv1d, nn.Conv2d, nn.Linear))]
    scales = equalize.onnxruntime_weight_scales(config.per_channel, _reduce_range(config))
    return adaround.adaround(model, copy.deepcopy(model), calib, layers, scales, steps=config.adaround_steps,
                             seed=seed, window=config.adaround_window)


def _reduce_range(config: PTQConfig) -> bool:
    return config.reduce_range == "on" or (config.reduce_range == "auto" and not cpu_has_vnni())


# ---------------------------------------------------------------- ONNX Runtime


class _CalibrationReader:
    """An ONNX Runtime calibration data reader (it only needs ``get_next``) over in-memory inputs, in batches."""

    def __init__(self, input_name: str, inputs: torch.Tensor):
        self._batches = iter([{input_name: b.numpy()} for b in inputs.split(CALIB_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _ptq_onnx(model: nn.Module, config: PTQConfig, ctx: StageContext, calib: torch.Tensor) -> tuple[Artifact, dict]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32, prep = fp32_onnx(model, ctx, calib[:1])
    reduce_range = _reduce_range(config)
    prepped = onnx.load(str(prep))
    input_name = prepped.graph.input[0].name
    extra = {"ActivationSymmetric": config.symmetric_activations}
    if config.calibration == "entropy":  # ranges from our own histogram pass, handed over as overrides
        extra["TensorQuantOverrides"] = _entropy_ranges(prep, input_name, calib)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile, "per_tensor": CalibrationMethod.MinMax}
    out = prep.parent / "model_int8.onnx"
    excluded = onnx_nodes_to_exclude(prepped, config.exclude, "quant.ptq")

    def quantize(nodes_to_exclude: list[str]) -> None:
        tmp = out.with_suffix(".tmp.onnx")
        quantize_static(
            str(prep), str(tmp), _CalibrationReader(input_name, calib),
            quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            activation_type=QuantType.QInt8 if config.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=methods[config.calibration],
            nodes_to_exclude=nodes_to_exclude, reduce_range=reduce_range, extra_options=extra,
        )
        if nodes_to_exclude:  # else ONNX Runtime quantizes their weights again, per tensor, when it loads the file
            from edgecompress.quant.fallback import keep_float

            written = onnx.load(str(tmp))
            if keep_float(written, nodes_to_exclude):
                onnx.save(written, str(tmp))
        tmp.replace(out)

    quantize(excluded)
    report = {}
    if config.calibration == "per_tensor":  # search on the min/max file, then quantize again with the choice
        extra["TensorQuantOverrides"], report["per_tensor"] = _per_tensor(prep, out, calib, config)
        quantize(excluded)
    if config.float_fallback:
        report["float_fallback"] = _float_fallback(config.float_fallback, out, prep, calib, excluded, quantize,
                                                   ctx.export.threads)
    prep.unlink()
    report.update(_qdq_report(onnx.load(str(out)).graph))
    report.update(fp32_bytes=fp32.size_bytes, int8_bytes=out.stat().st_size, reduce_range=reduce_range)
    return Artifact(out, "onnx", "onnxruntime", "int8"), report


def _per_tensor(prep: Path, out: Path, calib: torch.Tensor, config: PTQConfig) -> tuple[dict, dict]:
    from onnxruntime.quantization.quant_utils import QuantType, get_qmin_qmax_for_qType

    from edgecompress.quant import ranges

    kind = QuantType.QInt8 if config.symmetric_activations else QuantType.QUInt8
    qmin, qmax = get_qmin_qmax_for_qType(kind.tensor_type, symmetric=config.symmetric_activations)
    return ranges.per_tensor_ranges(str(prep), str(out), calib.numpy(), int(qmin), int(qmax),
                                    config.symmetric_activations)


FALLBACK_SAMPLES = 32  # calibration inputs the per-layer sensitivities are measured on


def _float_fallback(count: int, out: Path, prep: Path, calib: torch.Tensor, excluded: list[str],
                    quantize: Callable[[list[str]], None], threads: int) -> dict:
    """Measure each layer's sensitivity on the INT8 file ``out``, re-quantize with the ``count`` costliest layers
    (those whose float version lowers the output error most, if it does) in float, and keep that file only if its
    output error is lower than the all-INT8 one's; report which layers, which file was kept and the cost."""
    from edgecompress.quant import fallback

    inputs = calib[:FALLBACK_SAMPLES].numpy()
    base, errors = fallback.sensitivities(str(out), str(prep), inputs)
    ranked = sorted((e, name) for name, e in errors.items() if e < base)[:count]
    before = {"int8_bytes": out.stat().st_size, "latency_ms": fallback.latency_ms(str(out), inputs[:1], threads),
              "output_error": base}
    all_int8 = out.with_name("model_int8_all.onnx")
    shutil.copyfile(out, all_int8)
    quantize(excluded + [name for _, name in ranked])
    reference = fallback.outputs(str(prep), inputs)
    after = {"int8_bytes": out.stat().st_size, "latency_ms": fallback.latency_ms(str(out), inputs[:1], threads),
             "output_error": fallback.relative_error(fallback.outputs(str(out), inputs), reference)}
    kept = "with_fallback" if after["output_error"] < base else "all_int8"
    if kept == "all_int8":  # layers chosen one at a time can raise the error together: keep the all-INT8 file
        all_int8.replace(out)
    else:
        all_int8.unlink()
    return {"layers": {name: {"module": _onnx_module_path(name), "output_error_with_it_in_float": e}
                       for e, name in ranked}, "kept": kept,
            "all_int8": before, "with_fallback": after, "samples": len(inputs), "threads": threads,
            "measure": "relative output MSE vs the FP32 ONNX model, in ONNX Runtime; latency batch 1, median of 30"}


ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128  # TensorRT's KL calibration settings


def _entropy_ranges(prep: Path, input_name: str, calib: torch.Tensor) -> dict[str, list[dict]]:
    """KL-divergence (entropy) activation ranges as ONNX Runtime ``TensorQuantOverrides``.

    ``quantize_static`` builds its entropy calibrator with 128 histogram bins and 128 quantized bins, which
    leaves one candidate threshold, the full range: its "entropy" equals min/max, and it offers no option to
    change the bins. So the calibrator runs here with 2,048 bins. Its threshold ``t`` is symmetric, so each range
    is clipped to the observed values, ``[max(-t, min), min(t, max)]`` (a ReLU output keeps its one-sided range).
    """
    import contextlib
    import io
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # it prints progress
        calibrator = create_calibrator(
            str(prep), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
        )
        calibrator.collect_data(_CalibrationReader(input_name, calib))
        thresholds = calibrator.collector.compute_collection_result()
        observed = {name: (h[2], h[3]) for name, h in calibrator.collector.histogram_dict.items()}
    overrides = {}
    for name, (lo, hi, *_) in thresholds.items():
        seen_lo, seen_hi = observed[name]
        overrides[name] = [{"rmin": np.float32(max(lo, seen_lo)), "rmax": np.float32(min(hi, seen_hi))}]
    return overrides


def qdq_split(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """The compute nodes of a QDQ graph that run quantized (fed by DequantizeLinear) and those that stay float."""
    from edgecompress.quant.fallback import GUARD

    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    quantized, floating = [], []
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.name.endswith(GUARD):
            continue
        ins = [i in dq_outputs for i in n.input[: 2 if n.op_type in WEIGHTED_ONNX_OPS else 1] if i]
        outs = [c == "QuantizeLinear" for o in n.output for c in consumers.get(o, ["<output>"])]
        (quantized if ins and all(ins) or n.op_type not in WEIGHTED_ONNX_OPS and outs and all(outs)
         else floating).append(n)
    return quantized, floating


def _qdq_report(graph: onnx.GraphProto) -> dict:
    """Which compute nodes of a QDQ graph run quantized (fed by DequantizeLinear) and which stayed float."""
    quantized, floating = qdq_split(graph)
    return {"quantized_ops": dict(Counter(n.op_type for n in quantized)),
            "float_nodes": [f"{n.name} ({n.op_type})" for n in floating]}


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI/AMX int8 dot-product instructions (Linux /proc/cpuinfo flags).

    Without them ONNX Runtime's u8s8 kernels add pairs of u8*s8 products into int16 (``vpmaddubsw``), which
    saturates for large activations and weights (255*127*2 > 32767): on MNIST-5k the first conv lost 0.8
    accuracy points that way. 7-bit weights (``reduce_range``) remove the overflow.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


# ---------------------------------------------------------------- torchao (PT2E)


def _ptq_torchao(model: nn.Module, config: PTQConfig, ctx: StageContext, calib: torch.Tensor) -> tuple[Artifact, dict]:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    model = copy.deepcopy(model).eval()
    check_no_shared_modules(model, calib[:2])
    quantizer = X86InductorQuantizer().set_global(_x86_config(config))
    for name in check_module_names(model, config.exclude, "quant.ptq"):
        quantizer.set_module_name_qconfig(name, None)
    with torch.no_grad():
        program = torch.export.export(model, (calib[:2],), dynamic_shapes=_DYNAMIC_BATCH)
        prepared = prepare_pt2e(program.module(), quantizer)
        for batch in calib.split(CALIB_BATCH):
            prepared(batch)
        converted = convert_pt2e(prepared)
    _drop_unused_attributes(converted)
    artifact = save_program(converted, calib[:2].clone(), ctx.scratch_dir() / "model_int8.pt2", "int8")
    return artifact, {**_fx_report(converted.graph), "int8_bytes": artifact.size_bytes}


def _drop_unused_attributes(graph_module: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers no node reads: ``convert_pt2e`` folds int8 copies of the weights into
    new attributes and leaves the float originals behind, which ``torch.export`` would otherwise save too."""
    used = {n.target for n in graph_module.graph.nodes if n.op == "get_attr"}
    called = tuple(f"{n.target}." for n in graph_module.graph.nodes if n.op == "call_module")
    for name, _ in [*graph_module.named_parameters(), *graph_module.named_buffers()]:
        if name not in used and not name.startswith(called):
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner), attr)


def _x86_config(config: PTQConfig):
    """The X86 Inductor default recipe with this config's weight granularity, observer and activation sign."""
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

    if config.calibration != "minmax":
        raise EdgeCompressError(
            f"calibration {config.calibration!r} is an ONNX Runtime calibrator", where="quant.ptq.calibration",
            fix="use calibration: minmax with the torchao backend, or backend: onnxruntime",
        )
    base = get_default_x86_inductor_quantization_config()
    observer = MinMaxObserver.with_args(eps=2**-12)
    act = dataclasses.replace(base.input_activation, observer_or_fake_quant_ctr=observer)
    if config.symmetric_activations:
        act = dataclasses.replace(act, dtype=torch.int8, quant_min=-128, quant_max=127,
                                  qscheme=torch.per_tensor_symmetric)
    weight = base.weight
    if not config.per_channel:
        weight = dataclasses.replace(weight, qscheme=torch.per_tensor_symmetric, ch_axis=None,
                                     observer_or_fake_quant_ctr=observer)
    return dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight)


def _fx_report(graph: torch.fx.Graph) -> dict:
    """Which aten ops of a converted PT2E graph run quantized (fed by a dequantize node) and which stayed float."""

    def is_qdq(node) -> bool:
        return isinstance(node, torch.fx.Node) and "quantized_decomposed" in str(node.target)

    quantized, floating = Counter(), []
    for n in graph.nodes:
        if n.op != "call_function" or not str(n.target).startswith("aten.") or is_qdq(n):
            continue
        op = str(n.target).split(".")[1]
        weighted = op.startswith("conv") or op == "linear"
        ins = [is_qdq(a) for a in n.args[: 2 if weighted else 1]]
        outs = [is_qdq(u) for u in n.users]
        if ins and all(ins) or not weighted and outs and all(outs):
            quantized[op] += 1
        else:
            stack = list((n.meta.get("nn_module_stack") or {}).values())
            floating.append(f"{stack[-1][0] if stack else n.name} ({op})")
    return {"quantized_ops": dict(quantized), "float_nodes": floating}


def check_no_shared_modules(model: nn.Module, example: torch.Tensor) -> None:
    """Raise if a leaf module instance runs more than once per forward (PT2E cannot quantize that)."""
    calls: Counter[str] = Counter()
    hooks = [m.register_forward_hook(lambda *_, name=name: calls.update([name]))
             for name, m in model.named_modules() if not any(m.children())]
    forward_with_hooks(model, example, hooks)
    shared = sorted(name for name, count in calls.items() if count > 1)
    if shared:
        raise EdgeCompressError(
            f"module(s) {', '.join(map(repr, shared))} run more than once in one forward pass; PT2E quantization "
            "annotates each module instance as one pattern and fails with \"Input partition has more than one "
            "output node\"", where="quant.ptq (backend torchao)",
            fix="give each use its own module instance (e.g. self.relu1 = nn.ReLU(), self.relu2 = nn.ReLU()), "
                "or use backend: onnxruntime",
        )


# ---------------------------------------------------------------- helpers shared with quant.dynamic

_DYNAMIC_BATCH = ({0: torch.export.Dim("batch", min=1)},)


def resolve_backend(backend: str, ctx: StageContext) -> Literal["onnxruntime", "torchao", "executorch"]:
    """``auto`` -> the backend that writes ``ctx.export.format``."""
    if backend != "auto":
        return backend  # type: ignore[return-value]
    return {"onnx": "onnxruntime", "executorch": "executorch"}.get(ctx.export.format, "torchao")  # type: ignore


def fp32_onnx(model: nn.Module, ctx: StageContext, example: torch.Tensor) -> tuple[Artifact, Path]:
    """Export the FP32 ONNX model into the stage's workdir and pre-process it for quantization.

    Returns the FP32 artifact and the pre-processed file (shape inference + ONNX Runtime optimisations).
    """
    from onnxruntime.quantization import quant_pre_process

    from edgecompress.runtimes.onnxruntime import export

    work = ctx.scratch_dir()
    fp32 = export(model, example, work, ctx.export, "model_fp32")  # token inputs too (a dict example)
    prep = work / "model_fp32_prep.onnx"
    # ONNX Runtime's symbolic shape inference cannot follow a transformer's dynamic lengths (e.g. Min(512, length));
    # where it fails on another model it leaves a file in the working directory: run it in the stage's own
    source, target = fp32.path.resolve(), prep.resolve()  # absolute: the working directory changes below
    with contextlib.chdir(work):
        quant_pre_process(str(source), str(target), skip_symbolic_shape=isinstance(example, dict))
    return fp32, prep


def _onnx_module_path(node_name: str) -> str:
    """The module that produced an ONNX node, from the TorchScript exporter's scope name.

    ``/layer1/seq/seq.1/seq.1.0/Conv`` -> ``layer1.seq.1.0``: each scope level repeats its parent's scope as a
    prefix for children of containers (Sequential, ModuleList), which is stripped.
    """
    parts, prev = [], ""
    for level in node_name.strip("/").split("/")[:-1]:
        parts.append(level[len(prev) + 1:] if prev and level.startswith(prev + ".") else level)
        prev = level
    return ".".join(parts)


def in_module(name: str, module: str) -> bool:
    """Whether the module ``name`` is ``module`` or inside it."""
    return name == module or name.startswith(module + ".")


def onnx_nodes_to_exclude(model: onnx.ModelProto, exclude: Iterable[str], stage: str) -> list[str]:
    """ONNX node names matched by ``exclude`` entries (node names, or module names with all nodes inside)."""
    nodes = []
    for entry in exclude:
        matched = [n.name for n in model.graph.node if n.name == entry or in_module(_onnx_module_path(n.name), entry)]
        if not matched:
            modules = sorted({_onnx_module_path(n.name) for n in model.graph.node} - {""})
            raise EdgeCompressError(
                f"exclude entry {entry!r} matches no module or node of the exported ONNX graph",
                where=f"{stage}.exclude",
                fix=f"use a module name such as {', '.join(modules[:8])} (BatchNorm folded into a conv has no "
                    "node of its own; exclude the conv)",
            )
        nodes += matched
    return nodes


def check_module_names(model: nn.Module, exclude: Iterable[str], stage: str) -> list[str]:
    """``exclude`` as a list, after checking that every entry names a module of ``model``."""
    names = dict(model.named_modules())
    for entry in exclude:
        if entry not in names:
            raise EdgeCompressError(
                f"exclude entry {entry!r} is not a module of the model", where=f"{stage}.exclude",
                fix=f"use names from model.named_modules(), e.g. {', '.join(list(names)[1:9])}",
            )
    return list(exclude)


def save_program(module: nn.Module, example: torch.Tensor, path: Path, precision: str) -> Artifact:
    """``torch.export`` ``module`` with a dynamic batch and save it atomically as a ``.pt2`` archive.

    ``example`` needs a batch of at least 2 (torch.export specialises a batch of 1) and is saved in the archive:
    pass a tensor that owns its storage, not a view of a large one.
    """
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=_DYNAMIC_BATCH)
    tmp = path.with_name(path.stem + ".tmp.pt2")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    tmp.replace(path)
    return Artifact(path, "pytorch", "torch", precision)
