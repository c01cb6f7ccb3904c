"""A private PostgreSQL server for tests and benchmarks: ``initdb`` into a temporary folder, ``pg_ctl`` start on
127.0.0.1 at a free port, stop and delete on exit. As root it runs as ``nobody`` (initdb refuses root)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

BINARIES = ("initdb", "pg_ctl")


def missing() -> str | None:
    """Why no server can start here (None when one can)."""
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return f"PostgreSQL binaries not on the PATH: {', '.join(absent)} (install PostgreSQL 15 to run this test)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A running server; yields the SQLAlchemy URL of its ``postgres`` database (through psycopg2)."""
    root = tempfile.mkdtemp(prefix="edgecompress-pg-")
    os.chmod(root, 0o755)
    data, port = os.path.join(root, "data"), free_port()
    os.mkdir(data, 0o700)
    run_as: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
        run_as = ["runuser", "-u", "nobody", "--"]

    def pg(*args: str) -> None:
        subprocess.run([*run_as, *args], check=True, capture_output=True, cwd=root)

    pg("initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
    pg("pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-o", options, "-w", "start")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
