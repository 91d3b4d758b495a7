"""The deployable entry flow: plain, editable parameters -> a validated run of ``regroup``.

``prefect.yaml`` and ``taskgrouping serve`` schedule this flow. It builds the
:class:`~taskgrouping.config.RunConfig` (the same checks as the CLI), validates the
data before anything is written, and runs ``regroup`` as a subflow on its Dask task
runner, so each scheduled run appears in the UI with the ``regroup`` run, its steps
and its artifacts beneath it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow

from taskgrouping.config import RunConfig
from taskgrouping.errors import InputError
from taskgrouping.versions import data_label

DEFAULTS: dict[str, Any] = {"data": "builtin:digits", "store": "./taskgrouping-store", "method": "swola",
                             "selector": "graph", "samples": 512, "seed": 0, "workers": 2, "max_epochs": 200,
                             "evaluate": "all", "repeats": 1, "regroup": "incremental"}
"""What a parameter left at ``null`` means when no ``config`` is given (the flow's defaults)."""

PATHS = ("data", "store")


def _given(params: dict[str, Any]) -> dict[str, Any]:
    """The simple parameters a run was given (not ``null``): each one overrides ``config``'s field."""
    return {k: v for k, v in params.items() if k != "config" and v is not None}


def effective(params: dict[str, Any]) -> dict[str, Any]:
    """The data, method and selector a run with these parameters runs: the given ones, else ``config``'s, else the defaults."""
    config = params.get("config") or {}
    given = _given(params)
    return {k: given.get(k, config.get(k, DEFAULTS.get(k))) for k in ("data", "method", "selector")}


def _name() -> str:
    from prefect.runtime import flow_run

    e = effective(dict(flow_run.parameters))
    return f"scheduled {data_label(e['data'])} {e['method']}/{e['selector']}"


def build_config(params: dict[str, Any]) -> RunConfig:
    """The run's :class:`RunConfig`: ``config`` (or the defaults), with every given parameter on top.

    A triggered run of a served deployment (whose only parameter is ``config``) with
    ``--param data=OTHER`` runs OTHER: a given parameter always wins over ``config``.
    Relative paths are resolved against the working directory. ``groups`` takes ``auto``
    (or ``null`` without ``config``) for the automatic count.
    """
    from dataclasses import replace

    given = _given(params)
    for key in PATHS:
        if key in given and not (key == "data" and str(given[key]).startswith("builtin:")):
            given[key] = str(Path(str(given[key])).expanduser().resolve())
    if params.get("config") is not None:
        base = RunConfig.from_dict(params["config"])
    else:
        base = RunConfig(data=given.get("data", DEFAULTS["data"]),
                         store=given.get("store", str(Path(DEFAULTS["store"]).resolve())))
        given = {**{k: v for k, v in DEFAULTS.items() if k not in PATHS}, **given}
    if "groups" in given:
        groups = given["groups"]
        if isinstance(groups, str):
            if groups.strip().lower() != "auto":
                raise InputError(f"parameter groups={groups!r}: need a whole number or 'auto'")
            groups = None
        given["groups"] = groups
    if "task_kinds" in given:
        given["task_kinds"] = tuple(dict(given["task_kinds"]).items())
    max_epochs = given.pop("max_epochs", None)
    cfg = replace(base, **given)
    if max_epochs is not None:
        cfg = replace(cfg, train=replace(cfg.train, max_epochs=int(max_epochs)))
    return cfg


@flow(name="regroup-scheduled", flow_run_name=_name, log_prints=False)
def scheduled_regroup(data: str | None = None, store: str | None = None, method: str | None = None,
                      selector: str | None = None, groups: int | str | None = None, tasks: str | None = None,
                      samples: int | None = None, seed: int | None = None, workers: int | None = None,
                      max_epochs: int | None = None, evaluate: str | None = None, features: str | None = None,
                      lineage: str | None = None, task_kinds: dict[str, str] | None = None,
                      repeats: int | None = None, regroup: str | None = None, impute: str | None = None,
                      skip_unusable_tasks: bool | None = None,
                      config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Regroup ``data`` into the versioned store ``store``; returns the run summary.

    Every parameter left ``null`` takes ``config``'s value if ``config`` is given (a whole
    :class:`RunConfig` as a dict: what ``taskgrouping serve`` passes, so that every ``run``
    option is available), else its default (:data:`DEFAULTS`: ``builtin:digits``,
    ``./taskgrouping-store``, ``swola``, ``graph``, 512 samples, seed 0, 2 workers, 200
    epochs, ``evaluate=all``, 1 repeat, ``regroup=incremental``). A parameter that is
    given always wins over ``config``: a triggered run of a served deployment with
    ``--param data=OTHER`` runs OTHER.

    A relative ``store`` or data path is relative to the deployment's working
    directory (the folder ``prefect deploy`` ran in, for a process work pool).
    ``task_kinds`` maps a task name or glob to its kind (``--task-kind``); ``repeats``
    trains every setting that many times (``--repeats``); ``regroup`` is ``--regroup``;
    ``impute`` and ``skip_unusable_tasks`` are ``--impute`` and ``--skip-unusable-tasks``.
    Prints one line per run: the version and what changed.
    """
    from taskgrouping.flows import orphans
    from taskgrouping.flows.regroup import run_regroup
    from taskgrouping.report import run_line

    params = {k: v for k, v in locals().items() if k in _PARAMS}
    cfg = build_config(params)
    cfg.check_data()
    orphans.claim_current(cfg.store)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    summary = run_regroup(cfg, run_id)
    print(run_line(summary), flush=True)
    return summary


_PARAMS = ("data", "store", "method", "selector", "groups", "tasks", "samples", "seed", "workers", "max_epochs",
           "evaluate", "features", "lineage", "task_kinds", "repeats", "regroup", "impute", "skip_unusable_tasks",
           "config")


def serve_until_signal(flow_obj: Any, name: str, cron: str, parameters: dict[str, Any],
                       ready: Callable[[], None] | None = None) -> str:
    """Serve ``flow_obj`` on ``cron`` in this process until SIGINT or SIGTERM; return the signal's name.

    ``Flow.serve`` misses both when the process was started in the background (the shell
    leaves SIGINT ignored there) and answers SIGTERM from a handler that cannot await
    the runner's stop. Here both signals set an event on the event loop, and the
    runner is stopped (its schedule paused, as ``Flow.serve`` does) before returning.
    """
    import asyncio
    import signal

    from prefect.runner import Runner

    async def serve() -> str:
        runner = Runner(name=name, pause_on_shutdown=True)
        await runner.aadd_flow(flow_obj, name=name, cron=cron, parameters=parameters)
        started = asyncio.create_task(runner.start(webserver=False))
        await asyncio.sleep(0)  # the runner installs its own SIGTERM handler first; ours replace it
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[str] = asyncio.Queue()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, received.put_nowait, sig.name)
        for _ in range(600):  # the runner is ready once it has registered and started polling
            if runner.started or started.done() or not received.empty():
                break
            await asyncio.sleep(0.05)
        if ready is not None and runner.started:
            ready()
        waiter = asyncio.create_task(received.get())
        done, _ = await asyncio.wait({started, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if started in done:  # the runner stopped by itself: surface its error
            waiter.cancel()
            started.result()
            return "runner exit"
        if runner.started:
            await runner.astop()
        else:
            started.cancel()
        try:
            await asyncio.wait_for(started, timeout=30)
        except (TimeoutError, asyncio.CancelledError):
            pass
        return str(waiter.result())

    return asyncio.run(serve())
