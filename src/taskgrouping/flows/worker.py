"""What every Dask worker of a run's local cluster runs as it starts and as it closes (a Dask preload).

The run's workers are forked from one multiprocessing *forkserver* that has imported
torch, Prefect and the steps once (:data:`FORKSERVER_PRELOAD`), instead of each
spawning a new interpreter that imports them again: on 2 cores that was 5.5 s of CPU
while the Prefect server was also starting. A forked worker also ends without tearing
its interpreter down (closing a cluster took 0.8-1.7 s, now 0.05 s).

The forkserver may have started for an earlier run of the same process (tests,
``serve``, notebooks), so a worker must not keep two things it inherits from it:

* **the environment**: Dask sets the variables the run passed (:func:`worker_env`, a
  snapshot of the run's environment) on top of the forkserver's. Variables the
  snapshot lacks are removed here (a fault-injection setting of an earlier run, say);
* **Prefect's settings**, which Prefect built from the forkserver's environment when it
  was imported (``PREFECT_API_URL`` of an earlier run's server): rebuilt here from the
  worker's own environment, before any task runs.

On closing, the worker sends its queued Prefect events and logs (its task runs'
states and logs) before it exits, since a forked process skips Python's exit hooks.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import MutableMapping
from typing import Any

ENV_KEYS = "TASKGROUPING_WORKER_ENV"
"""The names of the variables of the run's environment snapshot (a JSON list)."""

FORKSERVER_PRELOAD = ("taskgrouping.flows.forkserver", "distributed", "taskgrouping.tasks.steps")
"""Imported once by the forkserver the workers are forked from: torch, Prefect and the steps."""


def worker_env() -> dict[str, str]:
    """The environment a run's workers get: this process's, with :data:`ENV_KEYS` naming its variables."""
    env = dict(os.environ)
    env[ENV_KEYS] = json.dumps(sorted([*env, ENV_KEYS]))
    return env


def keep_only_snapshot(environ: MutableMapping[str, str]) -> None:
    """Remove from ``environ`` the variables the run's snapshot lacks (inherited from an older forkserver).

    Variables Dask itself sets for workers (``distributed.nanny.pre-spawn-environ`` and
    ``distributed.nanny.environ``, and ``PYTHONHASHSEED``) are kept.
    """
    raw = environ.get(ENV_KEYS)
    if raw is None:  # not a run's worker (the module imported elsewhere): leave the environment alone
        return
    import dask

    keep = set(json.loads(raw)) | {"PYTHONHASHSEED"}
    for section in ("distributed.nanny.pre-spawn-environ", "distributed.nanny.environ"):
        keep |= set(dask.config.get(section, default={}) or {})
    for name in [k for k in environ if k not in keep]:
        del environ[name]


keep_only_snapshot(os.environ)


def ignore_sigint() -> None:
    """A run's worker ignores SIGINT: a ``kill -INT`` of the run's process group is the run's to handle.

    The run closes its workers as it stops (:mod:`taskgrouping.interrupt`); a worker that
    died of the signal by itself left its steps' results missing and printed a traceback.
    """
    import signal

    if ENV_KEYS in os.environ:
        with contextlib.suppress(ValueError):  # not the main thread: nothing to set
            signal.signal(signal.SIGINT, signal.SIG_IGN)


ignore_sigint()

import prefect.context  # noqa: E402

prefect.context.refresh_global_settings_context()  # Prefect's settings from this worker's environment

import taskgrouping.tasks.steps  # noqa: E402,F401  (the steps, before the first task)


async def dask_teardown(worker: Any) -> None:
    """Send this worker's queued Prefect events and logs before it exits (in a thread: Prefect's drain blocks)."""
    import asyncio

    from taskgrouping.flows.server import drain_prefect_queues

    await asyncio.to_thread(drain_prefect_queues)
