"""A Prefect API for a run: the user's server if ``PREFECT_API_URL`` is set, else a local one.

Dask process workers need a real server: with none, each worker starts its own
temporary server (13-20 s per run, stack.md). The local server's home is kept in
the store, so its database keeps the history of the store's runs.

The server lifecycle is three modules with this one as its face (:func:`prefect_api`,
:func:`drain_prefect_queues`): :mod:`~taskgrouping.flows.serverproc` (one server
process: environment, database template, health, stopping), :mod:`~taskgrouping.flows.keeper`
(a store's shared server, built on serverproc) and this module (the run's choice of API,
built on both). Nothing imports back up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from taskgrouping.flows.serverproc import (  # noqa: F401  (the face re-exports the process parts)
    CACHE_ENV,
    DB_URL_VARS,
    MIGRATE_VARS,
    _alive,
    _cmdline,
    _die_with_parent,
    _start_time,
    drop_template,
    free_port,
    save_template,
    seed_database,
    server_env,
    stop_process_group,
    template_path,
    wait_healthy,
)

if TYPE_CHECKING:
    from taskgrouping.flows.keeper import Ahead

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
