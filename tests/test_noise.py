"""Non-actionable third-party messages are dropped; real warnings still reach the user."""

from __future__ import annotations

import os
import subprocess
import sys

from edgecompress.noise import native_stderr_filtered

NOISE = ("Failed to load", "_C_mxfp8", "is an Enum subclass", "cpuinfo_utils")


def _stderr_of(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_torchao_import_noise_is_dropped_and_real_warnings_pass():
    err = _stderr_of("import edgecompress, logging, torchao, torchao.quantization.pt2e\n"
                     "logging.getLogger('torchao').warning('a real torchao warning')\n"
                     "logging.getLogger('torch.utils._pytree').warning('a real pytree warning')")
    assert not [n for n in NOISE if n in err], err
    assert "a real torchao warning" in err and "a real pytree warning" in err


def test_executorch_thread_pool_starts_quietly():
    err = _stderr_of("from edgecompress.runtimes.executorch import _start_threadpool\n_start_threadpool()")
    assert "cpuinfo_utils" not in err, err


def test_native_stderr_keeps_what_is_not_noise(capfd):
    with native_stderr_filtered():
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\n")
        os.write(2, b"a real native error\n")
        print("a python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert "cpuinfo_utils" not in err and "a real native error" in err and "a python warning" in err
