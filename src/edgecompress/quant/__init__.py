"""Quantization stages; importing this package registers them (``quant.ptq``, ``quant.dynamic``)."""

from edgecompress.quant import dynamic, ptq  # noqa: F401
from edgecompress.quant import actquant, dqa  # noqa: F401,E402  (quant.act, quant.dqa)
