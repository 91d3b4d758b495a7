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
from typing import Any

from prefect import flow

from taskgrouping.config import RunConfig


def _name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"scheduled {p.get('data', '?')} {p.get('method', 'swola')}/{p.get('selector', 'graph')}"


@flow(name="regroup-scheduled", flow_run_name=_name, log_prints=False)
def scheduled_regroup(data: str = "builtin:digits", store: str = "./taskgrouping-store", method: str = "swola",
                      selector: str = "graph", groups: int | None = None, tasks: str | None = None,
                      samples: int = 512, seed: int = 0, workers: int = 2, max_epochs: int = 200,
                      evaluate: str = "all", features: str | None = None, lineage: str | None = None,
                      task_kinds: dict[str, str] | None = None, repeats: int = 1, regroup: str = "incremental",
                      config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Regroup ``data`` into the versioned store ``store``; returns the run summary.

    A relative ``store`` or data path is relative to the deployment's working
    directory (the folder ``prefect deploy`` ran in, for a process work pool).
    ``task_kinds`` maps a task name or glob to its kind (``--task-kind``); ``repeats``
    trains every setting that many times (``--repeats``); ``regroup`` is ``--regroup``. ``config``,
    a whole :class:`RunConfig` as a dict (what ``taskgrouping serve`` passes, so that
    every ``run`` option is available), replaces every other parameter.
    Prints one line per run: the version and what changed.
    """
    from dataclasses import replace
    from pathlib import Path

    from taskgrouping.flows.regroup import run_regroup
    from taskgrouping.report import run_line

    if config is not None:
        cfg = RunConfig.from_dict(config)
    else:
        if not data.startswith("builtin:"):
            data = str(Path(data).expanduser().resolve())
        cfg = RunConfig(data=data, tasks=tasks, features=features, method=method, selector=selector,
                        groups=groups, samples=samples, seed=seed, store=str(Path(store).expanduser().resolve()),
                        workers=workers, evaluate=evaluate,  # type: ignore[arg-type]  # checked in RunConfig
                        lineage=lineage, repeats=repeats, regroup=regroup,  # type: ignore[arg-type]
                        task_kinds=tuple((task_kinds or {}).items()))
        cfg = replace(cfg, train=replace(cfg.train, max_epochs=max_epochs))
    cfg.check_data()
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    summary = run_regroup(cfg, run_id)
    print(run_line(summary), flush=True)
    return summary


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
