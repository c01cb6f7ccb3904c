"""Quantization stages; importing this package registers them (``quant.ptq``, ``quant.dynamic``, ``quant.act``,
``quant.dqa``, ``quant.weight``, ``quant.mixed``)."""

from edgecompress.quant import actquant, dqa, dynamic, mixed, ptq, weightonly  # noqa: F401
