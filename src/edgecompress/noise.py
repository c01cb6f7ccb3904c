"""Third-party messages that tell an edgecompress user nothing they can act on, dropped where they arise; every
other warning passes.

- torchao, on import: "Failed to load .../torchao/_C_mxfp8...so" (its CUDA kernels, absent from CPU builds);
- torch, when torchao registers an Enum as a pytree constant ("... is an Enum subclass and is now natively
  supported ...");
- torch's dynamo ONNX exporter (used for transformers), on each export: "torchvision is not installed. Skipping
  torchvision::nms" (and the other torchvision ops it would register);
- ExecuTorch's thread pool, on creation, writes its CPU probing ("[cpuinfo_utils.cpp:71] Reading file ...") to the
  process's stderr from C++: :func:`native_stderr_filtered` catches that at the file-descriptor level.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

PATTERNS = {  # logger (None: native stderr) -> messages that are noise
    "torchao": re.compile(r"Failed to load \S*torchao/_C\w*\S*\.so"),
    "torch.utils._pytree": re.compile(r"is an Enum subclass and is now natively supported"),
    "torch.onnx._internal.exporter._registration": re.compile(r"torchvision is not installed\. Skipping torchvision::"),
    None: re.compile(r"^\[cpuinfo_utils\.cpp:\d+\] "),
}


class _Drop(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Filter the noisy loggers (before the libraries that own them are imported; installing twice is harmless)."""
    for name, pattern in PATTERNS.items():
        logger = logging.getLogger(name) if name else None
        if logger is not None and not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(pattern))


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Inside the block, what anything (C++ included) writes to file descriptor 2 is held back; afterwards the lines
    that are not noise are written to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not PATTERNS[None].search(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
