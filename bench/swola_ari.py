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
    ap.add_argument("--defaults", action="store_true",
                    help="instead: normalisation x probe sample size (fitted head, 1 trunk), written to "
                         "bench/results/swola_defaults.md")
    args = ap.parse_args()
    if args.defaults:
        defaults_sweep(args.seeds)
        return
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


def defaults_sweep(seeds: int, sizes: tuple[int, ...] = (128, 256, 512, 1024)) -> None:
    """ARI (k given and auto) and probe+pairs time for every normalisation and probe sample size."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine_line, write_result

    lines = ["# SWOLA defaults: normalisation and probe sample size", "", f"Machine: {machine_line()}", "",
             f"`builtin:synthetic` 16 tasks in 4 planted groups, 2000 samples, fitted head, 1 trunk, spectral; "
             f"mean over {seeds} seeds and the three difficulty levels of `bench/swola_ari.py` "
             "(ARI with k given counts the random-label task as its own group). Made by "
             "`bench/swola_ari.py --defaults`.", "",
             "| normalise | probe samples | ARI k given (mean, min) | ARI auto (mean) | probe + pairs s (mean) |",
             "|---|---:|---:|---:|---:|"]
    for normalise in ("task", "sample", "none"):
        for n in sizes:
            aris_k, aris_auto, secs = [], [], []
            for opts in LEVELS.values():
                for seed in range(seeds):
                    ds = synthetic(tasks=16, groups=4, samples=2000, seed=seed, **opts)
                    data = prepare(ds, seed, n)
                    t0 = time.perf_counter()
                    aff = swola_affinity(data.x[data.probe_idx], data.y[data.probe_idx], data.tasks,
                                        SwolaSettings(normalise=normalise), seed)
                    secs.append(time.perf_counter() - t0)
                    truth = [ds.ground_truth[t] for t in ds.task_names]
                    sel = get_selector("spectral")
                    k = 4 + (1 if "random" in opts else 0)
                    aris_k.append(adjusted_rand_score(truth, sel(aff, k, seed).labels(ds.task_names)))
                    aris_auto.append(adjusted_rand_score(truth, sel(aff, None, seed).labels(ds.task_names)))
            lines.append(f"| {normalise} | {n} | {np.mean(aris_k):.3f}, {np.min(aris_k):.3f} | "
                         f"{np.mean(aris_auto):.3f} | {np.mean(secs):.2f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    print("wrote", write_result("swola_defaults.md", text))


if __name__ == "__main__":
    main()
