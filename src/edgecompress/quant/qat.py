"""``quant.qat``: quantization-aware training with torchao PT2E, realised as an INT8 ONNX model for ONNX Runtime.

Flow: BN folded into the convs (default) -> ``torch.export`` (train mode) -> ``prepare_qat_pt2e`` with the
X86 Inductor quantizer's QAT recipe -> one forward pass over ``calib_samples`` unlabeled inputs sets the
initial ranges (the moving-average observers take the first batch's min/max as is) -> the shared training loop
(:func:`edgecompress.train.train`, optionally distilling from the teacher) -> observers frozen after
``freeze_observers_after`` epochs -> ``convert_pt2e`` (weights as int8 constants) -> ONNX. PT2E does all that
is needed; torch's FX QAT is not used.

* Weights: symmetric, per output channel by default, on the grid [-(2^(b-1)-1), 2^(b-1)-1] (2 bits: ternary).
  Below 8 bits the learned values k*s are stored exactly in **int8 containers** with the same scale (no
  packing: that is ``quant.weight``/``quant.mixed``'s job). ``reduce_range`` trains 8-bit weights on the 7-bit
  grid: ONNX Runtime's u8s8 kernels on CPUs without VNNI saturate otherwise (see :func:`cpu_has_vnni`).
  Weight fake-quant is torchao's ``FakeQuantize``, not the recipe's fused kernel: that one picks symmetric
  scales as max(-min/2^(b-1), max/(2^(b-1)-1)) while ``convert_pt2e`` re-derives max|w|/((qmax-qmin)/2) from
  the observer, a harmless mismatch at 8 bits but a different grid at 2-3 bits.
* Activations: uint8 per tensor only; lower activation bit widths are ``quant.act``/``quant.dqa``'s business.
* BatchNorm: by default folded before QAT ("static folding", discussed beside batch-statistics folding by
  Nagel et al. 2021, arXiv:2106.08295 §4.2), so BN is frozen from the start; the folded network has lost BN's
  scale invariance, hence the small default ``lr``. ``freeze_bn_after: n`` keeps BN training on batch
  statistics inside PT2E's simulated conv-BN folding for n epochs instead (Jacob et al. 2018): its pattern
  rewriting exports ~150 small patterns (~30 s CPU); on MNIST-5k at 3 bits it reached the same accuracy at 4x
  the stage CPU time (benchmarks/results/qat.md). Frozen BN also turns dropout off (one graph switch).
* Export: the TorchScript exporter with three small symbolics mapping torchao's ``quantized_decomposed``
  ops to QuantizeLinear/DequantizeLinear (hand-written because that exporter has none). The int8 weight
  constants become int8 initializers, so the file is ~4x smaller with no weight surgery. The dynamo exporter
  (onnxscript) handles these ops too, but decomposes flatten/pooling into Shape/Range/ReduceMean chains and
  splits conv biases into Adds; this route keeps the FP32 export's graph layout and node names.

PT2E annotates each module instance as one pattern: a leaf module called twice in one forward (a shared
``self.relu``) is rejected up front with an explanation.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import nn

from edgecompress.calibration import MIN_CALIB_SAMPLES, calibration_samples
from edgecompress.context import StageContext, StageOutput
from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import Artifact
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.nn.bn import fold_batchnorms, is_identity_bn
from edgecompress.nn.layers import build_graph
from edgecompress.quant.ptq import (
    _DYNAMIC_BATCH,
    _qdq_report,
    check_module_names,
    check_no_shared_modules,
    cpu_has_vnni,
)
from edgecompress.registry import register
from edgecompress.train import DistillConfig, TrainSettings, accuracy, train

if TYPE_CHECKING:
    import onnx

LOW_BIT_NOTE = "low-bit weights stored in int8 containers; packing is quant.weight/quant.mixed's job"


class QATConfig(TrainSettings):
    """Settings of ``quant.qat``."""

    epochs: int = Field(3, ge=0, le=10000, description="QAT passes over the training split (0: calibrated "
                                                        "fake-quant model only, i.e. PTQ on the same grid)")
    lr: float = Field(0.001, gt=0.0, le=10.0, description="initial learning rate (cosine-annealed to zero); "
                      "small: with BN folded the network loses BN's scale invariance (0.003 diverged on MNIST-5k); "
                      "lower still with distill (its soft term is T^2-scaled)")
    distill: DistillConfig | None = Field(None, description="also match the teacher's soft targets "
                                                             "(the model as it entered the recipe)")
    weight_bits: int = Field(8, ge=2, le=8, description="weight bit width (symmetric grid, stored in int8)")
    per_channel: bool = Field(True, description="one weight scale per output channel (else one per tensor)")
    calib_samples: int = Field(256, ge=MIN_CALIB_SAMPLES, le=4096, description="unlabeled training inputs whose min/max set the "
                                                               "initial ranges (one forward pass)")
    freeze_bn_after: int = Field(0, ge=0, le=10000, description="0: BN folded into the convs before QAT (static "
                                 "folding); n: BN trains on batch statistics for n epochs, then is frozen")
    freeze_observers_after: int = Field(2, ge=0, le=10000, description="quantization ranges stop updating after "
                                                                        "this many epochs (>= epochs: never)")
    reduce_range: Literal["auto", "on", "off"] = Field(
        "auto", description="8-bit weights on the 7-bit grid, so x86 u8s8 kernels without VNNI cannot saturate "
                            "(auto: on without VNNI)",
    )
    exclude: list[str] = Field([], max_length=10_000, description="module names (as in model.named_modules()) "
                                                                  "kept in float")

    def labels_needed(self) -> str | None:
        if self.epochs and (self.distill is None or self.distill.alpha < 1):
            return "it trains on the task's loss; `distill: {alpha: 1.0}` or `epochs: 0` needs no labels"
        return None



class QATModel(nn.Module):
    """The prepared PT2E graph behind ``train()``/``eval()``. An exported graph switches BN and dropout by
    rewriting its ops (``move_exported_model_to_train/eval``, a few pattern exports each): skipped when it has
    neither, and kept in eval form once BN is frozen. ``float_model`` is the module that was exported, with folded
    BatchNorms kept as exact identities (so checkpoints rebuild the original module tree)."""

    def __init__(self, graph: torch.fx.GraphModule, float_model: nn.Module):
        super().__init__()
        self.graph = graph
        self.float_model = [float_model]  # in a list: not a submodule (no double parameters)
        self.bn_frozen = False
        self.switchable = any(op in str(n.target) for n in graph.graph.nodes for op in ("batch_norm", "dropout"))

    def train(self, mode: bool = True) -> QATModel:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        if self.switchable:
            (move_exported_model_to_train if mode and not self.bn_frozen else move_exported_model_to_eval)(self.graph)
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


@register("quant.qat", QATConfig, produces_artifact=True)
def qat(model: nn.Module, config: QATConfig, ctx: StageContext) -> StageOutput:
    """Quantization-aware training (torchao PT2E), exported as an INT8 ONNX model run by ONNX Runtime.

    Weights int8 per channel (2-8 bit grids, stored in int8), activations uint8; initial ranges from
    ``calib_samples`` unlabeled inputs, then training with fake quantization (optionally distilling from the
    teacher), observers (and BN, when not folded) frozen after a few epochs. Returns the trained float model
    (BN folded by default) beside the artifact.
    """
    if ctx.export.format != "onnx":
        raise EdgeCompressError(
            f"quant.qat writes an ONNX model, but export.format is {ctx.export.format!r}",
            where="export.format", fix="use export.format: onnx, or quant.ptq (backend torchao) for a .pt2 archive",
        )
    qmodel, info = train_qat(model, config, ctx)
    trained = float_copy(qmodel)
    artifact, report = export_int8(convert(qmodel), trained, ctx, ctx.example_inputs(2))
    ctx.info.update(**info, **report)
    return StageOutput(trained, artifact)


def train_qat(model: nn.Module, config: QATConfig, ctx: StageContext) -> tuple[QATModel, dict]:
    """Prepare, calibrate and train the fake-quant model; returns it (eval mode) and its report."""
    from torchao.quantization.pt2e import disable_observer

    task = ctx.require_task("quant.qat")
    teacher = ctx.require_teacher("quant.qat") if config.distill is not None else None
    calib = calibration_samples(ctx, config.calib_samples, "quant.qat")
    reduce_range = config.reduce_range == "on" or (config.reduce_range == "auto" and not cpu_has_vnni())
    qmin, qmax = weight_range(config.weight_bits, reduce_range)
    qmodel = _prepare(model, config, calib, qmin, qmax)
    qmodel.eval()
    with torch.no_grad():
        qmodel(calib)
    before = accuracy(qmodel, task, "val") if task.has_labels else None

    def freeze(epoch: int) -> None:
        if epoch > config.freeze_observers_after:
            qmodel.graph.apply(disable_observer)
        qmodel.bn_frozen = 0 < config.freeze_bn_after < epoch  # 0: BN folded away, dropout keeps training

    distill = config.distill or DistillConfig()
    history = train(
        qmodel, task, epochs=config.epochs, lr=config.lr, optimizer=config.optimizer, batch_size=config.batch_size,
        weight_decay=config.weight_decay, teacher=teacher, temperature=distill.temperature, alpha=distill.alpha,
        seed=ctx.seed, progress=ctx.progress, description="quant.qat", on_epoch=freeze,
    )
    qmodel.eval()
    info = dict(
        epochs=config.epochs, weight_bits=config.weight_bits, weight_range=[qmin, qmax],
        per_channel=config.per_channel, reduce_range=reduce_range, calibration_samples=len(calib),
        bn=("folded before QAT (static folding)" if config.freeze_bn_after == 0 else
            f"batch statistics (PT2E simulated folding) for {config.freeze_bn_after} epoch(s), then frozen"),
        val_accuracy_before=before, val_accuracy_after=history[-1]["val_accuracy"] if history else before,
        history=history, distilled=teacher is not None,
        **({"weight_storage": LOW_BIT_NOTE} if qmax < 127 else {}),
    )
    return qmodel, info


def weight_range(bits: int, reduce_range: bool) -> tuple[int, int]:
    """The symmetric integer grid of ``bits``-bit weights; 8-bit weights use 7 bits with ``reduce_range``."""
    bits = min(bits, 7) if reduce_range else bits
    return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1


def _prepare(model: nn.Module, config: QATConfig, calib: torch.Tensor, qmin: int, qmax: int) -> QATModel:
    """``torch.export`` a train-mode copy of ``model`` (BN folded first unless it trains) and insert fake
    quantization (PT2E QAT)."""
    from torchao.quantization.pt2e import FakeQuantize, MovingAverageMinMaxObserver
    from torchao.quantization.pt2e.observer import MovingAveragePerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    model = copy.deepcopy(model).eval()
    _check_shared(model, calib[:2])
    exclude = check_module_names(model, config.exclude, "quant.qat")
    traced = model
    if config.freeze_bn_after == 0:  # folded BNs stay in `model` as exact identities; the traced copy drops them
        fold_batchnorms(model, build_graph(model, calib[:2]))
        traced = copy.deepcopy(model)
        for name, module in list(traced.named_modules()):
            if is_identity_bn(module):
                traced.set_submodule(name, nn.Identity())
    base = get_default_x86_inductor_quantization_config(is_qat=True)
    observer = MovingAveragePerChannelMinMaxObserver if config.per_channel else MovingAverageMinMaxObserver
    weight = dataclasses.replace(  # see the module docstring for why not the recipe's fused fake-quant
        base.weight, quant_min=qmin, quant_max=qmax, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=observer, eps=2**-12),
        **({} if config.per_channel else {"qscheme": torch.per_tensor_symmetric, "ch_axis": None}),
    )
    quantizer = X86InductorQuantizer().set_global(dataclasses.replace(base, weight=weight))
    for name in exclude:
        quantizer.set_module_name_qconfig(name, None)
    program = torch.export.export(traced.train(), (calib[:2],), dynamic_shapes=_DYNAMIC_BATCH)
    return QATModel(prepare_qat_pt2e(program.module(), quantizer), model)


def _check_shared(model: nn.Module, example: torch.Tensor) -> None:
    try:
        check_no_shared_modules(model, example)
    except EdgeCompressError as err:
        raise EdgeCompressError(
            err.what, where="quant.qat",
            fix="give each use its own module instance (e.g. self.relu1 = nn.ReLU(), self.relu2 = nn.ReLU()); "
                "quant.ptq with backend onnxruntime quantizes such models without training",
        ) from None


def float_copy(qmodel: QATModel) -> nn.Module:
    """The exported float module with the trained weights and BN statistics (the graph keeps their names); the
    folded BatchNorms, absent from the graph, stay exact identities."""
    trained = copy.deepcopy(qmodel.float_model[0])
    graph_state = qmodel.graph.state_dict()
    keys = trained.state_dict().keys()
    folded = tuple(f"{n}." for n, m in trained.named_modules() if is_identity_bn(m))
    missing = [k for k in keys if k not in graph_state and not k.startswith(folded)]
    if missing:
        raise RuntimeError(f"the trained graph lacks {', '.join(missing[:5])}")
    trained.load_state_dict({k: v for k, v in graph_state.items() if k in keys}, strict=False)
    return trained.eval()


def convert(qmodel: QATModel) -> torch.fx.GraphModule:
    """``convert_pt2e``: BN folded into the convs, weights int8 constants, activations quantize/dequantize."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return allow_exported_model_train_eval(convert_pt2e(qmodel.graph))  # the ONNX exporter calls .eval()


def export_int8(converted: torch.fx.GraphModule, trained: nn.Module, ctx: StageContext,
                example: torch.Tensor) -> tuple[Artifact, dict]:
    """Export the converted graph: int8 weight initializers -> DequantizeLinear, activations Q/DQ pairs."""
    import onnx

    work = ctx.scratch_dir()
    fp32 = export_onnx(trained, example[:1], work / "model_fp32.onnx", ctx.export.opset)
    _register_symbolics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        artifact = export_onnx(converted, example, work / "model_int8.onnx", ctx.export.opset)
    graph = _constants_to_initializers(artifact.path).graph
    report = _qdq_report(graph)
    report.update(fp32_bytes=fp32.size_bytes, int8_bytes=artifact.size_bytes,
                  int8_weights=sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1 for i in graph.initializer))
    fp32.path.unlink()
    return Artifact(artifact.path, "onnx", "onnxruntime", "int8"), report


def _constants_to_initializers(path: Path) -> onnx.ModelProto:
    """Turn the exporter's Constant nodes (the per-tensor scales and zero points) into initializers, as
    ``quantize_static`` writes them, so the graph holds only compute and Q/DQ nodes; rewrites ``path``."""
    import onnx

    model = onnx.load(str(path))
    for node in [n for n in model.graph.node if n.op_type == "Constant"]:
        tensor = onnx.helper.get_attribute_value(node.attribute[0])
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        model.graph.node.remove(node)
    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return model


def _register_symbolics() -> None:
    """TorchScript-exporter symbolics for the ``quantized_decomposed`` ops ``convert_pt2e`` leaves in the graph.

    Per-tensor scales and zero points are Python numbers there (made float32/uint8|int8 constants); per-channel
    zero points are int64 tensors (cast to the int8 weight type, then constant-folded).
    """
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    def qparams(g, scale, zero_point, quant_min):
        dtype = torch.uint8 if symbolic_helper._get_const(quant_min, "i", "quant_min") >= 0 else torch.int8
        return (g.op("Constant", value_t=torch.tensor(symbolic_helper._get_const(scale, "f", "scale"))),
                g.op("Constant", value_t=torch.tensor(symbolic_helper._get_const(zero_point, "i", "zp"), dtype=dtype)))

    def quantize(g, x, scale, zero_point, quant_min, quant_max, dtype):
        return g.op("QuantizeLinear", x, *qparams(g, scale, zero_point, quant_min))

    def dequantize(g, x, scale, zero_point, quant_min, quant_max, dtype, out_dtype=None):
        return g.op("DequantizeLinear", x, *qparams(g, scale, zero_point, quant_min))

    def dequantize_channels(g, x, scales, zero_points, axis, quant_min, quant_max, dtype, out_dtype=None):
        zero_points = g.op("Cast", zero_points, to_i=3)  # ONNX INT8: the weight's own type
        return g.op("DequantizeLinear", x, scales, zero_points, axis_i=symbolic_helper._get_const(axis, "i", "axis"))

    for name, fn in (("quantize_per_tensor", quantize), ("dequantize_per_tensor", dequantize),
                     ("dequantize_per_channel", dequantize_channels)):
        register_custom_op_symbolic(f"quantized_decomposed::{name}", fn, 13)
