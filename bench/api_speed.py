"""TaskGrouper.fit against `taskgrouping run --evaluate none` on the same data (16 synthetic tasks).

Each in a fresh process on a fresh store, wall time including Python start and imports (what a
user waits for), 3 repetitions, median; the groups of both must be equal.

    .venv/bin/python bench/api_speed.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, write_result

FIT = """
import json, sys
from taskgrouping import TaskGrouper
from taskgrouping.data.builtins import synthetic
ds = synthetic(tasks=16, groups=4, seed=0)
tg = TaskGrouper(store=sys.argv[1]).fit(ds.features, {t: ds.labels[:, j] for j, t in enumerate(ds.task_names)})
print(json.dumps({"groups": tg.groups_, "seconds": tg.seconds_}))
"""


def wall(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cli = [str(Path(sys.executable).with_name("taskgrouping")), "run", "--data", "builtin:synthetic", "--evaluate",
           "none", "--json"]
    api_s, cli_s, same = [], [], []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            t, out = wall([sys.executable, "-c", FIT, a], env)
            api_s.append(t)
            api_groups = json.loads(out)["groups"]
            t, out = wall([*cli, "--store", b], env)
            cli_s.append(t)
            same.append(sorted(map(sorted, api_groups)) == sorted(map(sorted, json.loads(out)["groups"])))
    api, cli_m = statistics.median(api_s), statistics.median(cli_s)
    lines = ["# TaskGrouper.fit against taskgrouping run --evaluate none (16 tasks, builtin:synthetic)", "",
             machine_line(), "",
             "| path | wall s (median of 3, fresh process and store) |", "|---|---:|",
             f"| `TaskGrouper(store=...).fit(X, Y)` | {api:.1f} |",
             f"| `taskgrouping run --evaluate none` | {cli_m:.1f} |", "",
             f"The API is {cli_m / api:.1f}x faster; equal groups in {sum(same)} of {len(same)} repetitions."]
    print("\n".join(lines))
    print(write_result("api_speed.md", "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
