"""Quantization stages; importing this package registers them (``quant.ptq``, ``quant.dynamic``, ``quant.act``,
``quant.dqa``, ``quant.weight``, ``quant.mixed``, ``quant.qat``)."""

from edgecompress.quant import actquant, dqa, dynamic, mixed, ptq, qat, weightonly  # noqa: F401
