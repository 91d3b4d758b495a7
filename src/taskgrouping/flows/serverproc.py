"""One Prefect server process: its environment, its database template, starting checks and stopping.

The parts :mod:`taskgrouping.flows.server` (the face: which API a run uses) and
:mod:`taskgrouping.flows.keeper` (a store's shared server) both build on; this module
imports neither. A new store's server would create and migrate its database first
(about 5 s of its 7-8 s start on 2 cores). The first server started on a machine
leaves a copy of its empty, migrated database in the user's cache
(:func:`template_path`, one per Prefect version); a new store's database starts as a
copy of it. A template the server rejects is dropped and the server starts again on a
new database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

DB_URL_VARS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")
CACHE_ENV = "TASKGROUPING_CACHE_DIR"


def template_path() -> Path | None:
    """The cached empty Prefect database for new stores; None when the user chose another database."""
    if any(os.environ.get(v) for v in DB_URL_VARS):
        return None
    from importlib.metadata import version

    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "taskgrouping")
    return Path(root) / f"prefect-{version('prefect')}-empty.db"


def seed_database(home: Path) -> bool:
    """Start ``home``'s database as a copy of the template, if it has none and a template exists."""
    tpl = template_path()
    db = home / "prefect.db"
    if tpl is None or db.exists() or not tpl.is_file():
        return False
    tmp = home / f".prefect.db.{os.getpid()}.tmp"
    try:
        shutil.copyfile(tpl, tmp)
        os.replace(tmp, db)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def save_template(home: Path) -> None:
    """Keep a consistent copy of ``home``'s new database as the template (no run has used it yet).

    Best effort: a cache that cannot be written costs the next store its migration, nothing else.
    """
    tpl = template_path()
    db = home / "prefect.db"
    if tpl is None or tpl.exists() or not db.is_file():
        return
    tmp = tpl.with_name(f".{tpl.name}.{os.getpid()}.tmp")
    try:
        tpl.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
        os.replace(tmp, tpl)
    except (OSError, sqlite3.Error):
        tmp.unlink(missing_ok=True)


def drop_template(home: Path) -> None:
    """Forget a template the server would not start on, and the database copied from it."""
    tpl = template_path()
    if tpl is not None:
        tpl.unlink(missing_ok=True)
    for name in ("prefect.db", "prefect.db-wal", "prefect.db-shm"):
        (home / name).unlink(missing_ok=True)
    logging.getLogger("taskgrouping").warning("the cached empty Prefect database was rejected; "
                                              "starting on a new one")


MIGRATE_VARS = ("PREFECT_SERVER_DATABASE_MIGRATE_ON_START", "PREFECT_API_DATABASE_MIGRATE_ON_START")


def server_env(home: Path, port: int, ui: bool = False, seeded: bool = False) -> dict[str, str]:
    """The environment of ``prefect server start`` for ``home`` on ``port`` (loopback, no analytics).

    ``seeded``: the database is a fresh copy of the template (:func:`seed_database`), migrated
    by this very Prefect version (the template's name holds it), so the server skips the
    migration check at start (0.3 s of its 3 s on 2 cores), unless you set it yourself.
    """
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_API_PORT=str(port),
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="true" if ui else "false")
    env.pop("PREFECT_API_URL", None)
    if seeded and not any(v in os.environ for v in MIGRATE_VARS):
        env[MIGRATE_VARS[0]] = "false"
    return env


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(api_url: str, timeout: float = 90.0, proc: subprocess.Popen[bytes] | None = None,
                 alive: Callable[[], bool] | None = None) -> None:
    """Poll ``/health`` until the server answers; raise if it dies (``proc`` exits, ``alive()`` is false) or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {proc.returncode} before it was healthy")
        if alive is not None and not alive():
            raise RuntimeError("the Prefect server stopped before it was healthy")
        try:
            with urllib.request.urlopen(api_url + "/health", timeout=2):
                return
        except OSError:  # refused until it listens: cheap to ask often (its start is on the run's critical path)
            time.sleep(0.05)
    raise RuntimeError(f"the Prefect server at {api_url} was not healthy after {timeout:.0f} s")


def _die_with_parent(parent: int) -> None:
    """In the server's process, before exec: be killed when the process that started it dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere :func:`reap_stale_servers` cleans
    up at the next start. If the parent already died, exit at once.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or _start_time(pid) in (None, start)


def _cmdline(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return None


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children; SIGKILL after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
