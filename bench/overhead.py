"""Orchestration overhead of a small run through the CLI: wall time against the flow's own stages.

For each repetition: ``taskgrouping run`` on a fresh store (digits by default), then an
identical rerun on the same store (which finds the store's shared Prefect server still
up, :mod:`taskgrouping.flows.keeper`). Overhead = wall - the summary's stage total
(sample, probe, affinity, select, train, report): process start, imports, the Prefect
server, the Dask workers, flow and step bookkeeping, shutdown. Writes
``bench/results/overhead.md``.

    python bench/overhead.py [--data builtin:digits] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, write_result  # noqa: E402


def one(store: Path, data: str) -> tuple[float, dict[str, float]]:
    """Wall seconds of one CLI run and its summary's stage seconds."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "taskgrouping", "run", "--data", data, "--store", str(store),
                          "--json"], capture_output=True, text=True, check=True)
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
    for rep in range(args.reps):
        root = Path(tempfile.mkdtemp(prefix="tg-overhead-"))
        try:
            first_wall = None
            for name in ("fresh store", "identical rerun"):
                wall, sec = one(root / "store", args.data)
                stages = sec["total"]
                first_wall = first_wall or wall
                row = (f"| {rep} | {name} | {wall:.1f} | {stages:.1f} | {wall - stages:.1f} | "
                       f"{(wall - stages) / wall:.0%} | {wall / first_wall:.0%} |")
                print(row, flush=True)
                lines.append(row)
        finally:
            from taskgrouping.flows.keeper import stop_shared

            stop_shared(root / "store" / "prefect" / "home")
            shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(write_result("overhead.md", text))


if __name__ == "__main__":
    main()
