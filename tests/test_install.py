"""The install files agree: one torch version in pyproject, requirements.txt (CUDA build from PyPI) and
requirements-cpu.txt (the +cpu build from PyTorch's CPU index)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _torch_pin(lines: list[str]) -> str:
    pins = [m.group(1) for line in lines if (m := re.fullmatch(r"torch==(\S+)", line))]
    assert len(pins) == 1, lines
    return pins[0]


def test_one_torch_version_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version = _torch_pin(project["dependencies"])
    assert "+" not in version  # the package accepts both builds
    assert _torch_pin(_requirement_lines("requirements.txt")) == version
    cpu = _requirement_lines("requirements-cpu.txt")
    assert _torch_pin(cpu) == f"{version}+cpu"
    assert f"--extra-index-url {CPU_INDEX}" in cpu


def test_readme_names_both_install_files():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -r requirements-cpu.txt && pip install -e ." in readme
    assert "**CPU-only machine**: `requirements-cpu.txt`" in readme
    assert "**Machine with an NVIDIA GPU**: `requirements.txt`" in readme


def test_license_file_is_the_license_pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "LICENSE").read_text()
    assert project["license"] == {"text": "Apache-2.0"}
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_readme_points_only_to_files_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme
    paths = set(re.findall(r"`((?:benchmarks|tests|src)/[\w./-]+\.(?:py|md|json|yaml))`", readme))
    assert paths and [p for p in paths if not (ROOT / p).exists()] == []
