"""The ``executorch`` backend of ``quant.ptq`` and ``quant.dynamic``: PT2E with ExecuTorch's XNNPACK quantizer.

``torch.export`` (dynamic batch) -> torchao ``prepare_pt2e`` with ``XNNPACKQuantizer`` -> calibration on the
same unlabeled inputs as the other backends -> ``convert_pt2e`` -> XNNPACK lowering -> ``model_int8.pte``.
The quantizer's recipe: int8 weights (symmetric, per channel by default), int8 activations with a zero point
(symmetric on request). Its default activation observer is a histogram; ``calibration: minmax`` (the stage's
default) swaps in min/max, as the torchao backend does. ``reduce_range`` does not apply: XNNPACK's x86 int8
kernels widen to int16 before adding, so they cannot saturate the way ONNX Runtime's u8s8 path can.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import Artifact
from edgecompress.runtimes.executorch import lower_to_pte, max_batch, trace

CALIB_BATCH = 32


def quantize_to_pte(model: nn.Module, ctx: StageContext, calib: torch.Tensor | None, *, per_channel: bool,
                    exclude: list[str], calibration: str = "minmax", symmetric_activations: bool = False,
                    stage: str = "quant.ptq") -> tuple[Artifact, dict]:
    """Quantize ``model`` with the XNNPACK quantizer and write ``model_int8.pte`` into the stage's workdir.

    ``calib`` given: static INT8 calibrated on it. ``calib`` None: dynamic INT8 (activations quantized per
    call; the XNNPACK recipe covers linear layers only). Returns the artifact and the report for ``ctx.info``.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgecompress.quant.ptq import check_module_names, check_no_shared_modules

    example = calib if calib is not None else ctx.example_inputs(2)
    model = copy.deepcopy(model).eval()
    check_no_shared_modules(model, example[:2])
    quantizer = _quantizer(per_channel, calib is None, calibration, symmetric_activations, stage)
    for name in check_module_names(model, exclude, stage):
        quantizer.set_module_name(name, None)
    batch = max_batch(ctx.export)
    with torch.no_grad():
        prepared = prepare_pt2e(trace(model, example, batch).module(), quantizer)
        for chunk in example.split(CALIB_BATCH):
            prepared(chunk)
        converted = convert_pt2e(prepared)
    artifact = lower_to_pte(trace(converted, example, batch), ctx.scratch_dir() / "model_int8.pte", "int8")
    return artifact, {**artifact.details, "int8_bytes": artifact.size_bytes}


def _quantizer(per_channel: bool, dynamic: bool, calibration: str, symmetric: bool, stage: str):
    """``XNNPACKQuantizer`` with its symmetric recipe; static: min/max activation observer, sign as asked."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic)
    if dynamic:
        return XNNPACKQuantizer().set_global(config)
    if calibration != "minmax":
        raise EdgeCompressError(
            f"calibration {calibration!r} is an ONNX Runtime calibrator", where=f"{stage}.calibration",
            fix="use calibration: minmax with the executorch backend, or export.format: onnx",
        )
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    if symmetric:
        act = dataclasses.replace(act, qscheme=torch.per_tensor_symmetric)
    return XNNPACKQuantizer().set_global(dataclasses.replace(config, input_activation=act, output_activation=act))
