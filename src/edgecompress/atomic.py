"""Atomic file writes: a temporary file beside the target, renamed over it once complete, with the permissions of
an ordinarily created file (0666 less the umask; ``tempfile.mkstemp`` and safetensors create theirs 0600)."""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace(tmp: str | Path, path: Path) -> None:
    """Give the finished ``tmp`` the usual file permissions and rename it over ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a crash leaves the old file or the new one, never half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    replace(tmp, path)
