"""A store's shared local Prefect server: started by the first run, reused by the next, stopped when idle.

Starting a Prefect server costs 3-9 s (stack.md); a user rerunning ``taskgrouping run``
on one store paid it every time. The first run now starts a *keeper* process, detached
from the run, which starts the server and records it in ``<home>/shared-server.json``.
Later runs of the store find the record, check the server answers, and use it. Each run
registers itself in ``<home>/users/<pid>.json`` while it uses the server and touches
``<home>/shared-server.used`` when it starts and ends. Every few seconds the keeper
marks Crashed what runs that died left Running (:mod:`taskgrouping.flows.orphans`). It stops the server once
no live run uses it and the last use is ``idle`` seconds old, and stops with it; the
server dies with its keeper (``PR_SET_PDEATHSIG`` on Linux).

Every decision to use or to stop the server is taken under one file lock
(``<home>/.server.lock``), so a run never registers with a server that is stopping.

``TASKGROUPING_SERVER_IDLE`` sets ``idle`` (seconds, default :data:`DEFAULT_IDLE`);
0 gives each run a private server stopped when it ends, as before.

    python -m taskgrouping.flows.keeper HOME IDLE
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from taskgrouping.flows import orphans
from taskgrouping.flows.serverproc import (
    _alive,
    _die_with_parent,
    _start_time,
    drop_template,
    free_port,
    save_template,
    seed_database,
    server_env,
    stop_process_group,
    wait_healthy,
)

DEFAULT_IDLE = 180.0
"""Seconds a store's shared server waits for another run before it stops.

Each store's server holds about 235 MB; at 600 s six were up at once in an hour of
trying stores (issue 26). 180 s still serves the rerun a user makes after reading a
report or editing a table, and frees the memory three times sooner. One server for
every store was not chosen: each store keeps its runs' history in its own database,
and a store copied or removed takes its history with it.
"""

IDLE_ENV = "TASKGROUPING_SERVER_IDLE"
RECORD = "shared-server.json"
USED = "shared-server.used"
POLL = 1.0


def idle_seconds() -> float:
    """``TASKGROUPING_SERVER_IDLE`` as seconds (default :data:`DEFAULT_IDLE`); a bad value is an error naming it."""
    raw = os.environ.get(IDLE_ENV)
    if raw is None or raw == "":
        return DEFAULT_IDLE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        from taskgrouping.errors import InputError

        raise InputError(f"{IDLE_ENV}={raw!r}: need a number of seconds >= 0 (0: a private server per run)")
    return value


@contextlib.contextmanager
def server_lock(home: Path) -> Iterator[None]:
    """The lock every use-or-stop decision about a store's shared server is taken under."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / ".server.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_record(home: Path) -> dict[str, object] | None:
    """The shared server's record if its keeper and server are alive, else None (a stale record is removed)."""
    path = home / RECORD
    try:
        info = json.loads(path.read_text())
        keeper, server = int(info["keeper"]), int(info["server"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if _alive(keeper, info.get("keeper_start")) and _alive(server, info.get("server_start")):
        return dict(info)
    path.unlink(missing_ok=True)
    return None


def _users(home: Path) -> list[int]:
    """Live runs registered as users of the shared server (records of dead ones are removed)."""
    live = []
    folder = home / "users"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(path.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _alive(pid, info.get("start")):
            live.append(pid)
        else:
            path.unlink(missing_ok=True)
    return live


def touch(home: Path) -> None:
    """Mark the shared server as used now (its idle time counts from the last touch)."""
    (home / USED).touch()


def register(home: Path) -> Path:
    """Record this process as a user of the shared server (call under :func:`server_lock`)."""
    folder = home / "users"
    folder.mkdir(exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    path.write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
    touch(home)
    return path


def start_keeper(home: Path, idle: float) -> subprocess.Popen[bytes]:
    """Start a detached keeper for ``home`` (call under :func:`server_lock`); it writes the record when its server runs."""
    log = open(home / "server.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "taskgrouping.flows.keeper", str(home), str(idle)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ))
    finally:
        log.close()


def wait_record(home: Path, keeper: subprocess.Popen[bytes], timeout: float = 30.0) -> dict[str, object]:
    """The record a new keeper writes once its server process runs (its port is known)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_record(home)
        if info is not None and int(info["keeper"]) == keeper.pid:  # type: ignore[call-overload]
            return info
        if keeper.poll() is not None:
            raise RuntimeError(f"the Prefect server keeper exited with status {keeper.returncode}; see {home}/server.log")
        time.sleep(0.05)
    raise RuntimeError(f"the Prefect server keeper wrote no record in {timeout:.0f} s; see {home}/server.log")


@dataclass
class Ahead:
    """A keeper a run started before it checked its arguments and data (:func:`start_ahead`).

    :func:`~taskgrouping.flows.server.shared_server` adopts it; a run that stops before
    (bad input, exit 2) calls :meth:`abandon`, which stops it and removes the folder it made.
    """

    home: Path
    proc: subprocess.Popen[bytes]
    made: Path | None
    """The topmost folder that did not exist before (the store, or above it, on a new store)."""
    adopted: bool = False

    def abandon(self) -> None:
        """Stop the keeper (and its server, if it got that far) and remove what it made; no-op once adopted."""
        if self.adopted:
            return
        self.adopted = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.made is not None:
            shutil.rmtree(self.made, ignore_errors=True)


def start_ahead(home: Path) -> Ahead | None:
    """Start the shared server of a store (its Prefect home ``home``) now, if it is down.

    The CLI calls this first thing: the server's 3 s start then overlaps the 1.5-2 s of
    imports and data checks before the run needs it. None when the run will not use a
    shared server (``PREFECT_API_URL`` set, ``TASKGROUPING_SERVER_IDLE`` 0 or bad), when
    one is up, or when the store path cannot hold one (the run's checks then say why).
    """
    from taskgrouping.errors import InputError

    if os.environ.get("PREFECT_API_URL"):
        return None
    try:
        idle = idle_seconds()
    except InputError:
        return None
    if idle == 0:
        return None
    made = None
    for path in (home, *home.parents):
        if path.exists():
            if not path.is_dir():
                return None
            break
        made = path
    try:
        with server_lock(home):
            proc = start_keeper(home, idle) if read_record(home) is None else None
    except OSError:
        proc = None
    if proc is None:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        return None
    return Ahead(home, proc, made)


def keep(home: Path, idle: float) -> int:
    """The keeper's body: start the server, record it, stop it once idle (or when it dies)."""
    port = free_port()
    me = os.getpid()

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "prefect", "server", "start"],
                                env=server_env(home, port, seeded=seeded),
                                start_new_session=True, preexec_fn=lambda: _die_with_parent(me))

    seeded = seed_database(home)
    server = spawn()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def publish(ready: bool) -> None:
        record = {"keeper": me, "keeper_start": _start_time(me), "server": server.pid,
                  "server_start": _start_time(server.pid), "port": port, "idle": idle, "ready": ready}
        with server_lock(home):
            tmp = home / f".{RECORD}.{me}.tmp"
            tmp.write_text(json.dumps(record))
            os.replace(tmp, home / RECORD)
            touch(home)

    publish(False)  # runs learn the port now (and start their workers while the server boots)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, proc=server, alive=lambda: not stopping)
    except RuntimeError:
        if seeded and not stopping:  # the template was rejected: once more on a new database
            stop_process_group(server)
            drop_template(home)
            seeded = False  # before the spawn: a new database needs its migrations
            server = spawn()
            publish(False)
            with contextlib.suppress(RuntimeError):
                wait_healthy(url, proc=server, alive=lambda: not stopping)
    if server.poll() is None and not stopping:
        if not seeded:
            save_template(home)  # before any run is let in: the copy holds no runs
        publish(True)
    store = home.parent.parent  # home is <store>/prefect/home
    swept = time.monotonic()
    try:
        while not stopping and server.poll() is None:
            time.sleep(POLL)
            if not home.is_dir():  # the store was removed
                break
            if time.monotonic() - swept >= orphans.SWEEP_EVERY:  # runs whose process died: Crashed
                swept = time.monotonic()
                orphans.sweep(store, url, own=True)
            with server_lock(home):
                used = (home / USED).stat().st_mtime if (home / USED).exists() else 0.0
                if not _users(home) and time.time() - used >= idle:
                    (home / RECORD).unlink(missing_ok=True)  # no run finds it from now on
                    break
    finally:
        if home.is_dir():
            with server_lock(home):
                info = read_record(home)
                if info is not None and info.get("keeper") == me:
                    (home / RECORD).unlink(missing_ok=True)
        stop_process_group(server)
    return 0


def wait_ready(home: Path, keeper: int, timeout: float = 90.0) -> None:
    """Wait until the keeper ``keeper`` says its server is ready for runs (raise if it goes away)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_record(home)
        if info is None or int(info["keeper"]) != keeper:  # type: ignore[call-overload]
            raise RuntimeError(f"the store's Prefect server stopped before it was ready; see {home}/server.log")
        if info.get("ready", True):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the store's Prefect server was not ready after {timeout:.0f} s; see {home}/server.log")


def stop_shared(home: Path, timeout: float = 30.0) -> bool:
    """Stop the store's shared server now (its keeper stops it as if idle); whether one was running."""
    info = read_record(home)
    if info is None:
        return False
    pid = int(info["keeper"])  # type: ignore[call-overload]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and read_record(home) is not None:
        time.sleep(0.1)
    return True


if __name__ == "__main__":
    sys.exit(keep(Path(sys.argv[1]), float(sys.argv[2])))
