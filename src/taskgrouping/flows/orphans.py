"""No run is left Running without a process behind it (issue 26).

A run killed with ``kill -9`` (or a flow process a worker lost) leaves its flow run,
its ``regroup`` subflow and its task runs Running in the API for ever: nothing but the
process itself ever moves them on. So every flow run of ours leaves an *owner record*
in the store while it runs, ``<store>/prefect/owners/<flow run id>.json``: the pid
(and its kernel start time, which tells a live process from a reused pid), the API it
reports to, and whether that is the store's own server.

A record whose owner is dead is *swept*: the flow run, its subflows and its task runs
that are not in a final state are set to Crashed (``force``, through the REST API),
then the record is removed. Sweeps run

* in the store's server keeper, every :data:`SWEEP_EVERY` s (a killed run's states
  are right within seconds, not at the next run);
* at the start of every run on the store (the store's own server or yours);
* when a run ends in its own process (:func:`release`: a run stopped by a signal
  leaves task runs Running on the workers it closed).

On your own server, Prefect's heartbeats and its zombie-run automation cover flow runs
that no later run on the store would sweep (``deployments/README.md``).

Only the standard library here (and :mod:`~taskgrouping.flows.serverproc`'s pid checks): the keeper
imports this, and it stays a small process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from taskgrouping.flows.serverproc import _alive, _start_time

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
UNFINISHED = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
SWEEP_EVERY = 5.0
"""Seconds between the keeper's sweeps."""

MESSAGE = "the process running this (pid {pid}) is gone: killed, or lost by its worker (taskgrouping)"
STOPPED = "the run (pid {pid}) stopped before this finished: a signal or an error (taskgrouping)"


def owners_dir(store: str | os.PathLike[str]) -> Path:
    """Where a store's owner records are: ``<store>/prefect/owners``."""
    return Path(store) / "prefect" / "owners"


def own_server(store: str | os.PathLike[str]) -> bool:
    """Whether this process talks to the store's own server (``prefect_api`` points ``PREFECT_HOME`` at it)."""
    return os.environ.get("PREFECT_HOME") == str(Path(store) / "prefect" / "home")


def claim(store: str | os.PathLike[str], flow_run_id: str, api: str) -> Path:
    """Record this process as the owner of ``flow_run_id`` (atomically: a temporary file, then a rename)."""
    folder = owners_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = folder / f"{flow_run_id}.json"
    tmp = folder / f".{flow_run_id}.{pid}.tmp"
    tmp.write_text(json.dumps({"flow_run": flow_run_id, "pid": pid, "start": _start_time(pid), "api": api,
                               "own": own_server(store)}))
    os.replace(tmp, path)
    return path


def claim_current(store: str | os.PathLike[str]) -> Path | None:
    """:func:`claim` the flow run this code runs in (None outside a flow run or without an API)."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    run_id = flow_run.id
    if not api or not run_id:
        return None
    return claim(store, str(run_id), str(api))


def _call(api: str, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _crash(api: str, kind: str, run_id: str, message: str) -> None:
    _call(api, "POST", f"/{kind}/{run_id}/set_state",
          {"state": {"type": "CRASHED", "name": "Crashed", "message": message}, "force": True})


def crash_unfinished(api: str, flow_run_id: str, message: str) -> list[str]:
    """Set the flow run, its subflow runs and their task runs that are not final to Crashed; their names."""
    marked: list[str] = []
    todo, seen = [flow_run_id], set()
    while todo:
        fid = todo.pop()
        if fid in seen:
            continue
        seen.add(fid)
        try:
            run = _call(api, "GET", f"/flow_runs/{fid}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # another database (a store's server that was replaced): nothing to mark
                continue
            raise
        if run.get("state_type") in UNFINISHED:
            _crash(api, "flow_runs", fid, message)
            marked.append(run.get("name") or fid)
        tasks = _call(api, "POST", "/task_runs/filter", {"task_runs": {
            "flow_run_id": {"any_": [fid]}, "state": {"type": {"any_": list(UNFINISHED)}}}})
        for t in tasks:
            _crash(api, "task_runs", t["id"], message)
            marked.append(t.get("name") or t["id"])
        children = _call(api, "POST", "/flow_runs/filter",
                         {"flow_runs": {"parent_flow_run_id": {"any_": [fid]}}})
        todo += [c["id"] for c in children]
    return marked


def _records(store: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    folder = owners_dir(store)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(path.read_text())
            int(info["pid"])
            str(info["flow_run"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        out.append((path, info))
    return out


def _reachable(info: dict[str, Any], api: str, own: bool) -> bool:
    """Whether ``api`` holds the record's flow run: the store's own server (any port) or the same URL."""
    return bool(info.get("own")) if own else (not info.get("own") and info.get("api") == api)


def sweep(store: str | os.PathLike[str], api: str, own: bool, pid: int | None = None,
          keep: frozenset[str] = frozenset()) -> list[str]:
    """Crash what the records of dead owners (or, with ``pid``, of that process) left unfinished; remove them.

    ``keep``: flow run ids not to touch (the ones running in this very process). A record
    whose API does not answer is kept for a later sweep. Returns the runs marked.
    """
    marked: list[str] = []
    for path, info in _records(store):
        owner = int(info["pid"])
        if info["flow_run"] in keep or not _reachable(info, api, own):
            continue
        if (owner != pid) if pid is not None else _alive(owner, info.get("start")):
            continue
        try:
            marked += crash_unfinished(api, str(info["flow_run"]), (MESSAGE if pid is None else STOPPED).format(pid=owner))
        except (OSError, ValueError) as exc:  # the API is down or answered oddly: try again later
            logging.getLogger("taskgrouping").debug("sweep of %s failed: %s", path.name, exc)
            continue
        path.unlink(missing_ok=True)
    if marked:
        logging.getLogger("taskgrouping").warning(
            "marked %d runs Crashed that a dead process had left Running: %s", len(marked), ", ".join(marked[:6]))
    return marked


def running_here() -> frozenset[str]:
    """The flow run active in this process's context, if any (a subflow has returned by the time we ask)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return frozenset() if ctx is None or ctx.flow_run is None else frozenset({str(ctx.flow_run.id)})


def sweep_at_start(store: str | os.PathLike[str]) -> list[str]:
    """At the start of a run: sweep the store's records of dead owners on the API this run uses."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        return []
    with contextlib.suppress(Exception):  # best effort: a sweep never fails a run
        return sweep(store, str(api), own_server(store))
    return []


def release(store: str | os.PathLike[str]) -> list[str]:
    """As a run ends in this process: crash what it left unfinished (a signal) and remove its records.

    The flow run still active here (the scheduled flow around ``regroup``) is kept.
    """
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        return []
    with contextlib.suppress(Exception):
        return sweep(store, str(api), own_server(store), pid=os.getpid(), keep=running_here())
    return []
