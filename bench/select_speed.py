"""Wall time of the subset selectors, and of ``taskgrouping select`` end to end.

Random gain matrices with planted blocks; for each size: the selector's own time
(network with helpers, mip without overlap), whether it was exact, and the objective
relative to the planted partition's. Then the CLI on a 9-task CSV with B = 4, as a
user runs it (interpreter start and imports included).

    .venv/bin/python bench/select_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors import get_selector
from taskgrouping.selectors.network import grouping_objective


def planted(t: int, b: int, seed: int) -> tuple[AffinityMatrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(t) % b)
    gain = np.where(labels[:, None] == labels[None, :], 0.5, -0.3) + 0.3 * rng.normal(size=(t, t))
    np.fill_diagonal(gain, 0.0)
    return AffinityMatrix([f"task{i:04d}" for i in range(t)], gain, "gain"), labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[9, 12, 30, 100, 300])
    args = ap.parse_args()
    print("| tasks | B | selector | exact | seconds (median) | objective / planted partition's |")
    print("|---:|---:|---|---|---:|---:|")
    for t in args.sizes:
        b = 4 if t <= 12 else max(4, t // 10)
        for name in ("network", "mip"):
            times, ratios, exact = [], [], None
            for seed in range(args.repeats):
                aff, labels = planted(t, b, seed)
                t0 = time.perf_counter()
                g = get_selector(name)(aff, b, seed)
                times.append(time.perf_counter() - t0)
                members = np.array([labels == k for k in range(b)])
                ref, _ = grouping_objective(aff.values, members)
                ratios.append(g.objective / ref)
                exact = g.info["exact"]
            print(f"| {t} | {b} | {name} | {exact} | {np.median(times):.3f} | {np.mean(ratios):.3f} |", flush=True)

    aff, _ = planted(9, 3, 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m9.csv"
        lines = [",".join(["", *aff.tasks])] + [
            ",".join([name, *(f"{v:.6f}" for v in row)]) for name, row in zip(aff.tasks, aff.values, strict=True)]
        path.write_text("\n".join(lines) + "\n")
        exe = [sys.executable, "-m", "taskgrouping", "select", "--affinity", str(path), "--groups", "4", "--json"]
        walls = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = subprocess.run(exe, check=True, capture_output=True, text=True).stdout
            walls.append(time.perf_counter() - t0)
    print(f"\n`taskgrouping select` on a 9-task CSV, B = 4: wall {np.median(walls):.2f} s median of "
          f"{args.repeats} (process start and imports included); last output: {out.strip()}")


if __name__ == "__main__":
    main()
