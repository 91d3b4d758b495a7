"""Orchestration overhead of a small run through the CLI: wall time against the flow's own stages.

First ``taskgrouping run`` on a new store with an empty cache (the first store on a
machine: its Prefect server migrates a new database and leaves an empty copy in the
cache, :mod:`taskgrouping.flows.server`). Then, for each repetition: a run on a fresh
store (its database copied from the cache), then an identical rerun on the same store
(which finds the store's shared Prefect server still up, :mod:`taskgrouping.flows.keeper`). Overhead = wall - the summary's stage total
(sample, probe, affinity, select, train, report): process start, imports, the Prefect
server, the Dask workers, flow and step bookkeeping, shutdown. Writes
``bench/results/overhead.md``.

    python bench/overhead.py [--data builtin:digits] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, write_result  # noqa: E402


def one(store: Path, data: str, cache: Path, api: str | None = None) -> tuple[float, dict[str, float]]:
    """Wall seconds of one CLI run and its summary's stage seconds (``api``: the user's own server)."""
    env = dict(os.environ, TASKGROUPING_CACHE_DIR=str(cache))
    if api:
        env["PREFECT_API_URL"] = api
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "taskgrouping", "run", "--data", data, "--store", str(store),
                          "--json"], capture_output=True, text=True, check=True, env=env)
    wall = time.perf_counter() - t0
    return wall, json.loads(out.stdout)["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:digits")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    lines = [f"# Orchestration overhead: `taskgrouping run --data {args.data}`", "", machine_line(), "",
             "| rep | run | wall s | stages s | overhead s | overhead / wall | wall / first run's |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    cache = Path(tempfile.mkdtemp(prefix="tg-overhead-cache-"))
    plan = [("first", "first store on the machine")]
    plan += [(str(rep), name) for rep in range(args.reps)
             for name in ("fresh store", "identical rerun")]
    first_wall = 0.0
    root = None
    try:
        for rep, name in plan:
            if name != "identical rerun":
                root = Path(tempfile.mkdtemp(prefix="tg-overhead-"))
            assert root is not None
            wall, sec = one(root / "store", args.data, cache)
            if name == "identical rerun":
                stages = sec["total"]
                ratio = f"{wall / first_wall:.1%}"
            else:
                stages, first_wall, ratio = sec["total"], wall, "100%"
            row = (f"| {rep} | {name} | {wall:.2f} | {stages:.2f} | {wall - stages:.2f} | "
                   f"{(wall - stages) / wall:.1%} | {ratio} |")
            print(row, flush=True)
            lines.append(row)
            if name != "fresh store":
                from taskgrouping.flows.keeper import stop_shared

                stop_shared(root / "store" / "prefect" / "home")
                shutil.rmtree(root, ignore_errors=True)
        # a user who keeps one Prefect server for every store (PREFECT_API_URL): no server start at all
        from taskgrouping.flows.server import local_server

        root = Path(tempfile.mkdtemp(prefix="tg-overhead-"))
        with local_server(root / "own-server") as api:
            wall, sec = one(root / "store", args.data, cache, api)
        stages = sec["total"]
        row = (f"| own | fresh store, your own server (`PREFECT_API_URL`) | {wall:.2f} | {stages:.2f} | "
               f"{wall - stages:.2f} | {(wall - stages) / wall:.1%} | 100% |")
        print(row, flush=True)
        lines.append(row)
        shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(write_result("overhead.md", text))


if __name__ == "__main__":
    main()
