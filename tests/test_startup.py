"""The command line starts without loading torch: --help and --version answer at once."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from edgecompress import __version__
from edgecompress.cli import app


def test_cli_module_does_not_import_torch():
    code = "import sys, edgecompress.cli; print(sorted(m for m in ('torch', 'sklearn', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_version_and_help():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"edgecompress {__version__}"
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0 and "run" in res.output and "bench" in res.output


def test_public_names_resolve_lazily():
    import edgecompress

    assert callable(edgecompress.compress) and callable(edgecompress.data_spec)
    assert edgecompress.load_recipe("default").name == "default"
    try:
        edgecompress.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("unknown attribute resolved")
