"""The run directory: resolved recipe, per-stage checkpoints, metrics history, log, artifacts, report.

All JSON files are written atomically (temp file + rename) so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from edgecompress.errors import EdgeCompressError

STATE, METRICS, RECIPE = "state.json", "metrics.json", "recipe.yaml"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeCompressError(f"{path.name} not found", where=str(path.parent),
                                fix="point to a directory made by `edgecompress run`") from None
    except json.JSONDecodeError as err:
        raise EdgeCompressError(f"corrupt JSON ({err})", where=str(path),
                                fix="restore the file or start a new run with --force") from None


def is_run_dir(path: Path) -> bool:
    return (path / STATE).is_file() or (path / RECIPE).is_file()


def prepare(out: Path, *, resume: bool, force: bool) -> None:
    """Create ``out`` for a new run, or check it for a resumed one. Never deletes anything but an old
    run directory that the user asked to replace with --force."""
    if resume:
        if not (out / STATE).is_file():
            raise EdgeCompressError("no run to resume here (state.json missing)", where=str(out),
                                    fix="pass the directory of an earlier `edgecompress run`, or drop --resume")
        return
    if out.exists() and any(out.iterdir()):
        if not force:
            raise EdgeCompressError("run directory already exists", where=str(out),
                                    fix="use --resume to continue it, --force to replace it, or another --out")
        if not is_run_dir(out):
            raise EdgeCompressError("refusing to --force over a directory that is not an edgecompress run",
                                    where=str(out), fix="choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def stage_dir(out: Path, index: int, name: str) -> Path:
    path = out / "stages" / f"{index:02d}-{name}"
    path.mkdir(parents=True, exist_ok=True)
    return path
