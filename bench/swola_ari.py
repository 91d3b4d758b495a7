"""Grouping quality of SWOLA on builtin:synthetic: ARI against the planted groups.

Runs the pure functions (no Prefect) over seeds and difficulty levels, for both head
modes and spectral selection with k automatic and k given. Prints a markdown table.

    .venv/bin/python bench/swola_ari.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from taskgrouping.data.builtins import synthetic
from taskgrouping.data.dataset import prepare
from taskgrouping.methods.swola import SwolaSettings, swola_affinity
from taskgrouping.selectors import get_selector

LEVELS = {
    "easy (noise 0.3, jitter 0.35)": {"noise": 0.3, "jitter": 0.35},
    "hard (noise 1.0, jitter 0.8)": {"noise": 1.0, "jitter": 0.8},
    "hard + complement + random": {"noise": 1.0, "jitter": 0.8, "complement": 1, "random": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=512)
    args = ap.parse_args()
    print("| data | head | trunks | ARI auto (mean, min) | k auto | ARI k=4 (mean, min) | probe+pairs s |")
    print("|---|---|---:|---:|---|---:|---:|")
    for level, opts in LEVELS.items():
        for head in ("fitted", "shared"):
            for trunks in (1, 3):
                aris_auto, aris_k, ks, secs = [], [], [], []
                for seed in range(args.seeds):
                    ds = synthetic(tasks=16, groups=4, samples=2000, seed=seed, **opts)
                    data = prepare(ds, seed, args.samples)
                    t0 = time.perf_counter()
                    aff = swola_affinity(data.x[data.probe_idx], data.y[data.probe_idx], data.tasks,
                                        SwolaSettings(head=head, trunks=trunks), seed)
                    secs.append(time.perf_counter() - t0)
                    truth = [ds.ground_truth[t] for t in ds.task_names]
                    sel = get_selector("spectral")
                    g_auto = sel(aff, None, seed)
                    g_k = sel(aff, 4 + (1 if "random" in opts else 0), seed)
                    aris_auto.append(adjusted_rand_score(truth, g_auto.labels(ds.task_names)))
                    aris_k.append(adjusted_rand_score(truth, g_k.labels(ds.task_names)))
                    ks.append(len(g_auto.groups))
                print(f"| {level} | {head} | {trunks} | {np.mean(aris_auto):.3f}, {np.min(aris_auto):.3f} | "
                      f"{ks} | {np.mean(aris_k):.3f}, {np.min(aris_k):.3f} | {np.mean(secs):.2f} |")


if __name__ == "__main__":
    main()
