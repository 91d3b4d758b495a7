"""SWOLA against TAG through the CLI: time to the affinity, and the grouped model's loss.

For each seed, ``taskgrouping run --method swola`` and ``--method tag`` on the same planted
18-task table (``builtin:subsets:tasks=18``), each on a fresh store, with
``--evaluate grouped``. Time to affinity = the summary's ``seconds.probe +
seconds.affinity`` (SWOLA: head CV, probes and pairs; TAG: its joint training with
lookaheads). Grouped loss = the test loss summed over tasks of the models of the found
groups (``metrics.grouped``). Writes ``bench/results/time_to_affinity.md``.

    python bench/time_to_affinity.py [--seeds 3] [--data builtin:subsets:tasks=18,groups=4,mixed=0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, write_result  # noqa: E402


def run(store: Path, data: str, method: str, seed: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "taskgrouping", "run", "--data", data, "--store", str(store),
                          "--method", method, "--seed", str(seed), "--evaluate", "grouped", "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data", default="builtin:subsets:tasks=18,groups=4,mixed=0")
    args = ap.parse_args()
    from taskgrouping.flows.keeper import stop_shared

    rows = []
    for seed in range(args.seeds):
        data = f"{args.data},seed={seed}"
        got = {}
        for method in ("swola", "tag"):
            root = Path(tempfile.mkdtemp(prefix="tg-tta-"))
            try:
                s = run(root / "store", data, method, seed)
            finally:
                stop_shared(root / "store" / "prefect" / "home")
                shutil.rmtree(root, ignore_errors=True)
            got[method] = (s["seconds"]["probe"] + s["seconds"]["affinity"], s["metrics"]["grouped"],
                           s.get("ground_truth_ari"), len(s["groups"]))
            print(seed, method, got[method], flush=True)
        rows.append((seed, got))
    lines = ["# Time to affinity through the CLI: SWOLA against TAG", "", machine_line(), "",
             f"`taskgrouping run --data {args.data},seed=S --method M --evaluate grouped`, each on a fresh store. "
             "Time to affinity: `seconds.probe + seconds.affinity` of the summary. Grouped loss: summed test loss "
             "of the found groups' models. Made by `bench/time_to_affinity.py`.", "",
             "| seed | SWOLA s | TAG s | TAG / SWOLA | SWOLA grouped loss | TAG grouped loss | SWOLA / TAG loss | "
             "ARI SWOLA | ARI TAG |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratios, losses = [], []
    for seed, got in rows:
        (ts, ls, as_, _), (tt, lt, at, _) = got["swola"], got["tag"]
        ratios.append(tt / ts)
        losses.append(ls / lt)
        lines.append(f"| {seed} | {ts:.2f} | {tt:.2f} | {tt / ts:.1f}x | {ls:.4f} | {lt:.4f} | {ls / lt - 1:+.1%} | "
                     f"{as_:.3f} | {at:.3f} |")
    lines += ["", f"Mean TAG / SWOLA time: {np.mean(ratios):.1f}x (min {np.min(ratios):.1f}x); SWOLA's grouped "
              f"loss against TAG's: mean {np.mean(losses) - 1:+.1%}, worst {np.max(losses) - 1:+.1%}."]
    print(write_result("time_to_affinity.md", "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
