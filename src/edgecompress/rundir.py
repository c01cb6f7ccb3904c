"""The run directory: resolved recipe, per-stage checkpoints, metrics history, log, artifacts, report.

Safety rules, all enforced here:
- A run directory is recognised only by the marker file edgecompress writes into it (``.edgecompress-run``,
  holding the run's id). ``--force`` replaces nothing else, and never deletes up front: the old run is moved
  aside when the new run starts writing and removed once the new baseline is saved; if the new run fails
  before that, the old run is put back (:class:`Workspace`).
- Every path written is checked to stay inside the run directory (:func:`child`).
- One process at a time: an exclusive ``flock`` on ``.edgecompress-lock`` (holding the PID) lasts for the
  life of the run; a second run or a ``--resume`` of a live run is refused with the holder's PID.
- JSON files are written atomically (temp file + rename), so a crash never leaves a half-written file.

``fcntl`` locks are POSIX-only (Linux, macOS), the platforms edgecompress runs on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from edgecompress import atomic
from edgecompress.errors import EdgeCompressError

STATE, METRICS, RECIPE = "state.json", "metrics.json", "recipe.yaml"
MARKER, LOCK = ".edgecompress-run", ".edgecompress-lock"
_ASIDE = ".edgecompress-replaced-"  # prefix of an old run moved aside by --force


def os_error(err: OSError, path: Path) -> EdgeCompressError:
    """A filesystem failure as a user error: what happened, where, and how to fix it."""
    fixes = {errno.ENOSPC: "free disk space (or choose another --out), then rerun with --resume",
             errno.EDQUOT: "free disk space (or choose another --out), then rerun with --resume",
             errno.EACCES: "choose a writable --out, or fix the directory's permissions",
             errno.EPERM: "choose a writable --out, or fix the directory's permissions",
             errno.EROFS: "the file system is read-only: choose another --out",
             errno.ENOTDIR: "a path component is a file, not a directory: choose another --out",
             errno.EEXIST: "choose another --out"}
    return EdgeCompressError(f"cannot write: {err.strerror or err}", where=str(path),
                             fix=fixes.get(err.errno or 0, "check the path and the file system"))


def write_atomic(path: Path, text: str) -> None:
    try:
        atomic.write_text(path, text)
    except OSError as err:
        raise os_error(err, path) from None


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def read_json(path: Path, *, keys: tuple[str, ...] = ()) -> Any:
    """Read a JSON file of a run; ``keys``: top-level keys it must have (a JSON object is then required)."""
    fix = "restore the file, or start a new run (--force replaces this run directory)"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeCompressError(f"{path.name} not found", where=str(path.parent),
                                fix="point to a directory made by `edgecompress run`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeCompressError(f"corrupt JSON ({err})", where=str(path), fix=fix) from None
    except OSError as err:
        raise EdgeCompressError(f"cannot read ({err.strerror})", where=str(path), fix="check its permissions") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise EdgeCompressError(f"damaged: missing {', '.join(missing)}", where=str(path), fix=fix)
    return data


def run_id(path: Path) -> str | None:
    """The id in ``path``'s run marker, or None when ``path`` is not an edgecompress run directory."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker.get("run_id") if isinstance(marker, dict) and marker.get("tool") == "edgecompress" else None


def is_run_dir(path: Path) -> bool:
    return run_id(path) is not None


def has_baseline(path: Path) -> bool:
    """Whether the run in ``path`` got as far as saving its baseline (else it holds nothing worth keeping)."""
    try:
        return int(json.loads((path / STATE).read_text()).get("completed", -1)) >= 0
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def child(out: Path, *parts: str) -> Path:
    """``out / parts``, refused when it would leave ``out`` (``..``, absolute parts, symlinks out)."""
    path = out.joinpath(*parts)
    if not path.resolve().is_relative_to(out.resolve()):
        raise EdgeCompressError(f"refusing to write outside the run directory: {'/'.join(parts)!r}", where=str(out),
                                fix="stage names must be plain names such as `prune-1` (no `/`, `..`)")
    return path


def stage_dir(out: Path, index: int, name: str) -> Path:
    path = child(out, "stages", f"{index:02d}-{name}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, path) from None
    return path


def check_target(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse a run directory that cannot be used, before anything is loaded or written."""
    if out.is_symlink():
        raise EdgeCompressError("--out is a symbolic link; edgecompress does not write through links",
                                where=str(out), fix="pass the real directory, or another --out")
    if out.exists() and not out.is_dir():
        raise EdgeCompressError("--out is a file, not a directory", where=str(out), fix="choose another --out")
    if resume:
        if not (out / STATE).is_file():
            raise EdgeCompressError("no run to resume here (state.json missing)", where=str(out),
                                    fix="pass the directory of an earlier `edgecompress run`, or drop --resume")
        if not is_run_dir(out):
            raise EdgeCompressError(f"not an edgecompress run directory ({MARKER} missing)", where=str(out),
                                    fix="pass the directory of an `edgecompress run` made by this version")
        return
    if not out.exists() or not any(out.iterdir()):
        return
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise EdgeCompressError("refusing to replace the directory you are working in", where=str(out),
                                fix="choose another --out, or run from outside it")
    if is_run_dir(out) and not has_baseline(out):
        return  # an earlier run that failed before its baseline: nothing of value, replaced without --force
    if not force:
        raise EdgeCompressError("run directory already exists", where=str(out),
                                fix="use --resume to continue it, --force to replace it, or another --out")
    if not is_run_dir(out):
        raise EdgeCompressError(
            f"refusing to --force over a directory that edgecompress did not create ({MARKER} missing)",
            where=str(out), fix="choose another --out (--force only replaces edgecompress run directories)")


class Workspace:
    """The run directory for the life of one run: created (or an old run moved aside), locked, and on
    failure before the baseline exists, put back as it was. Use as a context manager."""

    def __init__(self, out: Path, *, resume: bool):
        self.out, self.resume = out, resume
        self.aside: Path | None = None
        self.created = False
        self._lock_fd: int | None = None

    def __enter__(self) -> Workspace:
        try:
            self._open()
        except OSError as err:
            self._release()
            raise os_error(err, self.out) from None
        return self

    def _open(self) -> None:
        if not self.resume and self.out.exists() and any(self.out.iterdir()):
            self._lock()  # the old run must not be live while it is moved aside
            self.aside = self.out.with_name(f"{_ASIDE}{self.out.name}-{os.getpid()}-{int(time.time())}")
            os.rename(self.out, self.aside)
            self._release()
        if not self.out.exists():
            self.out.mkdir(parents=True)
            self.created = True
        self._lock()
        if not self.resume:
            write_json(self.out / MARKER, {"tool": "edgecompress", "run_id": uuid.uuid4().hex,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def _lock(self) -> None:
        fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EdgeCompressError(f"run directory is in use by another edgecompress process (PID {holder})",
                                    where=str(self.out),
                                    fix="wait for that run to finish (or stop it), or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def baseline_saved(self) -> None:
        """The new run has its baseline: the replaced run is no longer needed."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def __exit__(self, kind, error, tb) -> None:
        self._release()
        if error is None or has_baseline(self.out):
            self.baseline_saved()
            return
        if self.aside is not None:  # failed before its baseline: the old run comes back
            shutil.rmtree(self.out, ignore_errors=True)
            os.rename(self.aside, self.out)
        elif self.created and not self.resume:
            shutil.rmtree(self.out, ignore_errors=True)
