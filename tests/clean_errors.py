"""Helpers for the bad-input suites: a CLI call must fail cleanly and touch nothing outside its run directory.

``expect_clean_error(args, words)`` runs the CLI in-process and asserts a non-zero exit, the project's own
error line (``error: ...`` printed for an EdgeCompressError), every word of ``words`` in it (case-insensitive)
and no traceback. ``Sentinel`` snapshots a directory of user files (a ``.git`` folder and a ``recipe.yaml``
among them) so a test can assert that none of them was deleted, changed or added to.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner

from edgecompress.cli import app

runner = CliRunner()


def expect_clean_error(args: list[str], words: list[str], *, code: int = 2) -> str:
    res = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    out = res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"raw exception {type(res.exception).__name__}: {res.exception}\n{out}")
    assert res.exit_code == code, f"exit {res.exit_code}, wanted {code}:\n{out}"
    assert "Traceback" not in out, out
    assert "error:" in out, f"no `error:` line:\n{out}"
    lowered = " ".join(out.lower().split())
    for word in words:
        assert word.lower() in lowered, f"{word!r} not in:\n{out}"
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the SHA-256 of its content ("dir" for folders)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


class Sentinel:
    """A directory of user files whose every path and content hash is compared before and after."""

    def __init__(self, root: Path):
        self.root = root
        (root / ".git").mkdir(parents=True, exist_ok=True)
        (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        (root / "recipe.yaml").write_text("name: mine\n")
        (root / "model.onnx").write_bytes(b"user bytes")
        (root / "notes.txt").write_text("do not delete")
        self.before = snapshot(root)

    def assert_untouched(self) -> None:
        after = snapshot(self.root)
        assert after == self.before, f"user files changed: before {self.before}, after {after}"
