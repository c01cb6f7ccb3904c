"""Quantization stages; importing this package registers them (``quant.ptq``, ``quant.dynamic``)."""

from edgecompress.quant import dynamic, ptq  # noqa: F401
