"""A Prefect API for a run: the user's server if ``PREFECT_API_URL`` is set, else a local one.

Dask process workers need a real server: with none, each worker starts its own
temporary server (13-20 s per run, stack.md). The local server's home is kept in
the store, so its database keeps the history of the store's runs.

A new store's server would create and migrate its database first (about 5 s of its
7-8 s start on 2 cores). The first server started on a machine leaves a copy of its
empty, migrated database in the user's cache (:func:`template_path`, one per Prefect
version); a new store's database starts as a copy of it. A template the server
rejects is dropped and the server starts again on a new database.
"""

from __future__ import annotations

import contextlib
import json
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskgrouping.flows.keeper import Ahead

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


def reap_stale_servers(home: Path) -> list[int]:
    """Kill local servers of ``home`` whose owner (the run that started them) is dead; return their pids.

    Each server started here leaves ``home/servers/<pid>.json`` (its pid, command line,
    owner pid and start times) until it is stopped. A record whose owner is gone
    belongs to a crashed run (``kill -9``) whose server survived; the server is killed
    if the pid still runs the recorded command, and the record is removed. Servers of
    live runs (concurrent runs on one store) are left alone.
    """
    reaped: list[int] = []
    folder = home / "servers"
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(record.read_text())
            pid, owner = int(info["pid"]), int(info["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if _alive(owner, info.get("owner_start")):
            continue
        if _alive(pid, info.get("start")) and _cmdline(pid) in (None, info.get("cmdline")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            reaped.append(pid)
        record.unlink(missing_ok=True)
    return reaped


@contextlib.contextmanager
def local_server(home: Path, ui: bool = False,
                 while_starting: Callable[[str], None] | None = None) -> Iterator[str]:
    """Run ``prefect server start`` on a free loopback port (database under ``home``); yield its API URL.

    The server runs in its own process group and is stopped by its PID on exit,
    also when the body raises. It is killed by the kernel if this process dies
    (``kill -9`` included), and a server that outlived an older crash is reaped
    first (:func:`reap_stale_servers`). The caller's environment is not changed.
    ``while_starting(api_url)`` runs while the server boots in its own process (work that
    does not need the API yet, such as starting Dask workers).
    """
    home.mkdir(parents=True, exist_ok=True)
    reaped = reap_stale_servers(home)
    if reaped:
        logging.getLogger("taskgrouping").info("stopped %d Prefect servers left by crashed runs (pids %s)",
                                               len(reaped), ", ".join(map(str, reaped)))
    port = free_port()
    log = open(home / "server.log", "ab")
    cmd = [sys.executable, "-m", "prefect", "server", "start"]
    parent = os.getpid()
    record = home / "servers" / "pending.json"

    def spawn() -> subprocess.Popen[bytes]:
        nonlocal record
        env = server_env(home, port, ui, seeded)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: _die_with_parent(parent))
        record.unlink(missing_ok=True)
        record = home / "servers" / f"{proc.pid}.json"
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps({"pid": proc.pid, "cmdline": cmd, "start": _start_time(proc.pid),
                                      "owner": parent, "owner_start": _start_time(parent), "port": port}))
        return proc

    seeded = seed_database(home)
    proc = spawn()
    url = f"http://127.0.0.1:{port}/api"
    try:
        if while_starting is not None:
            while_starting(url)
        try:
            wait_healthy(url, proc=proc)
        except RuntimeError:
            if not seeded:
                raise
            stop_process_group(proc)
            drop_template(home)
            seeded = False  # before the spawn: a new database needs its migrations
            proc = spawn()
            wait_healthy(url, proc=proc)
        if not seeded:
            save_template(home)
        yield url
    finally:
        stop_process_group(proc)
        record.unlink(missing_ok=True)
        log.close()


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


@contextlib.contextmanager
def shared_server(home: Path, idle: float, while_starting: Callable[[str], None] | None = None,
                  ahead: Ahead | None = None) -> Iterator[str]:
    """The store's shared local server (:mod:`taskgrouping.flows.keeper`): reused if running, else started.

    A started one outlives this run by ``idle`` seconds, for the next run of the store.
    ``while_starting(api_url)`` runs while a new server boots. ``ahead``: a keeper this
    run started already (:func:`~taskgrouping.flows.keeper.start_ahead`), used unless
    another run's server got there first.
    """
    from taskgrouping.flows import keeper as kp

    home.mkdir(parents=True, exist_ok=True)
    with kp.server_lock(home):
        info = kp.read_record(home)
        proc = None
        if ahead is not None and not ahead.adopted:
            ahead.adopted = True
            mine = info is None or int(info["keeper"]) == ahead.proc.pid  # type: ignore[call-overload]
            if ahead.proc.poll() is None and mine:
                proc, info = ahead.proc, None
            else:  # it died, or another run's server is up: use that one
                with contextlib.suppress(ProcessLookupError):
                    ahead.proc.terminate()
        if proc is None and info is None:
            proc = kp.start_keeper(home, idle)
        user = kp.register(home)  # from here on the keeper does not stop the server
    try:
        if proc is not None:
            info = kp.wait_record(home, proc)
            logging.getLogger("taskgrouping").info(
                "started a Prefect server for this store; it stays up %.0f s after the last run (%s)", idle,
                kp.IDLE_ENV)
        assert info is not None
        url = f"http://127.0.0.1:{info['port']}/api"
        if proc is not None and while_starting is not None:
            while_starting(url)
        kp.wait_ready(home, int(info["keeper"]))  # type: ignore[call-overload]
        wait_healthy(url, alive=lambda: kp.read_record(home) is not None)
        yield url
    finally:
        with kp.server_lock(home):
            user.unlink(missing_ok=True)
            kp.touch(home)


@contextlib.contextmanager
def prefect_api(home: Path, ui: bool = False, while_starting: Callable[[str], None] | None = None,
                ahead: Ahead | None = None) -> Iterator[str]:
    """Yield an API URL: ``PREFECT_API_URL`` if set, else the store's :func:`shared_server`.

    With ``TASKGROUPING_SERVER_IDLE=0`` (and for the UI) a private :func:`local_server`
    runs for the duration instead.

    While a local server runs, ``PREFECT_API_URL`` and ``PREFECT_HOME`` point at it (from
    the moment its port is known, so that ``while_starting`` sees them too).
    """
    existing = os.environ.get("PREFECT_API_URL")
    if ahead is not None and (existing or ui):
        ahead.abandon()
    if existing:
        if while_starting is not None:
            while_starting(existing)
        yield existing
        return
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}

    def starting(url: str) -> None:
        os.environ["PREFECT_API_URL"] = url
        os.environ["PREFECT_HOME"] = str(home)
        if while_starting is not None:
            while_starting(url)

    from taskgrouping.flows.keeper import idle_seconds

    idle = 0.0 if ui else idle_seconds()
    if ahead is not None and idle == 0:
        ahead.abandon()
    try:
        with local_server(home, ui, starting) if idle == 0 else shared_server(home, idle, starting, ahead) as url:
            yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def drain_prefect_queues() -> None:
    """Send queued logs and events to the API before the server they go to is stopped.

    Otherwise Prefect's background workers keep retrying at interpreter exit.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    with contextlib.suppress(Exception):
        APILogHandler().flush()
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=10)
