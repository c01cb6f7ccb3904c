"""Low-bit weight-only quantization machinery shared by ``quant.weight`` and ``quant.mixed``: quantizers
(:mod:`.quantizer`), GPTQ (:mod:`.gptq`), the whole-model pass (:mod:`.model`) and the packed INT4/INT8 ONNX
writer (:mod:`.onnx`)."""

from edgecompress.quant.weights.gptq import Hessian, gptq
from edgecompress.quant.weights.model import quantize_layers, select_layers
from edgecompress.quant.weights.onnx import weight_bytes, write_weight_only_onnx
from edgecompress.quant.weights.quantizer import MAX_BITS, MIN_BITS, QuantizedWeight, QuantSpec, packed_bytes, rtn

__all__ = ["MAX_BITS", "MIN_BITS", "Hessian", "QuantSpec", "QuantizedWeight", "gptq",
           "packed_bytes", "quantize_layers", "rtn", "select_layers", "weight_bytes", "write_weight_only_onnx"]
