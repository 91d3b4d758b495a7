"""SIGINT and SIGTERM end a CLI run promptly, however it was started (issue 26).

A shell leaves SIGINT *ignored* in a job it starts in the background without job
control (a script's ``taskgrouping run ... &``, a CI step, a supervisor), so a
``kill -INT`` of the job's process group never reached the run while its Dask
workers died of it: the flow then waited for ever for their results. Here both
signals are handled in the run's main process whatever it inherited:

1. the first one raises :class:`KeyboardInterrupt` (SIGINT) or :class:`Terminated`
   (SIGTERM, a subclass) where the run is, so Prefect marks the flow run Crashed, the
   run's ``finally`` blocks close its workers and mark its unfinished task runs
   (:mod:`taskgrouping.flows.orphans`), and the store keeps only whole files (every
   write is a temporary file, then a rename);
2. a watchdog ends the process :data:`GRACE` s later if that has not finished
   (killing the run's own worker processes first), and a second signal ends it at
   once, the same way.

The Dask workers ignore SIGINT (:mod:`taskgrouping.flows.worker`): the run closes them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

GRACE = 20.0
"""Seconds between the first signal and the forced end of a run that is still stopping."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the run's main thread (a KeyboardInterrupt, so every layer unwinds as for Ctrl-C)."""


def kill_own_processes() -> list[int]:
    """SIGKILL this process's descendants in its own process group (its Dask workers, their forkserver).

    Processes in a session of their own (the store's Prefect server keeper, which other
    runs may share) are left alone. Returns the pids killed.
    """
    import psutil

    group = os.getpgid(0)
    killed = []
    for child in psutil.Process().children(recursive=True):
        try:
            if os.getpgid(child.pid) == group:
                child.kill()
                killed.append(child.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return killed


def _force_exit(signum: int, why: str) -> None:
    killed = kill_own_processes()
    print(f"taskgrouping: {why}; ended {len(killed)} worker processes", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def end_on_signals(grace: float = GRACE) -> None:
    """Handle SIGINT and SIGTERM in this (main) thread as described in the module docstring."""
    first: list[int] = []

    def watchdog(signum: int) -> None:
        time.sleep(grace)
        _force_exit(signum, f"still stopping {grace:.0f} s after {signal.Signals(signum).name}")

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if first:
            _force_exit(signum, f"a second signal ({name})")
        first.append(signum)
        print(f"taskgrouping: {name} received: stopping the run (its workers, then the Prefect run marked "
              f"Crashed; at most {grace:.0f} s)", file=sys.stderr, flush=True)
        threading.Thread(target=watchdog, args=(signum,), daemon=True, name="taskgrouping-stop").start()
        raise (KeyboardInterrupt if signum == signal.SIGINT else Terminated)(name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
