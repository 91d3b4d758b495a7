"""Fault injection for tests of crash, resume and lost workers (off unless ``TASKGROUPING_FAULT`` is set).

``TASKGROUPING_FAULT=STAGE:K:ACTION`` fires once, right after the K-th item of STAGE
has been written to the store (counted across processes and runs of one store):

* STAGE: ``sample``, ``probe`` (one per ML task), ``affinity``, ``pairs`` (one per tile of
  the sparse step on a cluster), ``select`` or ``train`` (one per model).
* ACTION: ``kill-run`` sends SIGKILL to the whole process group (the run, its Dask
  workers and the Prefect server it started: ``kill -9`` of everything), and
  ``kill-worker`` sends SIGKILL to the current process only (on a Dask worker: a lost
  worker), and ``hang`` makes the current process sleep for an hour right there (a step
  that never ends: tests of signals and of killed runs send theirs while it hangs).

The count lives in ``<store>/.faults/``, so the same setting does not fire again on
the rerun that resumes the work. Real runs never set the variable.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "TASKGROUPING_FAULT"
STAGES = ("sample", "probe", "affinity", "pairs", "select", "train")
ACTIONS = ("kill-run", "kill-worker", "hang")
HANG_SECONDS = 3600.0


def parse(spec: str) -> tuple[str, int, str]:
    """``STAGE:K:ACTION`` -> (stage, k, action); ValueError naming the bad part."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in STAGES or parts[2] not in ACTIONS or not parts[1].isdigit() \
            or int(parts[1]) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected STAGE:K:ACTION with STAGE in {', '.join(STAGES)}, "
                         f"K >= 1 and ACTION in {', '.join(ACTIONS)}")
    return parts[0], int(parts[1]), parts[2]


def _count(store: Path, stage: str) -> int:
    """Claim the next number for ``stage`` in this store (exclusive file creation: safe across processes)."""
    folder = store / ".faults"
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        try:
            fd = os.open(folder / f"{stage}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return n
        except FileExistsError:
            n += 1


def reached(store: str | os.PathLike[str], stage: str) -> None:
    """Mark one more item of ``stage`` done; fire the configured fault if this is the K-th."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, k, action = parse(spec)
    if want != stage or _count(Path(store), stage) != k:
        return
    if action == "hang":
        (Path(store) / ".faults" / f"{stage}.hanging").write_text(str(os.getpid()))
        import time

        time.sleep(HANG_SECONDS)
        return
    if action == "kill-run":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
