"""Imported only by the forkserver the run's Dask workers are forked from (:mod:`taskgrouping.flows.worker`).

When the run's process ends, the forkserver sees its pipe close and exits through
``SystemExit``: tearing down its torch and Prefect modules took 0.8 s, during which
it still holds the run's standard output and error open (so a caller reading them,
a shell pipe or ``subprocess.run``, waited for it). It holds nothing to flush: once
its exit hooks run, it ends at once.
"""

from __future__ import annotations

import atexit
import os

atexit.register(os._exit, 0)
