"""Quantization stages; importing this package registers them (``quant.ptq``, ``quant.dynamic``, ``quant.act``, ``quant.dqa``)."""

from edgecompress.quant import actquant, dqa, dynamic, ptq  # noqa: F401
