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
from typing import Any

from prefect import flow

from taskgrouping.config import RunConfig


def _name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"scheduled {p.get('data', '?')} {p.get('method', 'swola')}/{p.get('selector', 'spectral')}"


@flow(name="regroup-scheduled", flow_run_name=_name, log_prints=False)
def scheduled_regroup(data: str = "builtin:digits", store: str = "./taskgrouping-store", method: str = "swola",
                      selector: str = "spectral", groups: int | None = None, tasks: str | None = None,
                      samples: int = 512, seed: int = 0, workers: int = 2, max_epochs: int = 200,
                      evaluate: str = "all") -> dict[str, Any]:
    """Regroup ``data`` into the versioned store ``store``; returns the run summary.

    A relative ``store`` or data path is relative to the deployment's working
    directory (the folder ``prefect deploy`` ran in, for a process work pool).
    """
    from dataclasses import replace
    from pathlib import Path

    from taskgrouping.flows.regroup import run_regroup

    if not data.startswith("builtin:"):
        data = str(Path(data).expanduser().resolve())
    cfg = RunConfig(data=data, tasks=tasks, method=method, selector=selector, groups=groups, samples=samples,
                    seed=seed, store=str(Path(store).expanduser().resolve()), workers=workers,
                    evaluate=evaluate)  # type: ignore[arg-type]  # checked in RunConfig
    cfg = replace(cfg, train=replace(cfg.train, max_epochs=max_epochs))
    cfg.check_data()
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    return run_regroup(cfg, run_id)
