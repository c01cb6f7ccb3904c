"""The command line starts without loading torch: --help, --version, methods, report and recipes answer at once."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from edgecompress import __version__
from edgecompress.cli import app


def test_cli_module_does_not_import_torch():
    code = "import sys, edgecompress.cli; print(sorted(m for m in ('torch', 'sklearn', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


HEAVY = ("torch", "sklearn", "onnxruntime", "onnx", "matplotlib.pyplot")


def _heavy_modules_after(*args: str) -> list[str]:
    """The heavy modules loaded by running ``edgecompress ARGS`` in a fresh interpreter (which must succeed)."""
    code = ("import sys; from typer.testing import CliRunner; from edgecompress.cli import app\n"
            f"res = CliRunner().invoke(app, {list(args)!r}, terminal_width=200)\n"
            "assert res.exit_code == 0, res.output\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().replace("'", '"'))


def test_methods_and_recipes_do_not_import_torch():
    assert _heavy_modules_after("methods") == []
    assert _heavy_modules_after("recipes") == []
    assert _heavy_modules_after("recipes", "show", "default") == []


def test_report_does_not_import_torch(tmp_path):
    metrics = {"recipe": "r", "history": [{"name": "baseline", "metrics": {"accuracy": 0.9, "size_bytes": 1000}}]}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert "torch" not in _heavy_modules_after("report", str(tmp_path))


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
